#!/usr/bin/env bash
# One-step install of eqdp-ray and its dependencies on a fresh machine.
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh --test   # the package and the test tools
# Order matters: torch first (a pinned CPU/CUDA build, so no other package drags in a newer one),
# then escnn without its declared dependencies (py3nj needs a Fortran compiler and is unused for
# 2-D groups), then this package, which lists escnn's real runtime needs.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${EQDP_TORCH_VERSION:-2.13.0}"
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python -m pip install --upgrade "pip>=24" >/dev/null
python -m pip install "torch==${TORCH_VERSION}"
python -m pip install --no-deps "escnn==1.0.11"
python -m pip install -e ".${extras}"
python -c "import escnn, opacus, ray, optuna, pyarrow; print('eqdp-ray installed: escnn', escnn.__version__ if hasattr(escnn,'__version__') else '1.0.11', 'opacus', opacus.__version__, 'ray', ray.__version__)"
