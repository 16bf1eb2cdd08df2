"""Output paths named on the command line: checked before the work, written whole or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from eqdp_ray.config.paths import OutputError, check_output_dir, check_output_file, write_text_atomic


def test_check_output_file_names_the_flag_and_what_to_do(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("keep")
    with pytest.raises(OutputError, match=r"^--x .*/d is a directory; pass a file path"):
        check_output_file(tmp_path / "d", "--x")
    with pytest.raises(OutputError, match=r"^--x .*/f already exists; pass another path, or add --force"):
        check_output_file(tmp_path / "f", "--x")
    check_output_file(tmp_path / "f", "--x", overwrite=True)
    check_output_file(tmp_path / "new" / "deeper" / "c.yaml", "--x")  # missing directories are made on write
    with pytest.raises(OutputError, match=r"^--x .*/f/c.yaml: .*/f is a file, not a directory"):
        check_output_file(tmp_path / "f" / "c.yaml", "--x")
    with pytest.raises(OutputError, match=r"^--out .*/f is an existing file, not a directory"):
        check_output_dir(tmp_path / "f", flag="--out")
    assert (tmp_path / "f").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


def test_write_text_atomic_replaces_whole_and_keeps_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "c.yaml"
    write_text_atomic(path, "a: 1\n")
    write_text_atomic(path, "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert os.listdir(path.parent) == ["c.yaml"]  # no temporary left
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's private 0600
