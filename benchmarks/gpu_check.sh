#!/usr/bin/env bash
# GPU validation of vit_b (issue: speed and memory on an H100), run on the GPU machine from the
# repository root. Its image has PyTorch but not this project's other packages: fetch them here
# first with `bash benchmarks/fetch_gpu_wheels.sh` (into .whl/, ignored by git), carry `.whl`,
# and run:  bash benchmarks/gpu_check.sh        (add --tiny for a CPU dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/model_server${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
