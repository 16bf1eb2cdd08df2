"""Prepare what one GPU-machine call carries: the wheels the device lacks and a CIFAR-10 pack, within 64 MiB.

    python benchmarks/gpu/build.py                 # fetch + slim the wheels, write the data pack, check the budget
    python benchmarks/gpu/build.py --check         # only check what is already there (no network)

The device (docs/GPU.md) has Python 3.12.3, torch 2.11.0+cu130, numpy 2.5 and the packages in
benchmarks/gpu/device_packages.txt, and reaches no network. escnn needs no wheel: it travels with
the working tree, bundled in eqdp_ray/_vendor/escnn (docs/INSTALL.md). What else eqdp-ray needs
beyond the device's packages travels as cp312 manylinux wheels in `.whl/` (one version each),
installed there with pip --no-index.
Ray's wheel is 75.6 MiB, more than a whole call may carry, so it travels slimmed (`slim_wheel`):
the same ray 2.60.0 without its Java jar, RLlib, Serve, LLM and dashboard source maps, with the
symbol tables of its three large binaries stripped and LZMA zip compression (pip reads it as any
wheel). The closure check proves every requirement of every carried wheel is met by another
carried wheel or a device package, or is listed in NOT_NEEDED with the reason.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import datapack  # noqa: E402

MIB = 2**20
LIMIT = 64 * MIB  # what one device call carries: working tree + carried paths
MARGIN = 1 * MIB  # files the tree gains between the check and the call (a note, a log)

# What travels, one version each. Versions are the ones the project's tests run with (ray and opacus
# within pyproject.toml's bounds; the others as resolved there), so the device runs tested code.
CARRY = {
    "opacus": "1.6.0",
    "ray": "2.60.0",
    # ray's own needs, and those of its train/tune extras (ray.train imports pydantic)
    "jsonschema": "4.26.0",
    "jsonschema-specifications": "2025.9.1",
    "referencing": "0.37.0",
    "rpds-py": "2026.9.1",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "tensorboardx": "2.6.5",
}
# Extras of carried wheels whose requirements must be met too.
EXTRAS = {"ray": ("train", "tune")}
# Requirements a carried wheel declares that nothing on the GPU path imports, each with the reason
# (none today; escnn is no carried wheel, so its own requirements never reach the device's pip).
NOT_NEEDED: dict[str, str] = {}
# Carried although the device has a version of it (the device's would break the run), with why.
OVERRIDE: dict[str, str] = {}
SLIM = {
    "ray": {
        "drop_prefixes": ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/"),
        "drop_suffixes": (".map",),
        "strip": (
            ("ray/_raylet.so", "--strip-unneeded"),
            ("ray/core/src/ray/gcs/gcs_server", "--strip-all"),
            ("ray/core/src/ray/raylet/raylet", "--strip-all"),
        ),
    }
}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# Environment the markers are evaluated in: the device's interpreter.
DEVICE_ENV = default_environment() | {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
DATA_PACK = {"train": 20000, "test": 2500, "bits": 5}
LOCK = HERE / "carry.lock.json"


def device_packages(path: Path = HERE / "device_packages.txt") -> dict[str, Version | None]:
    """name -> version where known, of what the device has preinstalled."""
    found: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = Version(version) if version else None
    return found


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: Version
    requires: tuple[str, ...]
    size: int

    @classmethod
    def of(cls, path: Path) -> Wheel:
        name, version, _, _ = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as z:
            metadata = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(metadata).decode()
        requires = tuple(
            line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")
        )
        return cls(path, canonicalize_name(name), version, requires, path.stat().st_size)

    def requirements(self) -> list[Requirement]:
        return [Requirement(r) for r in self.requires]


def wheels_in(folder: Path) -> list[Wheel]:
    return [Wheel.of(p) for p in sorted(folder.glob("*.whl"))]


def write_lock(wheels: list[Wheel], pack_bytes: int, path: Path = LOCK) -> None:
    """What was built, committed so the suite checks closure and size without the wheels (CI has none)."""
    entries = [
        {"file": w.path.name, "name": w.name, "version": str(w.version), "size": w.size, "requires": list(w.requires)}
        for w in wheels
    ]
    path.write_text(json.dumps({"wheels": entries, "data_pack_bytes": pack_bytes}, indent=1) + "\n")


def read_lock(path: Path = LOCK) -> tuple[list[Wheel], int]:
    lock = json.loads(path.read_text())
    wheels = [
        Wheel(Path(e["file"]), e["name"], Version(e["version"]), tuple(e["requires"]), e["size"])
        for e in lock["wheels"]
    ]
    return wheels, lock["data_pack_bytes"]


def check_closure(wheels: list[Wheel], device: dict[str, Version | None]) -> list[str]:
    """Problems that would stop or break the install on the device; empty when none."""
    problems = []
    carried: dict[str, Wheel] = {}
    for w in wheels:
        if w.name in carried:
            problems.append(f"two versions of {w.name}: {carried[w.name].path.name} and {w.path.name}")
        if w.name in device and w.name not in OVERRIDE:
            problems.append(f"{w.name} is carried but the device has it: a second copy would shadow the device's")
        carried[w.name] = w
    for w in wheels:
        for req in w.requirements():
            name = canonicalize_name(req.name)
            extras = ("",) + EXTRAS.get(w.name, ())
            if req.marker is not None and not any(req.marker.evaluate(DEVICE_ENV | {"extra": e}) for e in extras):
                continue
            if name in NOT_NEEDED:
                continue
            if name in carried:
                have = carried[name].version
            elif name in device:
                have = device[name]
            else:
                problems.append(f"{w.name} needs {req} : neither carried nor on the device")
                continue
            if have is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{w.name} needs {req} but {name} {have} is what the device would load")
    return problems


def download(name: str, version: str, cache: Path) -> Path:
    """One cp312 manylinux wheel (no dependencies) in `cache`, fetched once."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = canonicalize_name(name)
    for p in cache.glob("*.whl"):
        w = Wheel.of(p)
        if w.name == stem and w.version == Version(version):
            return p
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", "-d", str(cache), f"{name}=={version}"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return next(p for p in cache.glob("*.whl") if Wheel.of(p).name == stem and Wheel.of(p).version == Version(version))


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def _strip(data: bytes, option: str) -> bytes:
    if shutil.which("strip") is None:
        return data
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "binary"
        path.write_bytes(data)
        subprocess.run(["strip", option, str(path)], check=True)
        return path.read_bytes()


