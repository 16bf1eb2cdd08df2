"""The bundled escnn: 2-D groups work with neither lie_learn, py3nj nor an installed escnn; 3-D says why not."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from eqdp_ray._vendor import lie_learn_stand_in

REPO_ROOT = Path(__file__).resolve().parents[2]
VENDORED = REPO_ROOT / "eqdp_ray" / "_vendor" / "escnn"


def _vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_escnn", REPO_ROOT / "scripts" / "vendor_escnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_2d_groups_build_with_the_unused_dependencies_blocked():
    """A fresh interpreter in which importing lie_learn, py3nj or a top-level escnn fails."""
    code = textwrap.dedent(
        """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("lie_learn", "py3nj", "escnn", "pymanopt", "autograd"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        warnings.simplefilter("ignore")
        from eqdp_ray.models.layers import SteerableConv2d, make_gspace
        from eqdp_ray._vendor.escnn import nn as enn
        g = make_gspace("dihedral", 4)
        conv = SteerableConv2d(enn.FieldType(g, [g.trivial_repr]), enn.FieldType(g, [g.regular_repr]))
        print(conv.weight.numel())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0


def test_3d_groups_fail_with_a_clear_error():
    from eqdp_ray._vendor.escnn import gspaces

    with pytest.raises(lie_learn_stand_in.ThreeDGroupsUnsupported, match="2-D groups only"):
        gspaces.rot3dOnR3()


def test_stand_in_refuses_every_call():
    with pytest.raises(NotImplementedError, match="lie_learn"):
        lie_learn_stand_in.wigner_D_matrix(1, 0.0, 0.0, 0.0, field="real")


def test_null_space_with_the_installed_scikit_learn():
    """escnn hands an np.matrix to scikit-learn's randomized_svd, which scikit-learn >= 1.7 rejects."""
    from eqdp_ray._vendor.escnn.group import _numerical

    rng = np.random.default_rng(0)
    # Tall and of rank 2, like escnn's constraint matrices: a null space of dimension 2.
    a = np.asmatrix(rng.standard_normal((6, 2)) @ rng.standard_normal((2, 4)))
    basis = _numerical.null(a, use_sparse=False, eps=1e-9)
    assert basis.shape == (4, 2)
    np.testing.assert_allclose(np.asarray(a) @ basis, 0.0, atol=1e-10)


def test_vendored_code_never_imports_outside_its_copy():
    offenders = []
    for path in VENDORED.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [
                f"{path.relative_to(VENDORED)}: {n}" for n in names if n.split(".")[0] in ("escnn", "lie_learn")
            ]
    assert not offenders, offenders
    assert (VENDORED / "LICENSE").read_text().startswith("\nCopyright (c) 2021 Qualcomm")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("from escnn.nn import FieldType\n", "from eqdp_ray._vendor.escnn.nn import FieldType\n"),
        ("from escnn import gspaces\n", "from eqdp_ray._vendor.escnn import gspaces\n"),
        ("import escnn.group\n", "import eqdp_ray._vendor.escnn.group; from eqdp_ray._vendor import escnn\n"),
        ("    import escnn\n", "    from eqdp_ray._vendor import escnn\n"),
        ("from .group import Group\n", "from .group import Group\n"),
        ("x = 'escnn.nn'\n", "x = 'escnn.nn'\n"),
    ],
)
def test_vendor_script_rewrites_imports(line, expected):
    assert _vendor_script().rewrite_line(line) == expected


def test_vendor_script_refuses_an_import_form_it_does_not_know():
    with pytest.raises(ValueError, match="unhandled import form"):
        _vendor_script().rewrite_line("import escnn.group as g\n")


def test_vendor_script_patches_must_match_exactly_once():
    script = _vendor_script()
    path, old, new = script.PATCHES[1]
    assert script.patch(path, f"a\n{old}\n") == f"a\n{new}\n"
    with pytest.raises(ValueError, match="exactly one"):
        script.patch(path, "upstream changed\n")
