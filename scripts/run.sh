#!/usr/bin/env bash
# Set everything up and run the main job: the inference server on the bundled default model.
# Extra arguments go to `sam3d serve` (e.g. --port 8001, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sam3d serve --model default "$@"
