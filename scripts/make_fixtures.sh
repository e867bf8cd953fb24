#!/usr/bin/env bash
# Regenerates the committed test fixtures under tests/fixtures/ (needs the dev install).
#   nash-t5-tiny: a random-weight, half-pruned T5 with a tokenizer, compiled for ort-cpu;
#   the torch-free install test (tests/test_edge_install.py) runs it with numpy and
#   onnxruntime alone.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/edgeseq init nash --preset tiny --set variant=t5-v1 --set sparsity=0.5 --seed 0 -o "$work/ckpt"
.venv/bin/edgeseq compile "$work/ckpt" -o tests/fixtures/nash-t5-tiny --force
