#!/usr/bin/env bash
# The default lite model trained at scale on the GPU machine, then evaluated beside the default
# (benchmarks/gpu_train.py), run from the repository root. Packages as for gpu_check.sh: fetch
# them here with `bash benchmarks/fetch_gpu_wheels.sh`, install with `. benchmarks/gpu_install.sh`
# in a call carrying .gpu1, then in the next call, carrying .gpu2 (and data/real_mri, a copy of
# ../shared/data/real-mri-dev, for the real MRI row):
#   bash benchmarks/gpu_train.sh        (add --tiny for a CPU dry run, where the packages are installed)
exec bash "$(dirname "$0")/gpu_python.sh" benchmarks/gpu_train.py --out "${OUT:-gpu_train_out}" "$@"
