"""Fixtures for the end-to-end cluster tests (tests/cluster/test_e2e_cluster.py).

``local_cluster``: a real multi-process Ray cluster on this machine, started with the same
``ray start`` commands a user runs (head + one worker node with its own resources), token
authentication on. Isolation from the rest of the machine:

* every node gets its own ``--temp-dir`` under a fresh ``/tmp/eqdpray-XXXXXXXX`` (short: Unix
  socket paths are limited to ~107 bytes). Two nodes must NOT share one temp dir: they would
  share ``session_*/runtime_resources``, and when one node garbage-collects the job's
  ``working_dir`` package it deletes the directory the job driver runs in on the other node
  (the driver then dies in ``os.getcwd()`` with ``FileNotFoundError``).
* every port is picked free (GCS, dashboard, dashboard agent, runtime-env agent, metrics,
  Ray client server): a Ray someone else started on the default ports keeps running.
* the token is a fresh one in ``<tmp>/auth_token`` (``RAY_AUTH_TOKEN_PATH``), and ``HOME`` is
  a temp dir, so nothing reads or writes the user's ``~/.ray/auth_token``.
* ``RAY_*`` variables of the calling environment are dropped; ``RAY_TMPDIR`` and ``TMPDIR``
  point into the temp dir.
* stopping never uses ``ray stop`` (it kills every Ray process the user may signal on the
  machine): each node is ``ray start --block`` in a process group of its own, stopped by SIGTERM
  to that process (worker first, then head); what is left of their groups, their descendants and
  anything whose command line names the temp dir is then terminated, each process identified by
  (pid, start time). It runs also when a test fails or times out (fixture finalizer).

``ray_up_sandbox``: what ``ray up`` with the ``local`` provider needs to run against this
machine without harming it: an OpenSSH server on 127.0.0.1 (Debian's ``openssh-server``) that
runs inside new PID and mount namespaces (``unshare``), with the user's home directory replaced
by a temp dir inside them. ``ray up``/``ray down`` run ``ray stop`` on the head over SSH; inside
the PID namespace it can see and kill only the processes of that namespace.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The interpreter running the tests: its bin/ holds the `ray` and `eqdp-ray` of this install.
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
EQDP_RAY = str(VENV_BIN / "eqdp-ray")
OBJECT_STORE_BYTES = 150 * 1024**2  # per node; Ray's default (30% of RAM) is far more than these tests need
START_TIMEOUT_S = 120.0
KEEP_DIR_ENV = "EQDP_KEEP_CLUSTER_DIR"  # set to 1 to keep /tmp/eqdpray-* (logs) after the tests


# --------------------------------------------------------------------------- processes (Linux /proc)
#
# A process is identified by (pid, start time): a pid that is reused after its process exits
# names another process, which must never be signalled.

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 of proc(5)
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(proc: Proc) -> bool:
    st = _stat(proc[0])
    return st is not None and st[3] == proc[1] and st[0] not in ("Z", "X")


def identify(pid: int) -> Proc | None:
    st = _stat(pid)
    return (pid, st[3]) if st is not None and st[0] not in ("Z", "X") else None


def processes_of(roots: Iterable[int], marker: str | None = None) -> set[Proc]:
    """Live processes that belong to `roots` (pids of live, unreaped children of this process): the
    roots, the members of their process groups, every process whose command line contains
    `marker`, and all descendants of those."""
    roots = set(roots)
    table = {pid: st for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if (st := _stat(pid))}
    found = {pid for pid in roots if pid in table}
    found |= {pid for pid, st in table.items() if st[2] in roots}
    if marker:
        found |= {pid for pid in table if marker in _cmdline(pid)}
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st[1], []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return {(pid, table[pid][3]) for pid in found if table[pid][0] not in ("Z", "X")}


def _signal(proc: Proc, sig: int) -> None:
    if alive(proc):  # still the same process
        try:
            os.kill(proc[0], sig)
        except ProcessLookupError:
            pass


def terminate(procs: Iterable[Proc], grace_s: float = 10.0) -> set[Proc]:
    """SIGTERM the given processes, SIGKILL what is left after `grace_s`; returns the survivors."""
    procs = {p for p in procs if alive(p)}
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in procs):
        time.sleep(0.2)
    stubborn = {p for p in procs if alive(p)}
    if stubborn:
        print(
            f"[cluster fixture] SIGKILL after {grace_s:g}s: {[(p[0], _cmdline(p[0])[:100]) for p in stubborn]}",
            file=sys.stderr,
        )
    for proc in stubborn:
        _signal(proc, signal.SIGKILL)
    time.sleep(0.5)
    return {p for p in procs if alive(p)}


# --------------------------------------------------------------------------- helpers


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that are free right now (all held open until every one is picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def short_temp_root() -> Path:
    """A fresh /tmp/eqdpray-XXXXXXXX: short enough for Ray's Unix sockets below it."""
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="eqdpray-", dir=base))


