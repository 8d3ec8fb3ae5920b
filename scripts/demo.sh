#!/usr/bin/env bash
# The embedded default on a fresh machine: installs what is missing, then runs `cdc demo` (Ctrl-C to stop).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${POS_CDC_VENV:-.venv}/bin/python" -m cdc.cli demo "$@"
