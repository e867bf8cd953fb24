#!/usr/bin/env bash
# Quickstart 1: install, train (or reuse) a tiny RED, compile it, run it on ONNX Runtime CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m edgeseq.demo "$@"