def clean_env(root: Path, token_path: Path | None, *, home: Path) -> dict[str, str]:
    """The environment of every Ray process and client of a test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_TMPDIR=str(root / "tmp"),
        TMPDIR=str(root / "tmp"),  # e.g. Ray Train's storage lock files (<tmp>/_ray_lockfiles)
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM a `ray start --block` node first drains for up to 30 s (Ray 2.60); not here.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        PYTHONUNBUFFERED="1",
    )
    if token_path is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    return env


def run(
    cmd: Sequence[str], *, env: dict[str, str], timeout: float, cwd: Path = REPO_ROOT, check: bool = False
) -> subprocess.CompletedProcess:
    """Run a command, stdout and stderr merged into `.stdout`; a timeout is reported as rc 124."""
    try:
        proc = subprocess.run(
            list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        proc = subprocess.CompletedProcess(list(cmd), 124, out + f"\n[timed out after {timeout:.0f}s]")
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{tail(proc.stdout)}")
    return proc


def json_array(text: str) -> list:
    """The JSON array a command printed, after whatever log lines came before it."""
    match = re.search(r"^\[", text, flags=re.MULTILINE)
    if match is None:
        raise AssertionError(f"no JSON array in the output:\n{tail(text)}")
    return json.loads(text[match.start() :])


def tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_line(proc: subprocess.Popen, log: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"`{' '.join(proc.args)}` exited with {proc.returncode}:\n{tail(text)}")
        time.sleep(0.5)
    raise RuntimeError(
        f"`{' '.join(proc.args)}` did not print {needle!r} within {timeout:.0f}s:\n"
        f"{tail(log.read_text(errors='replace') if log.exists() else '')}"
    )


def skip_unless_linux() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the cluster e2e tests track processes through /proc (Linux only)")


# --------------------------------------------------------------------------- the multi-node cluster


@dataclass
class LocalCluster:
    root: Path
    env: dict[str, str]
    token: str
    gcs_port: int
    dashboard_port: int
    nodes: list[subprocess.Popen] = field(default_factory=list)
    head_node_id: str = ""
    worker_node_id: str = ""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        """`ray ARGS` as a client of this cluster (token and auth mode in the environment)."""
        return run([RAY, *args], env=env or self.env, timeout=timeout, check=check)

    def start_node(self, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            # --block: `ray start` stays the parent of the node's processes, in a process group of its own.
            proc = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    "--log-style=record",
                    "--disable-usage-stats",
                    f"--object-store-memory={OBJECT_STORE_BYTES}",
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        self.nodes.append(proc)
        _wait_for_line(proc, log, "Ray runtime started", START_TIMEOUT_S)

    def list_nodes(self) -> list[dict]:
        out = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json", timeout=60, check=True)
        return json_array(out.stdout)

    def processes(self) -> set[Proc]:
        # poll(): a root that exited is reaped here, and its pid may then be reused: leave it out.
        return processes_of([p.pid for p in self.nodes if p.poll() is None], marker=f"{self.root}/")

    def stop(self) -> set[Proc]:
        """Stop this cluster's processes, and only them. Like `ray stop`, but scoped: worker nodes
        first, then the head, each by SIGTERM to its `ray start --block`, which then stops its own
        processes; whatever is left after that is terminated by identity."""
        leftovers = self.processes()
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        return terminate(leftovers | self.processes())


def start_local_cluster(head_cpus: int = 1, worker_cpus: int = 2) -> LocalCluster:
    root = short_temp_root()
    (root / "home").mkdir()
    (root / "tmp").mkdir()
    token = secrets.token_hex(32)
    token_path = root / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    ports = free_ports(12)
    cluster = LocalCluster(
        root=root,
        env=clean_env(root, token_path, home=root / "home"),
        token=token,
        gcs_port=ports[0],
        dashboard_port=ports[1],
    )
    try:
        cluster.start_node(
            "head",
            [
                "--head",
                f"--port={ports[0]}",
                f"--num-cpus={head_cpus}",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports[1]}",
                f"--ray-client-server-port={ports[2]}",
                f"--dashboard-agent-listen-port={ports[3]}",
                f"--dashboard-agent-grpc-port={ports[4]}",
                f"--runtime-env-agent-port={ports[5]}",
                f"--metrics-export-port={ports[6]}",
                f"--temp-dir={root / 'head'}",
            ],
        )
        cluster.start_node(
            "worker1",
            [
                f"--address=127.0.0.1:{ports[0]}",
                f"--num-cpus={worker_cpus}",
                "--num-gpus=0",
                "--resources=" + json.dumps({"worker_node": 1}),
                f"--dashboard-agent-listen-port={ports[7]}",
                f"--dashboard-agent-grpc-port={ports[8]}",
                f"--runtime-env-agent-port={ports[9]}",
                f"--metrics-export-port={ports[10]}",
                f"--temp-dir={root / 'w1'}",
            ],
        )
        deadline = time.monotonic() + 60
        while True:
            nodes = [n for n in cluster.list_nodes() if n.get("state") == "ALIVE"]
            if len(nodes) == 2 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert len(nodes) == 2, f"expected 2 alive nodes, got {nodes}"
        cluster.head_node_id = next(n["node_id"] for n in nodes if n.get("is_head_node"))
        cluster.worker_node_id = next(n["node_id"] for n in nodes if "worker_node" in n.get("resources_total", {}))
    except BaseException:
        cluster.stop()
        _remove(root)
        raise
    return cluster


def _remove(root: Path) -> None:
    if os.environ.get(KEEP_DIR_ENV) == "1":
        print(f"[cluster fixture] kept {root}")
        return
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_cluster():
    skip_unless_linux()
    if not Path(EQDP_RAY).exists():
        pytest.fail(
            f"{EQDP_RAY} is missing: install the package (pip install -e ., see README) before the cluster tests"
        )
    cluster = start_local_cluster()
    try:
        yield cluster
    finally:
        survivors = cluster.stop()
        _remove(cluster.root)
        assert not survivors, f"processes of the test cluster survived SIGKILL: {sorted(survivors)}"


# --------------------------------------------------------------------------- `ray up` sandbox

RELAY = r'''
"""ProxyCommand for ssh: relay stdin/stdout to HOST:PORT (Ray's `local` provider has no SSH port option)."""
import os, socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
'''

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/ssh_host_ed25519_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM {use_pam}
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""

# Runs as PID 1 of the new PID namespace (private mount namespace, /proc of that namespace).
NAMESPACE_INIT = """\
set -eu
# The user's home directory, seen only inside: a temp dir, plus bind mounts of what must stay
# reachable under it (this interpreter, the repository). `ray up` writes ~/ray_bootstrap_*,
# ~/.ray/auth_token and ~/eqdp-ray there, never into the real home.
{binds}
mount --rbind {fake_home} {home}
# Ray's default temp dir, private too: `ray stop` deletes /tmp/ray/ray_current_cluster, which
# belongs to whatever local Ray runs outside.
mount --bind {ns_tmp_ray} /tmp/ray
mkdir -p /run/sshd
exec {sshd} -D -e -f {root}/sshd_config
"""


@dataclass
class RayUpSandbox:
    root: Path
    user: str
    ssh_port: int
    key: Path
    proxy_command: str
    env: dict[str, str]  # the "laptop" side: HOME with ~/.ray/auth_token, RAY_TMPDIR, token mode
    token: str
    ns_proc: subprocess.Popen
    fake_home: Path

    def ns_processes(self) -> set[Proc]:
        return processes_of([self.ns_proc.pid])


def _missing_for_ray_up() -> str | None:
    if not sys.platform.startswith("linux"):
        return "ray up sandbox needs Linux namespaces"
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "unshare", "mount"):
        if shutil.which(tool) is None:
            return (
                f"`{tool}` not found: install Debian's openssh-server and rsync "
                "(apt-get install -y openssh-server rsync) to run the `ray up` test"
            )
    if os.geteuid() != 0:
        return (
            "needs root: sshd must run in new PID/mount namespaces (unshare) so that the `ray stop` that "
            "`ray up`/`ray down` run on the head cannot reach other Ray processes on this machine"
        )
    probe = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            "test -d /proc/1 && mount --bind /tmp /tmp",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot create PID+mount namespaces here (unshare: {probe.stdout.strip()})"
    return None


def start_ray_up_sandbox() -> RayUpSandbox:
    missing = _missing_for_ray_up()
    if missing:
        pytest.skip(missing)
    user = pwd.getpwuid(os.getuid()).pw_name
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if str(home) in ("", "/") or not home.is_dir():
        pytest.skip(f"the ssh user's home directory {str(home)!r} cannot be replaced inside the namespace")
    root = short_temp_root()
    ns_proc = None
    try:
        fake_home, laptop_home, ns_tmp_ray = root / "nshome", root / "laptop", root / "nsray"
        for d in (fake_home, laptop_home / ".ray", ns_tmp_ray, root / "tmp"):
            d.mkdir(parents=True)
        Path("/tmp/ray").mkdir(exist_ok=True)  # mount point; Ray creates the same directory for every local Ray
        token = secrets.token_hex(32)
        (laptop_home / ".ray" / "auth_token").write_text(token)
        key = root / "id_ed25519"
        for path in (key, root / "ssh_host_ed25519_key"):
            run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "eqdp-ray-e2e", "-f", str(path)],
                env=dict(os.environ),
                timeout=30,
                check=True,
            )
        shutil.copy(key.with_suffix(".pub"), root / "authorized_keys")
        (root / "relay.py").write_text(RELAY)
        port = free_ports(1)[0]
        # Root's shadow entry is often locked ("!"): with UsePAM no, sshd then refuses every login.
        shadow_locked = False
        try:
            for line in Path("/etc/shadow").read_text().splitlines():
                name, pw = line.split(":")[:2]
                if name == user:
                    shadow_locked = pw.startswith("!")
        except OSError:
            pass
        (root / "sshd_config").write_text(
            SSHD_CONFIG.format(port=port, root=root, user=user, use_pam="yes" if shadow_locked else "no")
        )
        # What the login shell on the "head" sees: this install's bin first on PATH (as on a node where
        # Ray is installed) and token mode for clients such as `ray status`. Ray's default temp dir
        # /tmp/ray is a private directory inside the namespace (see NAMESPACE_INIT).
        bashrc = f'export PATH="{VENV_BIN}:$PATH"\nexport RAY_AUTH_MODE=token\nexport RAY_USAGE_STATS_ENABLED=0\n'
        (fake_home / ".bashrc").write_text(bashrc)
        (fake_home / ".profile").write_text('. "$HOME/.bashrc"\n')
        keep = sorted(
            {
                Path(p)
                for p in (
                    REPO_ROOT,
                    sys.prefix,
                    os.path.realpath(sys.base_prefix),
                    os.path.dirname(os.path.realpath(sys.executable)),
                )
                if _is_under(Path(p), home)
            },
            key=lambda p: len(p.parts),
        )
        binds = []
        for path in keep:
            if any(_is_under(path, other) for other in keep if other != path):
                continue
            inside = fake_home / path.relative_to(home)
            binds.append(f"mkdir -p {inside} && mount --rbind {path} {inside}")
        script = NAMESPACE_INIT.format(
            binds="\n".join(binds) or ":",
            fake_home=fake_home,
            home=home,
            ns_tmp_ray=ns_tmp_ray,
            sshd=shutil.which("/usr/sbin/sshd"),
            root=root,
        )
        (root / "ns_init.sh").write_text(script)
        log = root / "sshd.log"
        with open(log, "wb") as out:
            ns_proc = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount",
                    "--mount-proc",
                    "--propagation",
                    "private",
                    "sh",
                    str(root / "ns_init.sh"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        sandbox = RayUpSandbox(
            root=root,
            user=user,
            ssh_port=port,
            key=key,
            proxy_command=f"{sys.executable} {root / 'relay.py'} 127.0.0.1 {port}",
            # (TMPDIR: `ray up`'s config cache, tempfile.gettempdir()/ray-config-*, lands in the temp dir too.)
            env=clean_env(root, None, home=laptop_home) | {"RAY_AUTH_MODE": "token"},
            token=token,
            ns_proc=ns_proc,
            fake_home=fake_home,
        )
        _wait_for_line(ns_proc, log, "Server listening on 127.0.0.1", 30)
        probe = run(
            [
                "ssh",
                "-i",
                str(key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                f"UserKnownHostsFile={os.devnull}",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                f"ProxyCommand={sandbox.proxy_command}",
                f"{user}@127.0.0.1",
                "bash --login -c 'echo HOME=$HOME; echo PID1=$(cat /proc/1/comm); ray --version'",
            ],
            env=sandbox.env,
            timeout=60,
        )
        # Logged in, in the sandbox's home, in its PID namespace (PID 1 is its sshd), with Ray on PATH.
        if (
            probe.returncode != 0
            or f"HOME={home}" not in probe.stdout
            or "PID1=sshd" not in probe.stdout
            or "ray, version" not in probe.stdout
        ):
            raise RuntimeError(
                f"ssh into the sandbox failed ({probe.returncode}):\n{probe.stdout}\n"
                f"sshd log:\n{tail(log.read_text(errors='replace'))}"
            )
        return sandbox
    except BaseException:
        _stop_sandbox_processes(root, ns_proc)
        _remove(root)
        raise


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _stop_sandbox_processes(root: Path, ns_proc: subprocess.Popen | None = None) -> set[Proc]:
    # Killing the namespace's PID 1 (sshd) makes the kernel kill every process in the namespace.
    roots = [ns_proc.pid] if ns_proc is not None and ns_proc.poll() is None else []
    return terminate(processes_of(roots, marker=f"{root}/"), grace_s=5)


@pytest.fixture(scope="module")
def ray_up_sandbox():
    sandbox = start_ray_up_sandbox()
    try:
        yield sandbox
    finally:
        survivors = _stop_sandbox_processes(sandbox.root, sandbox.ns_proc)
        try:
            sandbox.ns_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _remove(sandbox.root)
        assert not survivors, f"processes of the ray-up sandbox survived SIGKILL: {sorted(survivors)}"
