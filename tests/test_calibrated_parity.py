"""fp32 parity calibrated by the reference's own rounding (edgeseq/quality.py `calibrated`):
a correct but ill-conditioned checkpoint compiles, with PyTorch's own fp64-vs-fp32 error,
the bound used and the measured error in its manifest; and the check still catches a real
bug in every family: a 1e-3 relative change in one attention head's value weights of the
reference (the artifact unchanged) fails `parity`."""

import pytest
import torch
from conftest import ALL_ON
from edgeseq.runtimes import load

from edgeseq.families import family_of_checkpoint
from edgeseq.pipeline import compile_checkpoint
from edgeseq.quality import CALIBRATION_MULTIPLE

WEIGHT_SCALE = 10.0  # std 0.2: logits of a trained model's size (at std 0.02 they are ~1e-2 and
# a 1e-3 change in one head moves them by ~1e-7, below any fp32 bound)
CASES = {
    "red": dict(family="red", **ALL_ON),
    "stagformer": dict(family="stagformer"),
    "nash-t5": dict(family="nash", variant="t5-v1"),
    "nash-bart": dict(family="nash", variant="bart"),
    "pasta": dict(family="pasta", n_stacks=1),
}


def realistic_checkpoint(folder, family: str, variant: str | None = None, **overrides):
    """A random checkpoint whose weights have a trained model's scale, with soft NASH masks."""
    from conftest import pasta_model, red_model, stagformer_model
    from edgeseq.models.checkpoint import save_checkpoint

    if family == "nash":
        from edgeseq.models.nash_checkpoints import (
            hf_config,
            nash_dims,
            random_masks,
            save_hf_checkpoint,
        )
        from transformers import AutoModelForSeq2SeqLM

        torch.manual_seed(2)
        config = hf_config(variant, "tiny")
        config.init_std = 0.2  # BART's init; T5's (initializer_factor 1.0) is of that scale already
        model = AutoModelForSeq2SeqLM.from_config(config).eval()
        return save_hf_checkpoint(model, folder, random_masks(nash_dims(model.config), 0.3, seed=2))
    model = {"red": red_model, "stagformer": stagformer_model, "pasta": pasta_model}[family](2, **overrides)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(WEIGHT_SCALE)
    return save_checkpoint(model, family, folder)


def scale_one_value_head(model: torch.nn.Module, factor: float) -> None:
    """The first attention's value projection: its head with the largest weights (a kept one:
    the NASH masks zero a pruned head's rows) times `factor`."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "v") and hasattr(m, "n_heads"):  # edgeseq's AttentionProjections: weight [in, out]
                heads = m.v.weight.t().reshape(m.n_heads, -1, m.v.weight.shape[0])
            else:  # transformers T5Attention / BartAttention: weight [out, in]
                v = getattr(m, "v", None) if hasattr(m, "n_heads") else getattr(m, "v_proj", None)
                count = getattr(m, "n_heads", None) or getattr(m, "num_heads", None)
                if not isinstance(v, torch.nn.Linear) or not count:
                    continue
                heads = v.weight.reshape(count, -1, v.weight.shape[1])
            heads[int(heads.flatten(1).norm(dim=1).argmax())] *= factor  # a view: scales the weight itself
            return
    raise AssertionError("no attention found")


def reference_of(source):
    """The module the family's parity runs (NASH: the folded transformers model)."""
    checkpoint = getattr(source.model, "checkpoint", None)
    return checkpoint.reference() if checkpoint is not None else source.model


@pytest.mark.parametrize("case", CASES)
def test_a_1e3_change_in_one_value_head_fails_parity(tmp_path, case):
    ckpt = realistic_checkpoint(tmp_path / "ckpt", **CASES[case])
    compile_checkpoint(ckpt, tmp_path / "art", verify=False)  # parity runs below, twice
    record = family_of_checkpoint(ckpt)
    with load(tmp_path / "art") as runtime:
        source = record.load(ckpt)
        bounds = record.exporter().bounds("fp32")
        clean = record.parity(runtime, source.model, bounds, steps=16)
        assert clean["passed"], clean
        assert clean["reference_fp64_vs_fp32"] is not None and clean["atol"] >= clean["declared_atol"]
        scale_one_value_head(reference_of(source), 1.001)
        broken = record.parity(runtime, source.model, bounds, steps=16)
    assert not broken["passed"], (broken["max_abs_logit_diff"], broken["atol"])


def test_an_ill_conditioned_bart_compiles_with_its_calibration_in_the_manifest(tmp_path):
    """init_std 0.4, zero biases, soft masks: PyTorch's own fp32 logits are far from its fp64
    ones, and a fixed 1e-4 bound would refuse this correct model."""
    from edgeseq.models.nash_checkpoints import (
        hf_config,
        nash_dims,
        random_masks,
        save_hf_checkpoint,
    )
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(9)
    config = hf_config("bart", "small")
    config.init_std = 0.4
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.zero_()
    ckpt = save_hf_checkpoint(model, tmp_path / "ckpt", random_masks(nash_dims(model.config), 0.3, seed=9))
    parity = compile_checkpoint(ckpt, tmp_path / "art")["parity"]
    assert parity["passed"] and parity["greedy_token_agreement"] == 1.0, parity
    assert parity["reference_fp64_vs_fp32"] > 1e-3  # ill-conditioned indeed
    assert parity["atol"] == pytest.approx(CALIBRATION_MULTIPLE * parity["reference_fp64_vs_fp32"])
    assert 1e-4 < parity["max_abs_logit_diff"] <= parity["atol"] and parity["declared_atol"] == 1e-4
