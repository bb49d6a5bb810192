#!/usr/bin/env bash
# On the GPU machine, from the repository root: `bash benchmarks/gpu_python.sh SCRIPT.py [ARGS...]`
# runs a benchmark script with the project's packages, installing whatever .gpu1/ and .gpu2/ this
# call carries first (gpu_install.sh). gpu_check.sh and gpu_train.sh run through it.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .gpu1 ] || [ -d .gpu2 ]; then
  . benchmarks/gpu_install.sh || exit 1
fi
export PYTHONPATH="$PWD/model_server${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 "$@"
