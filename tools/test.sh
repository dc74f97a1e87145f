#!/usr/bin/env bash
# The test command: set up (or reuse) the environment, then run the test suite.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m slow` for the long end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash tools/setup.sh)"
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
# Two test processes on two cores: one math thread each, or they fight over the cores.
export OMP_NUM_THREADS=1
exec "$VENV/bin/python" -m pytest -q -n 2 "$@"
