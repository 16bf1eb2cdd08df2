"""Stand-in for the one lie_learn function the bundled escnn imports.

escnn imports ``lie_learn.representations.SO3.wigner_d.wigner_D_matrix`` when it loads, but calls it
only to build the irreducible representations of SO(3) and O(3), i.e. for 3-D groups. lie_learn
0.0.2 ships modules compiled against numpy 1 that fail to load under numpy 2, so eqdp-ray does not
install it; its 2-D groups (C_N, D_N) never reach this function. Reaching it means 3-D code, which
eqdp-ray does not support: say so instead of failing deep inside escnn.
"""

from __future__ import annotations

from typing import Any, NoReturn


class ThreeDGroupsUnsupported(NotImplementedError):
    """escnn's 3-D groups need lie_learn, which eqdp-ray's bundled escnn does without."""


def wigner_D_matrix(*args: Any, **kwargs: Any) -> NoReturn:  # noqa: N802 - lie_learn's name
    raise ThreeDGroupsUnsupported(
        "eqdp-ray bundles escnn for 2-D groups only (C_N, D_N: 'cyclic', 'dihedral'): SO(3)/O(3) and "
        "the 3-D gspaces need lie_learn's Wigner-D matrices, which eqdp-ray does not install because "
        "lie_learn 0.0.2 fails to load under numpy 2 (see docs/INSTALL.md)"
    )
