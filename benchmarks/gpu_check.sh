#!/usr/bin/env bash
# GPU validation (the default model through the server, then vit_b's speed and memory), run on
# the GPU machine from the repository root. Its image has PyTorch but not this project's other
# packages: fetch them here first with `bash benchmarks/fetch_gpu_wheels.sh` (into .gpu1/ and
# .gpu2/, ignored by git), run
# `. benchmarks/gpu_install.sh` in a call carrying .gpu1, then in the next call, carrying .gpu2:
#   bash benchmarks/gpu_check.sh        (add --tiny for a CPU dry run, where the packages are installed)
exec bash "$(dirname "$0")/gpu_python.sh" benchmarks/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
