#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its pinned PyTorch build.
# torch / torchvision are pinned and installed first so that no other dependency pulls a
# different build; everything else comes from the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -r requirements-test.txt
# Orthanc (a DICOMweb PACS) for the DICOM tests: Debian's packages, when the binary is missing and
# apt-get is there (as root). Without it the Orthanc tests skip, saying why.
if ! command -v Orthanc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb; } \
        >/dev/null 2>&1 || echo "setup: could not install Orthanc with apt-get; the Orthanc tests will skip" >&2
fi

# The web app (`sam3d web`, docs/WEB.md) runs in its own venv: trame-slicer pins an older
# slicer-core / vtk than the test suite's. No torch there (segmentation is the server's job).
[ -x .venv-web/bin/python ] || "$PY" -m venv .venv-web
.venv-web/bin/python -m pip install -q --upgrade pip >/dev/null
.venv-web/bin/python -m pip install -q -e web
# Debian's headless browser and its driver for the browser test (root, apt-get, only if absent).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
            || echo "setup.sh: could not install chromium with apt-get: the browser test will skip" >&2
    else
        echo "setup.sh: chromium / chromedriver missing and apt-get is not usable here: the browser test will skip" >&2
    fi
fi
# torch.compile's build of the default model's encoder: what `sam3d serve` compiles at its first start
# on a machine (1-2 minutes on 2 cores; torch caches it in $TORCHINDUCTOR_CACHE_DIR, by default under
# /tmp). Built once here, as a deployment's install step would, so that servers start in seconds.
.venv/bin/python -c 'from sam3d.engine.predictor import Predictor; Predictor.load("default", device="cpu").compile_encoder()' \
    >/dev/null 2>&1 || echo "setup.sh: could not build the compiled encoder; sam3d serve compiles it at its first start" >&2
