#!/usr/bin/env bash
# The one command a GPU-machine call runs (docs/GPU.md):
#   set -o pipefail; bash benchmarks/gpu/run.sh            # with carry [".whl", ".gpudata"], timeout_s 600
# Installs the carried wheels offline, as the device's README says, then runs every step of
# benchmarks/gpu/driver.py (each guarded and time-limited). Everything printed also lands in $OUT.
# Extra arguments go to the driver (e.g. --device cpu --tiny for the rehearsal).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:?set OUT to the folder that comes back}"
PY="${PYTHON:-python3}"
SITE="${EQDP_GPU_SITE:-/tmp/site}"
mkdir -p "$OUT"
started=$(date +%s)
{
  echo "+ $PY -m pip install --no-index --no-deps --target $SITE .whl/*.whl"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && echo "installed $(ls .whl/*.whl | wc -l) wheels in $(( $(date +%s) - started )) s" \
    || echo "install FAILED: the steps that need these packages will fail, the others still run"
} 2>&1 | tee "$OUT/install.log"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 RAY_TMPDIR="${RAY_TMPDIR:-/tmp/ray-gpu}"
"$PY" benchmarks/gpu/driver.py --out "$OUT" "$@" 2>&1 | tee "$OUT/run.log"
status=${PIPESTATUS[0]}
echo "run.sh: $(( $(date +%s) - started )) s in all, driver exit $status" | tee -a "$OUT/run.log"
exit "$status"
