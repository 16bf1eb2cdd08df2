"""End to end on a real multi-process Ray cluster on this machine, driven the way docs/CLUSTER.md
tells a user to: `ray start` nodes (token authentication on), `ray job submit --working-dir .`
of `eqdp-ray tune`, `ray job status`/`logs`, then `eqdp-ray best --store`.

The cluster (tests/cluster/conftest.py): a head with 1 CPU that runs the job driver, and one
worker node with 2 CPUs and its own custom resource `worker_node`. The search runs 2 trials of
the quickstart space at once, 1 CPU each: the head cannot hold both, so at least one trial must
run on the worker node.

`test_ray_up_local_provider_*` drives `ray up`/`ray exec`/`ray down` with the `local` provider
against an SSH server on 127.0.0.1 (see the `ray_up_sandbox` fixture for why that is safe).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.cluster.conftest import (
    EQDP_RAY,
    RAY,
    REPO_ROOT,
    LocalCluster,
    comm,
    free_ports,
    json_array,
    processes_of,
    run,
    tail,
    terminate,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

SPACE = "search_spaces/quickstart.yaml"
STUDY = "cluster-e2e"
TRIALS = 2
# Two epochs of the quickstart space (its ASHA scheduler as shipped: with a grace period of 4
# validation passes, neither trial is stopped early).
OVERRIDES = [f"num_samples={TRIALS}", "fixed.training.epochs=2", f"study={STUDY}"]
JOB_TIMEOUT_S = 300


def job_status(cluster: LocalCluster, submission_id: str) -> dict:
    out = cluster.ray("list", "jobs", "--address", cluster.dashboard, "--format", "json", timeout=60, check=True)
    jobs = json_array(out.stdout)
    matches = [j for j in jobs if j.get("submission_id") == submission_id]
    assert matches, f"job {submission_id} not listed: {jobs}"
    return matches[0]


def wait_for_job(cluster: LocalCluster, submission_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = job_status(cluster, submission_id)
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job
        if time.monotonic() > deadline:
            cluster.ray("job", "stop", submission_id, "--address", cluster.dashboard, "--no-wait", timeout=60)
            return job
        time.sleep(3)


def job_logs(cluster: LocalCluster, submission_id: str) -> str:
    return cluster.ray("job", "logs", submission_id, "--address", cluster.dashboard, timeout=60).stdout


def test_quickstart_search_as_a_job_then_best_reads_the_store(local_cluster: LocalCluster):
    cluster = local_cluster
    store = cluster.root / "store"
    submission_id = f"eqdp-e2e-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    # docs/CLUSTER.md step 4, with --no-wait and a fixed submission id.
    submit = cluster.ray(
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        ".",
        "--submission-id",
        submission_id,
        "--no-wait",
        "--",
        "eqdp-ray",
        "tune",
        SPACE,
        "--store",
        str(store),
        *sum((["--set", o] for o in OVERRIDES), []),
        timeout=120,
    )
    assert submit.returncode == 0, f"ray job submit failed:\n{tail(submit.stdout)}"
    assert f"Job '{submission_id}' submitted successfully" in submit.stdout

    job = wait_for_job(cluster, submission_id, JOB_TIMEOUT_S)
    logs = job_logs(cluster, submission_id)
    assert job["status"] == "SUCCEEDED", (
        f"job {submission_id} ended {job['status']} ({job.get('message')}) after "
        f"{time.monotonic() - started:.0f}s; driver log:\n{tail(logs, 150)}"
    )
    # The driver attached to this cluster (RAY_ADDRESS of the job) instead of starting its own Ray.
    assert "Connecting to existing Ray cluster" in logs, tail(logs, 150)
    assert f"study '{STUDY}': {TRIALS} trials (" in logs, tail(logs, 150)

    # docs/CLUSTER.md step 6: read the store (here a directory every node of the machine sees).
    best = run(
        [EQDP_RAY, "best", "--store", str(store), "--format", "json", "--top", "100"], env=cluster.env, timeout=120
    )
    assert best.returncode == 0, tail(best.stdout)
    rows = json_array(best.stdout)
    assert len(rows) == TRIALS, rows
    assert {r["study"] for r in rows} == {STUDY}
    assert len({r["trial_id"] for r in rows}) == TRIALS
    statuses = [(r["trial_id"], r["status"]) for r in rows]
    assert {s for _, s in statuses} <= {"completed", "stopped_early"}, statuses  # none failed or left running
    assert "completed" in {s for _, s in statuses}, statuses
    for r in rows:
        assert r["target_epsilon"] == 8.0 and r["delta"] == 1e-5, r
        assert 0 < r["epsilon"] <= r["target_epsilon"] + 1e-9, r
        assert r["steps"] > 0 and r["sigma"] > 0 and 0 < r["sample_rate"] < 1, r
        assert 0.0 <= r["best_val_accuracy"] <= 1.0, r
        assert (r["test_accuracy"] is not None) == (r["status"] == "completed"), r
        assert r["config.training.epochs"] == 2, r
        assert r["noise_source"] == "secure", r

    # Where things ran: the trials are Tune function actors (ImplicitFunc) of the job's driver.
    out = cluster.ray(
        "list", "actors", "--address", cluster.dashboard, "--format", "json", "--limit", "1000", timeout=60, check=True
    )
    actors = json_array(out.stdout)
    trials = [a for a in actors if a["class_name"] == "ImplicitFunc" and a["job_id"] == job["job_id"]]
    assert len(trials) == TRIALS, actors
    nodes = {a["node_id"] for a in trials}
    assert nodes <= {cluster.head_node_id, cluster.worker_node_id}, (nodes, cluster.head_node_id)
    assert cluster.worker_node_id in nodes, "no trial ran on the worker node"
    supervisors = [a for a in actors if a["class_name"] == "JobSupervisor"]
    assert supervisors and all(a["node_id"] == cluster.head_node_id for a in supervisors), supervisors
    print(
        f"[e2e] search job succeeded in {time.monotonic() - started:.0f}s; trials on nodes "
        f"{sorted(n[:8] for n in nodes)} (head {cluster.head_node_id[:8]}, worker {cluster.worker_node_id[:8]})"
    )


def test_missing_space_file_fails_the_job_with_one_line(local_cluster: LocalCluster):
    """The row of the docs' bad-input table, as `ray job submit` (streaming, no --no-wait) shows it."""
    cluster = local_cluster
    submission_id = f"eqdp-e2e-missing-{uuid.uuid4().hex[:8]}"
    out = cluster.ray(
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        ".",
        "--submission-id",
        submission_id,
        "--",
        "eqdp-ray",
        "tune",
        "search_spaces/does_not_exist.yaml",
        "--store",
        str(cluster.root / "store-x"),
        timeout=180,
    )
    text = out.stdout
    assert out.returncode == 1, f"rc {out.returncode}:\n{tail(text)}"
    message = "eqdp-ray: error: search space file not found: search_spaces/does_not_exist.yaml"
    # `ray job submit` streams the log, then repeats its tail after "Status message:".
    assert {line for line in text.splitlines() if "eqdp-ray: error:" in line} == {message}, tail(text)
    assert f"Job '{submission_id}' failed" in text, tail(text)
    assert "Job entrypoint command failed with exit code 2" in text, tail(text)
    assert "Traceback" not in text, tail(text)
    assert job_status(cluster, submission_id)["status"] == "FAILED"
    logs = job_logs(cluster, submission_id)
    assert [line for line in logs.splitlines() if "error" in line.lower()] == [message], tail(logs)


