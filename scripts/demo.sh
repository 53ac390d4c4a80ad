#!/usr/bin/env bash
# Install Latent Labeller and open the app on the built-in demo project (scikit-learn digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
exec .venv/bin/labeller demo projects/demo "$@"
