#!/usr/bin/env bash
# Quickstart 2: install, then run the test suite (fast grid; pass -m slow for the slow grids).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:logging "$@"
