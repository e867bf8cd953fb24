# Task runner (just is installed by the dev extra: .venv/bin/just). Each recipe is also a plain script.

# create .venv and install edgeseq with its dev extras
setup:
    bash scripts/setup.sh

# train (or reuse) a tiny RED, compile it, run it on ONNX Runtime CPU
demo *ARGS:
    bash scripts/demo.sh {{ARGS}}

# the test suite (fast grid); `just test -m slow` for the slow grids
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# the committed benchmarks; results land in benchmarks/results/. The NASH peers (optimum-onnx
# needs transformers 4.57) run from their own .venv-bench, so .venv keeps transformers 5
bench:
    bash scripts/setup.sh
    bash scripts/setup_bench.sh
    .venv/bin/python benchmarks/red.py
    .venv/bin/python benchmarks/stagformer.py
    .venv-bench/bin/python benchmarks/nash.py
    .venv/bin/python benchmarks/engine.py
    .venv/bin/python benchmarks/prefix_cache.py
    .venv/bin/python benchmarks/attention_kernels.py
    .venv/bin/python benchmarks/int8_kernels.py
    .venv/bin/python benchmarks/int8_quality.py
    .venv/bin/python benchmarks/serving.py
    .venv/bin/python benchmarks/pasta.py
    .venv/bin/python benchmarks/plot.py

# PASTA alone: the trained checkpoints' held-out rates, schedule agreement and parallel speedup
bench-pasta:
    bash scripts/setup.sh
    .venv/bin/python benchmarks/pasta.py

lint:
    bash scripts/setup.sh
    .venv/bin/ruff check .
