#!/usr/bin/env bash
# Create .venv and install Latent Labeller into it (editable). Run by demo.sh and test.sh.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
# pip runs only when something changed: a stamp in .venv records pyproject.toml's hash and the extras, so a
# second start skips the install (about 20 s) unless the dependencies or the extras asked for changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
stamp=".venv/.labeller-installed"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=${extras}"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && grep -qxF "$wanted" "$stamp" \
    && .venv/bin/python -c "import labeller" 2>/dev/null; then
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet --editable "$spec"
# Record what is installed now; with extras, the plain install is there too.
echo "$wanted" > "$stamp"
if [ -n "$extras" ]; then
    echo "$(sha256sum pyproject.toml | cut -d' ' -f1) extras=" >> "$stamp"
fi
