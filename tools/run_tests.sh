#!/usr/bin/env bash
# README command 2 (and CI): install everything if needed, then run the whole test suite.
#   bash tools/run_tests.sh [extra pytest args]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/install.sh
venv=${STVIT_VENV:-$root/.venv}
exec "$venv/bin/python" -m pytest tests "$@"
