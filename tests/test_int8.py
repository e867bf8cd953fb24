"""`compile --precision int8` (issue 13): every family compiles with int8 weights and its
declared quality bounds hold against the fp32 PyTorch model; trained models keep their
task accuracy within a point; bounds that break fail the compile and leave nothing; bad
precision/target pairs get a one-line error naming the choices."""

import json

import onnx_ir as ir
import pytest

from edgeseq.errors import BuildError, ParityError
from edgeseq.pipeline import compile_checkpoint
from edgeseq.quality import INT8_BOUNDS, QualityBounds

FAMILY_CASES = {
    "red": dict(family="red"),
    "stagformer-split": dict(family="stagformer", n_layers=4, n_stacks=2),
    "nash-t5-pruned": dict(family="nash", variant="t5-v1", sparsity=0.5),
    "nash-bart": dict(family="nash", variant="bart"),
    "pasta": dict(family="pasta", n_stacks=2),
}


def step_graph_ops(artifact) -> dict[str, list[str]]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    steps = [n for n, g in manifest["graphs"].items() if g["role"] in ("decoder_step", "step", "stage")]
    return {n: [node.op_type for node in ir.load(artifact / manifest["graphs"][n]["file"]).graph] for n in steps}


@pytest.mark.parametrize("case", FAMILY_CASES, ids=list(FAMILY_CASES))
def test_every_family_compiles_int8_within_its_bounds(artifacts, case):
    _, fp32 = artifacts.get(**FAMILY_CASES[case])
    _, int8 = artifacts.get(precision="int8", **FAMILY_CASES[case])
    manifest = json.loads((int8 / "manifest.json").read_text())
    report = manifest["parity"]
    assert manifest["precision"] == "int8" and report["precision"] == "int8"
    assert report["passed"] and not report["failures"], report["failures"]
    assert report["bounds"] == INT8_BOUNDS.as_dict()  # the declared bounds are recorded with the figures
    assert report["max_abs_logit_diff"] > 0  # the weights really changed
    for name, ops in step_graph_ops(int8).items():  # split stages and pruned graphs included
        assert "DynamicQuantizeMatMul" in ops, name
    before = json.loads((fp32 / "manifest.json").read_text())["stats"]
    assert manifest["stats"]["weight_bytes_per_token"] < before["weight_bytes_per_token"] / 2
    assert manifest["stats"]["weight_bytes"] < before["weight_bytes"]
    assert manifest["stats"]["flops_per_token"] == before["flops_per_token"]  # same work, fewer bytes


def test_broken_bounds_fail_the_compile_and_leave_nothing(artifacts, tmp_path, monkeypatch):
    from edgeseq.exporters.base import FamilyExporter

    ckpt, _ = artifacts.get(family="red")
    tight = QualityBounds("int8", max_abs_logit_diff=1e-6, greedy_must_match=False)
    monkeypatch.setattr(FamilyExporter, "bounds", lambda self, precision: tight)
    with pytest.raises(ParityError, match="int8 quality bounds broken \\(max abs logit difference"):
        compile_checkpoint(ckpt, tmp_path / "out", precision="int8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision,target,message", [
    ("int4", "ort-cpu", r"unknown precision 'int4'.*fp32, int8"),
    ("int8", "ort-cuda", r"precision 'int8' does not run on target 'ort-cuda'.*--target ort-cpu"),
    ("bf16", "ort-cpu", r"'bf16' is not available yet.*fp32 or int8"),
])
def test_bad_precision_says_which_to_choose(artifacts, tmp_path, precision, target, message, monkeypatch):
    from edgeseq.runtimes import backend

    monkeypatch.setitem(backend.BACKENDS, "ort-cuda", (backend.BACKENDS["ort-cpu"][0], lambda: None))  # as if a GPU were here
    ckpt, _ = artifacts.get(family="red")
    with pytest.raises(BuildError, match=message) as raised:
        compile_checkpoint(ckpt, tmp_path / "out", target=target, precision=precision)
    assert "\n" not in raised.value.one_line()
    assert not (tmp_path / "out").exists()


def test_demo_red_keeps_its_accuracy_at_int8(tmp_path):
    """The demo's trained RED (checkpoints/demo-red): held-out accuracy at int8 within a
    point of fp32, both on ONNX Runtime."""
    from pathlib import Path

    from edgeseq.models.tasks import CompositionTask, exact_match
    from edgeseq.runtimes import load

    from edgeseq.demo import HELD_OUT_SEED

    task, checkpoint = CompositionTask(2, 8), Path(__file__).parents[1] / "checkpoints" / "demo-red"
    source, target = task.sample(256, HELD_OUT_SEED)
    accuracy = {}
    for precision in ("fp32", "int8"):
        compile_checkpoint(checkpoint, tmp_path / precision, precision=precision)
        with load(tmp_path / precision, max_batch=64) as runtime:
            tokens = runtime.generate(source.tolist(), max_new_tokens=task.target_length).tokens
        accuracy[precision] = 100 * exact_match(tokens, target)
    print(accuracy)
    assert accuracy["fp32"] >= 95
    assert accuracy["int8"] >= accuracy["fp32"] - INT8_BOUNDS.max_accuracy_drop_points