def test_token_authentication_is_enforced(local_cluster: LocalCluster):
    """A client without token mode, without a token, or with another token is refused (docs' table)."""
    cluster = local_cluster
    assert cluster.ray("job", "list", "--address", cluster.dashboard, timeout=60).returncode == 0

    no_mode = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    out = cluster.ray("job", "list", "--address", cluster.dashboard, env=no_mode, timeout=60)
    assert out.returncode != 0 and "Missing authentication token" in out.stdout, tail(out.stdout)
    assert "RAY_AUTH_MODE is currently 'disabled'" in out.stdout, tail(out.stdout)

    no_token = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN_PATH"}  # HOME has no ~/.ray/auth_token
    out = cluster.ray("job", "list", "--address", cluster.dashboard, env=no_token, timeout=60)
    assert out.returncode != 0 and "couldn't find an authentication token" in out.stdout, tail(out.stdout)

    wrong = dict(cluster.env, RAY_AUTH_TOKEN="0" * 64)  # RAY_AUTH_TOKEN wins over the token file
    out = cluster.ray("job", "list", "--address", cluster.dashboard, env=wrong, timeout=60)
    assert out.returncode != 0 and "Invalid authentication token" in out.stdout, tail(out.stdout)


def test_submit_to_an_unreachable_cluster_says_so(local_cluster: LocalCluster):
    port = free_ports(1)[0]  # nothing listens there
    out = run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{port}",
            "--working-dir",
            ".",
            "--",
            "eqdp-ray",
            "tune",
            SPACE,
        ],
        env=local_cluster.env,
        timeout=120,
    )
    assert out.returncode == 1, tail(out.stdout)
    assert (
        out.stdout.rstrip().splitlines()[-1] == f"ConnectionError: Failed to connect to Ray at address: "
        f"http://127.0.0.1:{port}."
    ), tail(out.stdout)


