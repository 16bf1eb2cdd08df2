import socket
import time

import pytest

from eqdp_ray.cli import main
from eqdp_ray.train.cluster import ClusterError, probe_address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_fails_in_seconds():
    start = time.time()
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster"):
        probe_address(f"127.0.0.1:{free_port()}")
    assert time.time() - start < 10


def test_listening_address_passes_probe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe_address(f"ray://127.0.0.1:{server.getsockname()[1]}")


def test_malformed_address():
    with pytest.raises(ClusterError, match="cannot parse"):
        probe_address("nohostport")


def test_cli_with_unreachable_address_is_one_line(tmp_path, capsys):
    from pathlib import Path

    config = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
    code = main(["train", config, "--workers", "2", "--address", f"127.0.0.1:{free_port()}", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray cluster" in err and "Traceback" not in err


def test_writable_probe_leaves_no_directory_behind(tmp_path):
    from eqdp_ray.train.cluster import check_writable

    check_writable(str(tmp_path / "a" / "b" / "store"), what="results store", flag="--store")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ClusterError, match="not writable"):
        (tmp_path / "file").write_text("x")
        check_writable(str(tmp_path / "file" / "store"), what="results store", flag="--store")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
