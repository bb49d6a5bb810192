#!/usr/bin/env bash
# Set everything up (when it changed) and run the main job: the inference server on the bundled default model.
# Extra arguments go to `sam3d serve` (e.g. --port 8001, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_if_changed.sh
exec .venv/bin/sam3d serve --model default "$@"