def slim_wheel(source: Path, destination: Path, drop_prefixes=(), drop_suffixes=(), strip=()) -> dict[str, int]:
    """Rewrite a wheel without the dropped files, with binaries stripped, LZMA-compressed, RECORD redone."""
    strip_options = dict(strip)
    dropped = kept = 0
    records = []
    tmp = destination.with_suffix(".part")
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as out:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            name = info.filename
            if name == record_name:
                continue
            if name.startswith(drop_prefixes) or name.endswith(drop_suffixes):
                dropped += info.file_size
                continue
            data = src.read(info)
            if name in strip_options:
                data = _strip(data, strip_options[name])
            target = zipfile.ZipInfo(name, date_time=info.date_time)
            target.external_attr = info.external_attr  # keeps the executables executable
            target.compress_type = zipfile.ZIP_LZMA
            out.writestr(target, data)
            records.append(_record_line(name, data))
            kept += len(data)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(records + [[record_name, "", ""]])
        out.writestr(record_name, buffer.getvalue())
    tmp.replace(destination)
    return {"dropped_bytes": dropped, "kept_bytes": kept}


def tree_bytes(repo: Path) -> int:
    """Bytes of what travels besides carried paths: tracked files and untracked, not ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = repo / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    shared = repo / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def budget(repo: Path, carried: list[Path], limit: int = LIMIT, margin: int = MARGIN) -> tuple[bool, list[str]]:
    """Whether the tree plus the carried paths fit one call; the lines of the table that says so."""
    parts = [("working tree (tracked + untracked, not ignored)", tree_bytes(repo))]
    parts += [(str(p.relative_to(repo) if p.is_relative_to(repo) else p), folder_bytes(p)) for p in carried]
    total = sum(size for _, size in parts)
    lines = [f"  {size / MIB:8.2f} MiB  {what}" for what, size in parts]
    lines.append(f"  {total / MIB:8.2f} MiB  total, limit {limit / MIB:.0f} MiB less a {margin / MIB:.0f} MiB margin")
    return total <= limit - margin, lines


def build_wheels(wheel_dir: Path, cache: Path) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for name, version in CARRY.items():
        source = download(name, version, cache)
        target = wheel_dir / source.name
        wanted.add(target.name)
        if name in SLIM:
            if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
                sizes = slim_wheel(source, target, **SLIM[name])
                print(
                    f"slimmed {source.name}: {source.stat().st_size / MIB:.1f} -> {target.stat().st_size / MIB:.1f} MiB "
                    f"({sizes['dropped_bytes'] / MIB:.1f} MiB of unused files dropped)"
                )
        elif not target.exists():
            shutil.copy2(source, target)
    for stale in wheel_dir.glob("*.whl"):
        if stale.name not in wanted:
            stale.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheel folder (ignored by git)")
    parser.add_argument("--cache", type=Path, default=REPO / ".whl-cache", help="downloaded originals (not carried)")
    parser.add_argument("--data", type=Path, default=REPO / ".gpudata" / "cifar10-pack.npz.xz")
    parser.add_argument("--cifar", type=Path, default=REPO.parent / "shared" / "data", help="CIFAR-10 binary source")
    parser.add_argument("--train", type=int, default=DATA_PACK["train"])
    parser.add_argument("--test", type=int, default=DATA_PACK["test"])
    parser.add_argument("--bits", type=int, default=DATA_PACK["bits"])
    parser.add_argument("--check", action="store_true", help="check what is there; fetch and write nothing")
    args = parser.parse_args(argv)

    if not args.check:
        build_wheels(args.wheels, args.cache)
        if not args.data.exists():
            header = datapack.pack(args.cifar, args.data, train=args.train, test=args.test, bits=args.bits)
            print(f"wrote {args.data}: {header}")
    wheels = wheels_in(args.wheels)
    missing = sorted(set(map(canonicalize_name, CARRY)) - {w.name for w in wheels})
    problems = [f"missing wheel: {name} (run without --check)" for name in missing]
    problems += check_closure(wheels, device_packages())
    if not args.data.exists():
        problems.append(f"missing data pack {args.data} (run without --check)")
    fits, lines = budget(REPO, [args.wheels, args.data])
    print(f"{len(wheels)} wheels in {args.wheels}:")
    for w in wheels:
        print(f"  {w.path.stat().st_size / MIB:8.2f} MiB  {w.path.name}")
    print("one device call carries:")
    print("\n".join(lines))
    if not args.check and not problems:
        write_lock(wheels, folder_bytes(args.data))
        print(f"wrote {LOCK.relative_to(REPO)}: commit it with any change of CARRY")
    if not fits:
        problems.append("over the 64 MiB budget: pack fewer images (--train/--test) or fewer bits")
    for p in problems:
        print(f"build.py: error: {p}", file=sys.stderr)
    if not problems:
        print("build.py: ok: closure complete, one version each, within budget")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
