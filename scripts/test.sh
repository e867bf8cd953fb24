#!/usr/bin/env bash
# Quickstart 2: install, lint, then run the test suite (fast grid; pass -m slow for the slow grids).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# the documentation site: a broken link or a page left out of the nav fails (not -q: quiet
# mode hides the warnings that strict mode counts)
mkdir -p .cache
.venv/bin/mkdocs build --strict > .cache/mkdocs.log 2>&1 || { cat .cache/mkdocs.log; exit 1; }
# two workers (the export of each test model is single-threaded Python); each test file runs
# in one worker so its module fixtures are built once
exec .venv/bin/python -m pytest -q -p no:logging -n 2 --dist loadfile "$@"
