#!/usr/bin/env bash
# Creates .venv-bench (if missing): edgeseq with the compile and bench extras, for the NASH
# benchmark's peers. optimum-onnx pins transformers 4.57, so it lives apart from .venv (which
# has transformers 5); torch is pinned first for the 2.13.0 CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-bench/bin/python ]; then
    "$PYTHON" -m venv .venv-bench
fi
.venv-bench/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv-bench/bin/python -m pip install -q --disable-pip-version-check -e ".[compile,bench]"
