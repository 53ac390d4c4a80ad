#!/usr/bin/env bash
# Install everything and run the whole test suite (lint included): the README's test command, and CI's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/system-packages.sh
LABELLER_TEST_PG_URL="$(bash scripts/postgres.sh | tail -n 1)"
export LABELLER_TEST_PG_URL
# numba (under umap-learn) compiles on first use; a persistent cache makes later runs fast.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two pytest workers: every test uses its own files, ports and PostgreSQL database (tests/conftest.py), and
# half the suite waits on servers and browsers. PYTEST_WORKERS=0 runs it in one process.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
