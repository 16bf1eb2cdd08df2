"""Progress lines in the logs of processes that Ray starts: shown, and shown once."""

import subprocess
import sys

SCRIPT = """
import logging
logging.basicConfig(format="root: %(message)s", level=logging.INFO)  # a handler on the root logger, as Ray gives its workers
from eqdp_ray.train.cluster import show_progress_in_worker_log
show_progress_in_worker_log()
show_progress_in_worker_log()  # a second call (a reused worker) adds nothing
logging.getLogger("eqdp_ray.train.loop").info("[eqdp-ray] step 1/2")
"""


def test_a_worker_prints_each_progress_line_once():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    lines = (out.stdout + out.stderr).splitlines()
    assert [line for line in lines if "step 1/2" in line] == ["[eqdp-ray] step 1/2"]