def test_local_cluster_script_starts_and_stops_only_its_own_cluster(local_cluster: LocalCluster):
    """scripts/local_cluster.sh, the by-hand version of this file's cluster."""
    script = str(REPO_ROOT / "scripts" / "local_cluster.sh")
    start = run(["bash", script, "start"], env=local_cluster.env, timeout=240)
    assert start.returncode == 0, tail(start.stdout)
    exports = dict(re.findall(r"(\w+)='([^']*)'", start.stdout.strip().splitlines()[-1]))
    cluster_dir = exports.get("EQDP_CLUSTER_DIR", "")
    try:
        assert cluster_dir.startswith("/tmp/eqdpray-") and Path(cluster_dir).is_dir(), start.stdout
        env = dict(local_cluster.env, RAY_AUTH_TOKEN_PATH=exports["RAY_AUTH_TOKEN_PATH"])
        out = run(
            [RAY, "list", "nodes", "--address", exports["RAY_API_SERVER_ADDRESS"], "--format", "json"],
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, tail(out.stdout)
        nodes = [n for n in json_array(out.stdout) if n["state"] == "ALIVE"]
        assert sorted(n["resources_total"].get("worker_node", 0) for n in nodes) == [0, 1], nodes
        stop = run(["bash", script, "stop", cluster_dir], env=local_cluster.env, timeout=120)
        assert stop.returncode == 0, tail(stop.stdout)
        assert not Path(cluster_dir).exists()
        assert not processes_of([], marker=f"{cluster_dir}/"), "local_cluster.sh stop left processes behind"
        assert all(p.poll() is None for p in local_cluster.nodes), "local_cluster.sh stop stopped another cluster"
    finally:
        if cluster_dir.startswith("/tmp/eqdpray-"):
            terminate(processes_of([], marker=f"{cluster_dir}/"))
            shutil.rmtree(cluster_dir, ignore_errors=True)


# --------------------------------------------------------------------------- ray up, local provider


def ray_up_config(sandbox, ports: list[int]) -> dict:
    """cluster-local.yaml, changed only where this machine and this test need it."""
    config = yaml.safe_load((REPO_ROOT / "cluster-local.yaml").read_text())
    config["cluster_name"] = f"eqdp-e2e-{uuid.uuid4().hex[:6]}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    # Ray's local provider has no SSH port option: reach the test's sshd through a ProxyCommand.
    config["auth"] = {
        "ssh_user": sandbox.user,
        "ssh_private_key": str(sandbox.key),
        "ssh_proxy_command": sandbox.proxy_command,
    }
    config.pop("docker", None)  # no Docker here: the commands run on the host, as the file's comment describes
    # Not the shipped install (a multi-GB torch download): check what the file mounts delivered.
    config["setup_commands"] = [
        "test -f ~/eqdp-ray/pyproject.toml && test -s ~/.ray/auth_token && test ! -e ~/eqdp-ray/.venv && ray --version"
    ]
    gcs, dash, client, agent, grpc, renv, metrics = ports
    # The shipped head command (including its `ray stop`), on free ports and one CPU.
    config["head_start_ray_commands"] = [
        "ray stop",
        "ulimit -n 65536; RAY_AUTH_MODE=token ray start --head "
        f"--port={gcs} --autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1 "
        f"--dashboard-port={dash} --ray-client-server-port={client} --dashboard-agent-listen-port={agent} "
        f"--dashboard-agent-grpc-port={grpc} --runtime-env-agent-port={renv} --metrics-export-port={metrics} "
        "--num-cpus=1 --object-store-memory=157286400 --disable-usage-stats",
    ]
    return config


def test_ray_up_local_provider_then_ray_down(tmp_path, ray_up_sandbox, local_cluster: LocalCluster):
    """`ray up` / `ray exec` / `ray down` of a derived cluster-local.yaml against 127.0.0.1 over SSH.

    `ray down` runs `ray stop` on the head. In the sandbox that only reaches the sandbox's PID
    namespace; the sentinel (a process `ray stop` would kill anywhere it can see it: its command
    line names default_worker.py, one of Ray's process patterns) and the other cluster prove it."""
    sandbox = ray_up_sandbox
    ports = free_ports(7)
    config = ray_up_config(sandbox, ports)
    config_file = tmp_path / "cluster-local-e2e.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    env = sandbox.env
    dashboard = f"http://127.0.0.1:{ports[1]}"
    sentinel = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(900)", "ray/_private/workers/default_worker.py"],
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        up = run([RAY, "up", "-y", "--no-config-cache", str(config_file)], env=env, timeout=300)
        up_s = time.monotonic() - started
        try:
            assert up.returncode == 0, f"ray up failed ({up.returncode}):\n{tail(up.stdout, 120)}"
            assert "Ray runtime started" in up.stdout and "Useful commands" in up.stdout, tail(up.stdout, 120)
            # file_mounts copied the "laptop's" ~/.ray/auth_token to the head; the head runs with it.
            assert (sandbox.fake_home / ".ray" / "auth_token").read_text() == sandbox.token
            nodes = run([RAY, "list", "nodes", "--address", dashboard, "--format", "json"], env=env, timeout=60)
            assert nodes.returncode == 0, tail(nodes.stdout)
            listed = json_array(nodes.stdout)
            assert [n["state"] for n in listed] == ["ALIVE"] and listed[0]["is_head_node"], listed
            status = run([RAY, "exec", str(config_file), "ray status"], env=env, timeout=120)
            assert status.returncode == 0 and re.search(r"0\.0/1\.0 CPU", status.stdout), tail(status.stdout)
        finally:
            down = run([RAY, "down", "-y", str(config_file)], env=env, timeout=180)
        total_s = time.monotonic() - started
        assert down.returncode == 0, f"ray down failed ({down.returncode}):\n{tail(down.stdout, 120)}"
        # `ray stop` either stops everything within its grace period or, on a loaded machine,
        # force-terminates the rest ("Stopped only 5 out of 6 ... will be forcefully terminated").
        # Either way it must have run; the namespace check below proves nothing is left.
        assert re.search(
            r"Stopped all \d+ Ray processes|Stopped only \d+ out of \d+ Ray processes"
            r"[^\n]*forcefully terminated",
            down.stdout,
        ), tail(down.stdout, 120)
        assert "No nodes remaining" in down.stdout, tail(down.stdout, 120)

        # `ray down` stopped the head's Ray ...
        gone = run([RAY, "list", "nodes", "--address", dashboard], env=env, timeout=60)
        assert gone.returncode != 0, tail(gone.stdout)
        assert not [p for p in sandbox.ns_processes() if comm(p[0]) in ("raylet", "gcs_server")]
        # ... and nothing outside the sandbox's PID namespace.
        assert sentinel.poll() is None, "ray down killed a Ray-looking process outside its sandbox"
        assert all(p.poll() is None for p in local_cluster.nodes), "ray down stopped a node of the other cluster"
        assert len([n for n in local_cluster.list_nodes() if n["state"] == "ALIVE"]) == 2
        print(f"[e2e] ray up {up_s:.0f}s, up+exec+down {total_s:.0f}s")
    finally:
        sentinel.kill()
        sentinel.wait()
        # The SSH ControlPath directory Ray made for this cluster (/tmp/ray_ssh_<user>/<cluster>, hard-coded).
        user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster_hash = hashlib.sha256(config["cluster_name"].encode()).hexdigest()[:10]
        shutil.rmtree(f"/tmp/ray_ssh_{user_hash}/{cluster_hash}", ignore_errors=True)
        try:
            os.rmdir(f"/tmp/ray_ssh_{user_hash}")  # only if no other cluster of this user uses it
        except OSError:
            pass
