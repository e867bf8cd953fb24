"""int8 weight bits chosen for the CPU a model runs on (runtimes/cpu_features.py): full 8-bit
weights where a dot-product instruction keeps ONNX Runtime's u8 x s8 kernel exact, 7-bit
(requantized once at load) elsewhere; the declared int8 bounds hold on both paths, and
`inspect --json` names the CPU's features and the choice."""

import json

import numpy as np
import pytest
from edgeseq.runtimes import load
from edgeseq.runtimes.cpu_features import (
    FORCE_BITS,
    half_precision_note,
    int8_dot_product,
    int8_weight_bits,
)

from edgeseq.pipeline import parity_report

STAG = dict(family="stagformer", n_layers=4, n_stacks=2)  # test_int8.py compiles the same int8 artifact


def test_the_bits_follow_the_dot_product_feature(monkeypatch):
    monkeypatch.delenv(FORCE_BITS, raising=False)
    assert int8_weight_bits(frozenset({"avx2", "fma"}))[0] == 7
    for flag in ("avx512_vnni", "avx_vnni", "asimddp"):
        bits, why = int8_weight_bits(frozenset({"avx2", flag}))
        assert bits == 8 and int8_dot_product(frozenset({flag})) in why
    monkeypatch.setenv(FORCE_BITS, "7")
    assert int8_weight_bits(frozenset({"avx512_vnni"})) == (7, f"forced by {FORCE_BITS}=7")


def test_half_precision_refusals_name_the_feature():
    assert "AVX-512 FP16" in half_precision_note("fp16") and "no fp16 MatMul faster than fp32" in half_precision_note("fp16")
    assert "AVX-512 BF16 or AMX BF16" in half_precision_note("bf16")


def int8_keys(model) -> list[str]:
    """The weights file's keys of the int8 weights the sessions were given."""
    graphs = model.artifact.manifest["graphs"].values()
    return sorted({key for g in graphs for name, key in g["initializers"].items() if name.endswith(".int8")})


@pytest.mark.parametrize("bits", [7, 8])
def test_both_weight_paths_keep_the_declared_bounds(artifacts, monkeypatch, bits):
    checkpoint, artifact = artifacts.get(precision="int8", **STAG)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["int8_weights"] == {"stored_bits": 8}
    if bits == 8 and int8_dot_product() is None:
        pytest.skip("this CPU has no AVX-512 VNNI, AVX-VNNI or ARM dot product: 8-bit weights would saturate here")
    monkeypatch.setenv(FORCE_BITS, str(bits))
    with load(artifact) as model:
        choice = model.backend.int8
        assert choice["bits"] == bits and choice["stored_bits"] == 8
        largest = max(int(np.abs(model.backend.weights[k].numpy()).max()) for k in int8_keys(model))
        assert largest <= 63 if bits == 7 else largest > 63  # requantized at load, or run as stored
    report = parity_report(artifact, checkpoint, steps=32)
    assert report["passed"], report["failures"]


def test_inspect_names_the_cpu_and_the_choice(artifacts):
    from click.testing import CliRunner

    from edgeseq.cli import cli

    _, artifact = artifacts.get(precision="int8", **STAG)
    info = json.loads(CliRunner().invoke(cli, ["inspect", str(artifact), "--json"]).output)
    assert info["cpu"]["int8_weight_bits"] in (7, 8) and isinstance(info["cpu"]["features"], list)
    assert info["int8_weights"]["stored_bits"] == 8 and info["int8_weights"]["bits"] == info["cpu"]["int8_weight_bits"]


def test_compile_prints_an_int8_bound():
    """The compile's summary line for an int8 report (no calibration multiple) used to raise."""
    from edgeseq.cli import bound_text

    report = {"atol": 1.5, "declared_atol": 1.5, "reference_fp64_vs_fp32": 1e-7, "calibration_multiple": None}
    assert bound_text(report) == "bound 1.5e+00"
