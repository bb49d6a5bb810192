#!/usr/bin/env bash
# Download (here, where the package registry is reachable) the wheels the GPU machine's image
# lacks, for its Python 3.12 on x86-64, into .whl/ (ignored by git). See gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=""
for n in 28 27 24 17 5; do PLATFORMS+=" --platform manylinux_2_${n}_x86_64"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $PLATFORMS --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  segment-anything monai SimpleITK fastapi starlette pydantic pydantic-core annotated-types \
  typing-inspection uvicorn slicerio pynrrd nibabel
ls .whl
