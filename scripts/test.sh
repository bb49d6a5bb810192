#!/usr/bin/env bash
# Set everything up (when it changed) and run all tests (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_if_changed.sh
# Two workers (pytest-xdist), each file's tests on one worker (module fixtures such as a served
# model are built once): most tests run one torch thread or wait on a server or subprocess, so the
# two cores run two files at a time (about 0.6x the serial time on the 2-core test machine).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 \
    model_server/tests Testing "$@"
