#!/usr/bin/env bash
# Set everything up (when it changed) and run all tests (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_if_changed.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 model_server/tests Testing "$@"
