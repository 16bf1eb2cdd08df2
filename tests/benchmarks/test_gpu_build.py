"""The GPU call's builder: closure of the carried wheels, one version each, the 64 MiB budget, slimming."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def fake_wheel(folder: Path, name: str, version: str, requires: list[str] = (), files: dict | None = None) -> Path:
    """A minimal but real wheel (METADATA, WHEEL, RECORD) that pip can install."""
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as z:
        for fname, data in (files or {f"{name.replace('-', '_')}/__init__.py": b"X = 1\n"}).items():
            z.writestr(fname, data)
        z.writestr(f"{dist}/METADATA", meta)
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return path


def test_closure_accepts_device_and_carried_needs(build, tmp_path, monkeypatch):
    monkeypatch.setitem(build.NOT_NEEDED, "py3nj", "3-D groups only")
    fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "numpy>=1.15", "py3nj", 'winonly; sys_platform == "win32"'])
    fake_wheel(tmp_path, "beta", "2.1", ['gamma; extra == "docs"'])
    device = {"numpy": build.Version("2.5.2"), "scipy": None}
    assert build.check_closure(build.wheels_in(tmp_path), device) == []


def test_closure_names_what_would_break_on_the_device(build, tmp_path):
    fake_wheel(tmp_path, "alpha", "1.0", ["beta>=3", "numpy<2", "missing-thing"])
    fake_wheel(tmp_path, "beta", "2.1")
    fake_wheel(tmp_path, "scipy", "1.0")
    problems = "\n".join(
        build.check_closure(build.wheels_in(tmp_path), {"numpy": build.Version("2.5.2"), "scipy": None})
    )
    assert "alpha needs beta>=3 but beta 2.1" in problems
    assert "alpha needs numpy<2 but numpy 2.5.2" in problems  # e.g. lie_learn's numpy-1 build
    assert "missing-thing" in problems and "neither carried nor on the device" in problems
    assert "scipy is carried but the device has it" in problems


def test_two_versions_of_one_package_are_refused(build, tmp_path):
    fake_wheel(tmp_path, "alpha", "1.0")
    fake_wheel(tmp_path, "alpha", "1.1")
    assert any("two versions of alpha" in p for p in build.check_closure(build.wheels_in(tmp_path), {}))


def test_the_committed_lock_is_what_carry_asks_and_closed_over_the_device(build):
    """The built set as recorded in carry.lock.json: CARRY's pins, one version each, no missing need."""
    wheels, pack_bytes = build.read_lock()
    assert {w.name: str(w.version) for w in wheels} == {build.canonicalize_name(n): v for n, v in build.CARRY.items()}
    assert build.check_closure(wheels, build.device_packages()) == []
    carried = sum(w.size for w in wheels) + pack_bytes + build.tree_bytes(build.REPO)
    assert carried <= build.LIMIT - build.MARGIN, f"{carried / build.MIB:.1f} MiB would not fit one call"


def test_lock_round_trips_what_was_built(build, tmp_path):
    fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2"])
    fake_wheel(tmp_path, "beta", "2.1")
    built = build.wheels_in(tmp_path)
    build.write_lock(built, 1234, tmp_path / "lock.json")
    wheels, pack_bytes = build.read_lock(tmp_path / "lock.json")
    assert pack_bytes == 1234 and [(w.name, w.version, w.requires, w.size) for w in wheels] == [
        (w.name, w.version, w.requires, w.size) for w in built
    ]


def test_device_list_knows_the_preinstalled_torch_and_numpy(build):
    device = build.device_packages()
    assert device["torch"] == build.Version("2.11.0") and device["numpy"].major == 2
    assert "ray" not in device and "escnn" not in device and "opacus" not in device


def test_budget_counts_tree_and_carried_paths(build, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text(".whl/\n")
    (repo / "code.py").write_bytes(b"x" * 1000)
    (repo / ".whl").mkdir()
    (repo / ".whl" / "big.whl").write_bytes(b"y" * 5000)
    assert build.tree_bytes(repo) == 1000 + len(".whl/\n")  # ignored files travel only when carried
    fits, lines = build.budget(repo, [repo / ".whl"], limit=8000, margin=1000)
    assert fits and "total" in lines[-1]
    fits, _ = build.budget(repo, [repo / ".whl"], limit=6000, margin=1000)
    assert not fits


def test_slimmed_wheel_installs_with_pip_no_index(build, tmp_path):
    source = fake_wheel(
        tmp_path,
        "slimmed",
        "1.0",
        files={
            "slimmed/__init__.py": b"VALUE = 42\n",
            "slimmed/jars/big.jar": b"z" * 10000,
            "slimmed/app.js.map": b"m",
        },
    )
    out = tmp_path / "out"
    out.mkdir()
    target = out / source.name
    sizes = build.slim_wheel(source, target, drop_prefixes=("slimmed/jars/",), drop_suffixes=(".map",))
    assert sizes["dropped_bytes"] == 10001
    with zipfile.ZipFile(target) as z:
        names = z.namelist()
        assert "slimmed/jars/big.jar" not in names and all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
        record = z.read("slimmed-1.0.dist-info/RECORD").decode()
    assert "slimmed/__init__.py,sha256=" in record
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), str(target)],
        check=True,
    )
    value = subprocess.run(
        [sys.executable, "-c", "import slimmed; print(slimmed.VALUE)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert value.strip() == "42"
