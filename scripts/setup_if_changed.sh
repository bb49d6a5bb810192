#!/usr/bin/env bash
# Run scripts/setup.sh only when the environment is missing or what it installs has changed
# (setup.sh itself, requirements-test.txt, a pyproject.toml); otherwise say so and do nothing.
# SAM3D_SETUP=always forces a full setup.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=.venv/.setup-stamp
inputs=$(cat scripts/setup.sh requirements-test.txt model_server/pyproject.toml \
             $(ls web/pyproject.toml 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ "${SAM3D_SETUP:-}" != always ] && [ -x .venv/bin/sam3d ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
    echo "setup: .venv is up to date (scripts/setup.sh, requirements, pyproject unchanged); SAM3D_SETUP=always redoes it"
    exit 0
fi
bash scripts/setup.sh
echo "$inputs" > "$STAMP"
