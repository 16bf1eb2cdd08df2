"""A driver killed while Tune uploaded its state: finish the upload before resuming.

Tune saves the experiment's state (trial table, searcher, callbacks) atomically into a staging
directory on the driver, under Ray's session directory, then copies it to the experiment storage
with a plain, non-atomic copy. A driver killed (SIGKILL, a lost node) during that copy leaves a
truncated file in storage; `Tuner.restore` then fails to load it, Tune logs "Restarting experiment"
and waits forever on trials it no longer knows. The staging copy outlives the killed driver on its
machine, so a resume there completes the interrupted upload from it; elsewhere it stops with one
clear error and changes nothing.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pickletools
from pathlib import Path

import pyarrow.fs as pafs

from eqdp_ray.config import SpaceError
from eqdp_ray.config.storage import open_location

logger = logging.getLogger(__name__)

# the files Tune reads back in `Tuner.restore` (its names: ray.tune TuneController, Searcher,
# SearchGenerator, BasicVariantGenerator, CallbackList and Tuner's own)
STATE_PATTERNS = (
    "experiment_state-*.json",
    "searcher-state-*.pkl",
    "search_gen_state-*.json",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
    "tuner.pkl",
)


def is_complete(data: bytes) -> bool:
    """Whether a state file's bytes are whole: a pickle that reaches its STOP opcode, or valid JSON.

    The kind is read off the bytes, not the name (Tune pickles its search_gen_state-*.json). Pickles
    are walked opcode by opcode (`pickletools.genops`), never loaded: validating runs no code.
    """
    try:
        if data.startswith(b"\x80"):  # PROTO, the first opcode of every pickle since protocol 2
            return any(opcode.name == "STOP" for opcode, _arg, _pos in pickletools.genops(data))
        json.loads(data)
    except (ValueError, UnicodeDecodeError):  # truncated pickles and JSONDecodeError are ValueErrors
        return False
    return True


def files_tune_reads(experiment: str) -> list[str]:
    """The top-level state files `Tuner.restore` reads: the newest of each kind (Tune takes the greatest
    name: its names end in the session's start time), and tuner.pkl."""
    fs, root = open_location(experiment)
    names = [info.base_name for info in fs.get_file_info(pafs.FileSelector(root)) if info.type == pafs.FileType.File]
    newest = [max(matching) for p in STATE_PATTERNS if (matching := [n for n in names if Path(n).match(p)])]
    return sorted(newest)


def damaged_state_files(experiment: str) -> list[str]:
    """Those of `files_tune_reads` that are not whole."""
    fs, root = open_location(experiment)
    damaged = []
    for name in files_tune_reads(experiment):
        with fs.open_input_stream(f"{root}/{name}") as f:
            if not is_complete(f.readall()):
                damaged.append(name)
    return damaged


def staging_directories(study: str, ray_temp_dir: str) -> list[Path]:
    """Tune's driver staging directories of experiment `study` left by every Ray session on this machine."""
    pattern = os.path.join(
        glob.escape(ray_temp_dir), "session_*", "artifacts", "*", glob.escape(study), "driver_artifacts"
    )
    return [Path(p) for p in glob.glob(pattern)]


def intact_staging_copy(study: str, needed: list[str], ray_temp_dir: str) -> Path | None:
    """The newest staging directory holding a whole copy of every file in `needed`, if any."""
    candidates = []
    for directory in staging_directories(study, ray_temp_dir):
        copies = [directory / name for name in needed]
        if all(c.is_file() and is_complete(c.read_bytes()) for c in copies):
            candidates.append((max(c.stat().st_mtime for c in copies), str(directory)))
    return Path(max(candidates)[1]) if candidates else None


def finish_interrupted_upload(experiment: str, study: str, ray_temp_dir: str) -> list[str]:
    """Repair an experiment whose last state upload was cut off; returns the names it found damaged.

    Nothing damaged: nothing is touched. Otherwise the staging directory of the session Tune resumes,
    holding whole copies, is uploaded again, all of it: the snapshot Tune meant to upload, so its files
    agree with each other (Tune's own sync copies that whole directory too).
    Raises SpaceError, changing nothing, when no such copy is on this machine.
    """
    damaged = damaged_state_files(experiment)
    if not damaged:
        return []
    # the copy must be the staging of the session Tune will resume (its experiment state names it), so
    # that all it holds is at least as new as what storage holds
    session = [n for n in files_tune_reads(experiment) if Path(n).match(STATE_PATTERNS[0])]
    source = intact_staging_copy(study, sorted(set(damaged) | set(session)), ray_temp_dir)
    if source is None:
        raise SpaceError(
            f"cannot resume study '{study}': Tune's saved state in {experiment} is incomplete "
            f"({', '.join(damaged)}), most likely because its driver was killed while saving it, and the "
            "driver's own copy is not on this machine. Resume on the machine whose driver was killed (its "
            "copy lies in Ray's session directory there). The study's trials and privacy ledger in the store "
            "are intact; nothing was changed."
        )
    fs, root = open_location(experiment)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = f"{root}/{path.relative_to(source).as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(target) as out:
            out.write(path.read_bytes())
    logger.warning(
        "study %s: %s in %s were cut off by a killed driver; uploaded again from its copy in %s",
        study,
        ", ".join(damaged),
        experiment,
        source,
    )
    return damaged
