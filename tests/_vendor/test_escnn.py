"""The bundled escnn: 2-D groups work with neither lie_learn, py3nj nor an installed escnn; 3-D says why not."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from eqdp_ray._vendor import escnn_cache, lie_learn_stand_in

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


BASIS_DIGEST = textwrap.dedent(
    """
    import hashlib, sys
    from eqdp_ray._vendor.escnn.group import __cache_path__
    from eqdp_ray._vendor.escnn import nn as enn
    from eqdp_ray.models.layers import SteerableConv2d, make_gspace
    space = make_gspace("dihedral", 4)
    regular = enn.FieldType(space, [space.regular_repr])
    model = SteerableConv2d(regular, regular)  # its basis solves ~180 null spaces by randomized SVD
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "basis" in name:
            digest.update(tensor.double().numpy().tobytes())
    print(__cache_path__, digest.hexdigest())
    """
)


def _basis_digest(env: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", BASIS_DIGEST], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cache, digest = done.stdout.split()[-2:]
    return cache, digest


def _environment(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EQDP_RAY_ESCNN_CACHE", "XDG_CACHE_HOME")}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def test_cold_caches_build_the_same_steerable_basis_in_the_user_cache(tmp_path):
    """Upstream's unseeded randomized SVD picked another null-space basis per computation: two
    ranks (or nodes) with cold caches then built different filters from the same coefficients.
    The cache goes to the user's cache directory, never into the installed package."""
    default, first = _basis_digest(_environment(HOME=str(tmp_path)))
    explicit, second = _basis_digest(_environment(EQDP_RAY_ESCNN_CACHE=str(tmp_path / "explicit")))
    off, uncached = _basis_digest(_environment(EQDP_RAY_ESCNN_CACHE=""))
    assert first == second == uncached
    expected = tmp_path / ".cache" / "eqdp-ray" / escnn_cache.CACHE_NAME
    assert Path(default) == expected and any(expected.rglob("*.pkl")), "escnn wrote nothing to the user cache"
    assert Path(explicit) == tmp_path / "explicit" and any(Path(explicit).rglob("*.pkl"))
    assert off == "None"


def test_an_unwritable_cache_location_turns_the_cache_off(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("EQDP_RAY_ESCNN_CACHE", str(blocker / "cache"))
    assert escnn_cache.escnn_cache_path() is None
    monkeypatch.setenv("EQDP_RAY_ESCNN_CACHE", "")
    assert escnn_cache.escnn_cache_path() is None
    monkeypatch.delenv("EQDP_RAY_ESCNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert escnn_cache.escnn_cache_path() == str(tmp_path / "xdg" / "eqdp-ray" / escnn_cache.CACHE_NAME)
