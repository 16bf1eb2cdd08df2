"""Re-create eqdp_ray/_vendor/escnn from PyPI's escnn 1.0.11 wheel, verifiably.

    python scripts/vendor_escnn.py                 # downloads the wheel with pip (no dependencies)
    python scripts/vendor_escnn.py PATH/escnn-1.0.11-py3-none-any.whl

Why a bundled copy and not a dependency: docs/INSTALL.md. The copy is the wheel's ``escnn/`` tree
with exactly these changes, all made here so that anyone can redo and diff them:

* absolute imports ``escnn.…`` become ``eqdp_ray._vendor.escnn.…`` (as pip's own vendoring does), so
  the copy never collides with a separately installed escnn;
* ``PATCHES``: the one import of lie_learn (``so3_utils.py``, used only by 3-D groups) comes from
  ``eqdp_ray._vendor.lie_learn_stand_in``, which raises a clear error when called; and ``null()``
  hands scikit-learn's ``randomized_svd`` an ndarray instead of the ``np.matrix`` that
  scikit-learn >= 1.7 rejects (same values, same call: the SVD is unchanged).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.0.11"
WHEEL = f"escnn-{VERSION}-py3-none-any.whl"
SHA256 = "0097a3752e317be70bccf0bb14fc9674fbb859ae5ddd735b8cf35a8533f6f536"
PREFIX = "eqdp_ray._vendor"
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "eqdp_ray" / "_vendor" / "escnn"

# (file, exact upstream text, replacement): each must match exactly once.
PATCHES = [
    (
        "escnn/group/groups/so3_utils.py",
        "from lie_learn.representations.SO3.wigner_d import wigner_D_matrix\n",
        f"from {PREFIX}.lie_learn_stand_in import wigner_D_matrix\n",
    ),
    (
        "escnn/group/_numerical.py",
        "u, s, vh = randomized_svd(A, n_components=k, random_state=None)",
        "u, s, vh = randomized_svd(np.asarray(A), n_components=k, random_state=0)",
    ),
    (
        "escnn/group/__init__.py",
        "__cache_path__ = os.path.join(os.path.dirname(__file__), '_cache')\n",
        f"from {PREFIX}.escnn_cache import escnn_cache_path\n__cache_path__ = escnn_cache_path()\n",
    ),
]

_FROM = re.compile(r"^(\s*)from escnn(\.[\w.]+)?\s+import\b")
_IMPORT = re.compile(r"^(\s*)import (escnn(?:\.[\w.]+)?)\s*$")


def rewrite_line(line: str) -> str:
    """One source line with escnn's absolute imports pointed at the bundled copy."""
    match = _FROM.match(line)
    if match:
        return line.replace("from escnn", f"from {PREFIX}.escnn", 1)
    match = _IMPORT.match(line)
    if match:
        indent, module = match.groups()
        # `import escnn.group` binds the name `escnn` and loads the submodule: keep both effects.
        loads = f"import {PREFIX}.{module}; " if module != "escnn" else ""
        return f"{indent}{loads}from {PREFIX} import escnn\n"
    if re.match(r"^\s*(import|from)\s+(escnn|lie_learn)\b", line):
        raise ValueError(f"unhandled import form: {line!r}")
    return line


def rewrite_source(text: str) -> str:
    return "".join(rewrite_line(line) for line in text.splitlines(keepends=True))


def patch(name: str, text: str) -> str:
    for path, old, new in PATCHES:
        if path == name:
            if text.count(old) != 1:
                raise ValueError(f"{name}: expected exactly one {old!r}")
            text = text.replace(old, new)
    return text


def download(directory: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(directory), f"escnn=={VERSION}"],
        check=True,
    )
    return directory / WHEEL


def vendor(wheel: Path) -> None:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not escnn {VERSION}'s {SHA256}")
    if TARGET.exists():
        shutil.rmtree(TARGET)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            if name.startswith("escnn/"):
                out = TARGET.parent / name
                if name.endswith(".py"):
                    data = rewrite_source(patch(name, data.decode("utf-8"))).encode("utf-8")
            elif name.endswith(".dist-info/LICENSE"):
                out = TARGET / "LICENSE"
            else:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
    print(f"vendored escnn {VERSION} into {TARGET.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    if argv:
        vendor(Path(argv[0]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        vendor(download(Path(tmp)))


if __name__ == "__main__":
    main(sys.argv[1:])
