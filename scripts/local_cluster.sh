#!/usr/bin/env bash
# A real two-node Ray cluster on this machine (a head with 1 CPU, a worker node with 2 CPUs and the
# custom resource `worker_node`), token authentication on: the cluster workflow of docs/CLUSTER.md
# without a cloud account. tests/cluster/test_e2e_cluster.py starts the same cluster itself.
#
#   . .venv/bin/activate
#   eval "$(scripts/local_cluster.sh start)"           # prints the exports for this shell
#   ray job submit --working-dir . -- eqdp-ray tune search_spaces/quickstart.yaml \
#       --store "$EQDP_CLUSTER_DIR/store" --set num_samples=2 --set fixed.training.epochs=2
#   eqdp-ray best --store "$EQDP_CLUSTER_DIR/store"
#   scripts/local_cluster.sh stop "$EQDP_CLUSTER_DIR"  # add --keep to keep the logs
#
# Everything lives in a fresh /tmp/eqdpray-XXXXXXXX: the token (RAY_AUTH_TOKEN_PATH, your
# ~/.ray/auth_token is neither read nor written), each node's --temp-dir (two nodes on one machine
# must not share one), the logs. All ports are picked free, so a Ray already running elsewhere on
# the machine is not disturbed. `stop` signals only the process groups this script started; it
# never runs `ray stop`, which stops every Ray process of the user on the machine.
set -euo pipefail

usage() {
  echo "usage: $0 start | stop DIR [--keep] | status DIR" >&2
  exit 2
}

ray_bin=$(command -v ray) || { echo "local_cluster.sh: no 'ray' on PATH (activate the venv)" >&2; exit 1; }
python_bin=$(dirname "$ray_bin")/python
[ -x "$python_bin" ] || python_bin=python3

wait_started() {  # LOG PID
  local log=$1 pid=$2 i
  for i in $(seq 1 240); do
    grep -q "Ray runtime started" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "local_cluster.sh: ray start exited:" >&2; tail -n 40 "$log" >&2; return 1; }
    sleep 0.5
  done
  echo "local_cluster.sh: ray start did not come up in 120 s:" >&2
  tail -n 40 "$log" >&2
  return 1
}

group_alive() {  # PGID: does the process group still have a live (non-zombie) member?
  local group=$1 f line
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    set -- ${line##*) }  # state ppid pgrp ... (proc(5), fields 3-5)
    if [ "${3:-}" = "$group" ] && [ "$1" != Z ]; then return 0; fi
  done
  return 1
}

stop_node() {  # PIDFILE: SIGTERM to `ray start --block` (it stops its node), then what is left of its group
  local pidfile=$1 pid i group
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  group=$pid  # setsid: the group id is the pid of `ray start`
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  if group_alive "$group"; then
    kill -TERM -- "-$group" 2>/dev/null || true
    for i in $(seq 1 20); do group_alive "$group" || break; sleep 0.5; done
    if group_alive "$group"; then kill -KILL -- "-$group" 2>/dev/null || true; fi
  fi
  rm -f "$pidfile"
}

cmd=${1:-}
case "$cmd" in
start)
  dir=$(mktemp -d /tmp/eqdpray-XXXXXXXX)
  read -r gcs dash client a1 g1 r1 m1 a2 g2 r2 m2 < <("$python_bin" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(11)]
for s in socks:
    s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
  "$python_bin" -c "import secrets; print(secrets.token_hex(32), end='')" > "$dir/auth_token"
  chmod 600 "$dir/auth_token"
  while IFS= read -r var; do unset "$var"; done < <(env | sed -n 's/^\(RAY_[A-Za-z0-9_]*\)=.*/\1/p')
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/auth_token" RAY_USAGE_STATS_ENABLED=0 \
         RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 PATH="$(dirname "$ray_bin"):$PATH"
  common=(--block --log-style=record --disable-usage-stats --num-gpus=0 --object-store-memory=157286400)
  # No job control here, so each `setsid` execs in place: $! is `ray start`, leader of its own group.
  setsid "$ray_bin" start "${common[@]}" --head --port="$gcs" --num-cpus=1 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash" \
    --ray-client-server-port="$client" --dashboard-agent-listen-port="$a1" --dashboard-agent-grpc-port="$g1" \
    --runtime-env-agent-port="$r1" --metrics-export-port="$m1" --temp-dir="$dir/head" \
    > "$dir/head.log" 2>&1 < /dev/null &
  echo $! > "$dir/head.pid"
  wait_started "$dir/head.log" "$(cat "$dir/head.pid")" || { "$0" stop "$dir" --keep >&2; exit 1; }
  setsid "$ray_bin" start "${common[@]}" --address="127.0.0.1:$gcs" --num-cpus=2 --resources='{"worker_node": 1}' \
    --dashboard-agent-listen-port="$a2" --dashboard-agent-grpc-port="$g2" --runtime-env-agent-port="$r2" \
    --metrics-export-port="$m2" --temp-dir="$dir/w1" \
    > "$dir/worker1.log" 2>&1 < /dev/null &
  echo $! > "$dir/worker1.pid"
  wait_started "$dir/worker1.log" "$(cat "$dir/worker1.pid")" || { "$0" stop "$dir" --keep >&2; exit 1; }
  echo "$gcs" > "$dir/gcs_port"
  echo "$dash" > "$dir/dashboard_port"
  echo "# cluster in $dir: head 127.0.0.1:$gcs, dashboard http://127.0.0.1:$dash" >&2
  echo "export EQDP_CLUSTER_DIR='$dir' RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH='$dir/auth_token'" \
       "RAY_API_SERVER_ADDRESS='http://127.0.0.1:$dash'"
  ;;
stop)
  dir=${2:-}
  [ -n "$dir" ] && [ -d "$dir" ] || usage
  case "$dir" in /tmp/eqdpray-*) ;; *) echo "local_cluster.sh: not a cluster dir of this script: $dir" >&2; exit 2;; esac
  stop_node "$dir/worker1.pid"
  stop_node "$dir/head.pid"
  if [ "${3:-}" = "--keep" ]; then echo "# logs kept in $dir" >&2; else rm -rf "$dir"; fi
  ;;
status)
  dir=${2:-}
  [ -n "$dir" ] && [ -f "$dir/gcs_port" ] || usage
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/auth_token" "$ray_bin" status --address "127.0.0.1:$(cat "$dir/gcs_port")"
  ;;
*)
  usage
  ;;
esac
