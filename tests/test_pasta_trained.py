"""The committed trained PASTA checkpoints (checkpoints/pasta-lm: p = 1, checkpoints/pasta-stag2:
p = 2), compiled: the parallel schedule reproduces the torch sequential interpreter token
for token and answers held-out queries. The fast test takes a few prompts per k; the
slow one takes the acceptance's 200 held-out prompts (benchmarks/pasta.py reports the
same figures with the timings). `python scripts/train_pasta.py` regenerates them."""

import json
from pathlib import Path

import pytest
from conftest import declared_atol
from edgeseq.models.checkpoint import load_checkpoint
from edgeseq.models.pasta import generate_sequential, outputs_report
from edgeseq.models.pasta_task import pasta_examples_per_k
from edgeseq.runtimes import load

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 123_456  # scripts/train_pasta.py's and benchmarks/pasta.py's


@pytest.fixture(scope="module", params=["pasta-lm", "pasta-stag2"])
def trained(request, artifacts):
    checkpoint = ROOT / "checkpoints" / request.param
    artifact = artifacts.committed(request.param)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_logit_diff"] <= declared_atol("pasta") and manifest["parity"]["passed"]
    _, model = load_checkpoint(checkpoint)
    with load(artifact) as runtime:
        yield runtime, model


def agree_and_answer(runtime, model, per_k: int) -> dict:
    examples = pasta_examples_per_k(per_k, HELD_OUT_SEED)
    results = runtime.generate([e.prompt for e in examples]).rows
    for e, r in zip(examples, results):
        assert r.tokens == generate_sequential(model, e.prompt), "the parallel schedule left the interpreter"
    return outputs_report(examples, [r.tokens for r in results])


def test_trained_model_agrees_with_the_interpreter_and_answers(trained):
    report = agree_and_answer(*trained, per_k=3)
    assert report["well_formed"] == 1.0 and report["queries"] >= 0.9


@pytest.mark.slow
def test_trained_model_on_200_held_out_prompts(trained):
    report = agree_and_answer(*trained, per_k=50)
    for k, rates in report["per_k"].items():
        assert rates["well_formed"] >= 0.99 and rates["queries"] >= 0.95, (k, rates)
