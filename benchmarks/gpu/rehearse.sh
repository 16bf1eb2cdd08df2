#!/usr/bin/env bash
# The CPU rehearsal of the GPU call: a fresh Python 3.12 environment standing in for the device's
# image (torch 2.11.0 from a local wheelhouse, numpy 2 and the device's other packages from the
# registry), then benchmarks/gpu/run.sh exactly as the device runs it (the carried wheels installed
# with pip --no-index), at a tiny size on the CPU.
#   bash benchmarks/gpu/rehearse.sh [DRIVER ARGS]   (e.g. --steps versions,ray)
# VENV and OUT default to /tmp/eqdp-gpu-rehearsal and /tmp/eqdp-gpu-rehearsal-out (EQDP_REHEARSAL_VENV/_OUT).
# Needs: benchmarks/gpu/build.py run first (.whl, .gpudata); pyenv's 3.12 (EQDP_PY312); torch 2.11.0
# for cp312 in EQDP_WHEELHOUSE (default /work/wheelhouse).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${EQDP_REHEARSAL_VENV:-/tmp/eqdp-gpu-rehearsal}"
OUT_DIR="${EQDP_REHEARSAL_OUT:-/tmp/eqdp-gpu-rehearsal-out}"
PY312="${EQDP_PY312:-$HOME/.pyenv/versions/3.12.1/bin/python}"
WHEELHOUSE="${EQDP_WHEELHOUSE:-/work/wheelhouse}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  # the device's torch: 2.11.0 (a CUDA build; it runs on the CPU too), offline from the wheelhouse
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELHOUSE" "torch==2.11.0"
  # the device's other packages that eqdp-ray or the carried wheels import (device_packages.txt),
  # at current releases as the device has them: numpy 2, pandas, pyarrow, scikit-learn...
  "$VENV/bin/python" -m pip install -q "numpy>=2.5,<2.6" scipy pandas pyarrow scikit-learn pyyaml matplotlib \
    joblib opt-einsum click filelock msgpack "packaging>=24.2" protobuf requests attrs fsspec aiohttp grpcio \
    typing-extensions
fi
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
rm -rf /tmp/eqdp-gpu-rehearsal-site
# From here on nothing reaches the network: run.sh installs with --no-index, as on the device.
# The shared 2-core machine often runs near its 24 GiB with others' work; Ray's memory monitor
# would then kill our Train controller (seen 2026-12-01). The device has 128 GiB: off here only.
export RAY_memory_monitor_refresh_ms=0
OUT="$OUT_DIR" PYTHON="$VENV/bin/python" EQDP_GPU_SITE=/tmp/eqdp-gpu-rehearsal-site \
  bash benchmarks/gpu/run.sh --device cpu --tiny "$@"
