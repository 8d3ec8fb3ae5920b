#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, lints, then runs every test against
# real PostgreSQL clusters that the suite starts itself, on the Cython-compiled hot modules (a test fails if
# they are not compiled), then the unit tests again on their pure-Python .py files (CDC_PURE_PYTHON=1).
# Extra arguments go to pytest, and then only that run is made.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-test-tools
PY="${POS_CDC_VENV:-.venv}/bin/python"
export PATH="$(dirname "$PY"):$PATH"  # `cdc` itself, for whatever runs it by name
"$PY" -m ruff check .
"$PY" -m ruff format --check . >/dev/null || { echo "ruff format would change files: run 'ruff format .'"; exit 1; }
if [ $# -gt 0 ]; then exec "$PY" -m pytest -q -p no:cacheprovider "$@"; fi
"$PY" -m pytest -q -p no:cacheprovider
echo "test: the unit tests again, on the pure-Python hot modules (CDC_PURE_PYTHON=1)"
CDC_PURE_PYTHON=1 "$PY" -m pytest -q -p no:cacheprovider tests/unit
