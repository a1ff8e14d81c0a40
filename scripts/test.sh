#!/usr/bin/env bash
# The test command: builds .venv from the pinned locks if needed, then runs pytest on every core
# (pytest-xdist, one worker per core; the real-ComfyUI modules start first).
# Usage: scripts/test.sh [--quick] [pytest args...]
#   --quick   everything but the tests marked slow or real_comfy (about a minute)
# The full run also builds the real ComfyUI of ../shared/comfyui/ once when it is there (scripts/real_comfy.sh),
# so the real-ComfyUI tests run instead of skipping; `COMFYUI_DIR= scripts/test.sh` skips that.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
args=(-n auto --dist loadscope --no-loadscope-reorder)
if [ "${1:-}" = "--quick" ]; then
  shift
  args+=(-m "not slow and not real_comfy")
else
  source scripts/real_comfy.sh
fi
exec .venv/bin/python -m pytest "${args[@]}" "$@"
