#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, lints, then runs every test against
# real PostgreSQL clusters that the suite starts itself. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-test-tools
PY="${POS_CDC_VENV:-.venv}/bin/python"
export PATH="$(dirname "$PY"):$PATH"  # `cdc` itself, for whatever runs it by name
"$PY" -m ruff check .
"$PY" -m ruff format --check . >/dev/null || { echo "ruff format would change files: run 'ruff format .'"; exit 1; }
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
