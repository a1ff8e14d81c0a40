#!/usr/bin/env bash
# The test command: builds .venv from the pinned locks if needed, then runs pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
