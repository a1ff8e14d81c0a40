#!/usr/bin/env bash
# Quick start: realize a pinned version (default versions/cpu-demo.json) and run the worker's
# embedded default job (test_input.json) on it, on CPU, exactly as RunPod would run it.
#   VERSION_ID=cpu-demo  COMFY_HOME=~/comfy-<id>  COMFY_VENV=<COMFY_HOME>-venv  (all optional)
# A second run reuses the checkout, the installs and the venv: no clone, no install.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh

VERSION_ID="${VERSION_ID:-cpu-demo}"
export COMFY_HOME="${COMFY_HOME:-$HOME/comfy-$VERSION_ID}"
COMFY_VENV="${COMFY_VENV:-$COMFY_HOME-venv}"

# ComfyUI gets its own interpreter so its requirements never touch the worker's pinned .venv.
if [ ! -x "$COMFY_VENV/bin/python" ]; then
  python3 -m venv "$COMFY_VENV"
fi
.venv/bin/python scripts/version.py realize "$VERSION_ID" --target "$COMFY_HOME" --python "$COMFY_VENV/bin/python"

# The runpod SDK runs ./test_input.json when it is not on RunPod, then exits with the job's status.
export COMFY_VERSION_ID="$VERSION_ID" COMFY_PYTHON="$COMFY_VENV/bin/python" OUTPUT_MODE="${OUTPUT_MODE:-base64}"
exec .venv/bin/python -m rp_handler
