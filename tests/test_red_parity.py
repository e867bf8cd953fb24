"""Compiled RED vs PyTorch: every switch on, off, and mixed; lengths 1..64; batches of mixed lengths.

The fast grid runs in CI; `-m slow` runs all 32 switch combinations.
"""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALL_OFF, ALL_ON, declared_atol
from edgeseq.models.checkpoint import load_checkpoint
from edgeseq.models.red import SWITCHES
from edgeseq.runtimes import load

from edgeseq.families import FAMILIES
from edgeseq.parity import encoder_decoder_parity

ATOL = declared_atol("red")
MIXED = [
    dict(ALL_ON, share_parameters=False),
    dict(ALL_ON, unidirectional_cross_attention=False),
    dict(ALL_OFF, causal_encoder=True, consecutive_positions=True),
    dict(ALL_OFF, share_parameters=True, layerwise_coordination=True),
]
FAST_GRID = [ALL_ON, ALL_OFF, *MIXED[:2]]  # all 32 combinations (MIXED included) run with -m slow
FULL_GRID = [dict(zip(SWITCHES, bits)) for bits in itertools.product([True, False], repeat=len(SWITCHES))]
CASES = [[1], [2], [5], [17], [64], [1, 64, 9, 33], [3, 3]]


def switch_id(s: dict) -> str:
    return "".join("1" if s[k] else "0" for k in SWITCHES)


def check(artifacts, switches):
    ckpt, art = artifacts.get(**switches)
    _, model = load_checkpoint(ckpt)
    report = encoder_decoder_parity(load(art), model, ATOL, steps=64, cases=CASES)
    for case in report["cases"]:
        assert case["max_abs_logit_diff"] <= ATOL, case
        assert case["greedy_token_agreement"] == 1.0, case


@pytest.mark.parametrize("switches", FAST_GRID, ids=switch_id)
def test_red_parity_fast_grid(artifacts, switches):
    check(artifacts, switches)


@pytest.mark.slow
@pytest.mark.parametrize("switches", FULL_GRID, ids=switch_id)
def test_red_parity_full_grid(artifacts, switches):
    check(artifacts, switches)


def test_batch_rows_match_single_rows(artifacts):
    """A row's tokens do not depend on what else is in the batch (padding is masked)."""
    _, art = artifacts.get(**ALL_OFF)
    model = load(art)
    rows = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
    batch = model.generate(rows, max_new_tokens=12, stop_tokens=[], return_logits=True)
    for b, row in enumerate(rows):
        single = model.generate([row], max_new_tokens=12, stop_tokens=[], return_logits=True)
        assert single.tokens[0] == batch.tokens[b]
        np.testing.assert_allclose(np.stack(single.logits)[:, 0], np.stack(batch.logits)[:, b], atol=1e-5)


def test_compile_records_a_passing_parity_report(artifacts):
    from edgeseq.runtimes import read_artifact

    _, art = artifacts.get(**ALL_ON)
    parity = read_artifact(art).manifest["parity"]
    assert parity["passed"] and parity["max_abs_logit_diff"] <= ATOL and parity["greedy_token_agreement"] == 1.0


def families_without_parity_tests(names, here: Path) -> list[str]:
    """The registered families with no tests/test_<family>*.py module that tests parity."""
    return [name for name in names if not [p for p in here.glob(f"test_{name}*.py") if "parity" in p.read_text()]]


def test_every_family_has_an_exporter_and_a_parity_test():
    """Guard: a family registered without an exporter or a parity test fails here. The list
    comes from the registry; a family's parity tests live in tests/test_<family>*.py."""
    here = Path(__file__).parent
    for name, record in FAMILIES.items():
        assert record.exporter().family == name
    assert families_without_parity_tests(FAMILIES, here) == [], "a family has no parity test module (tests/test_<family>*.py)"
    # planted: one more record, whose tests nobody wrote, is reported
    assert families_without_parity_tests([*FAMILIES, "whisper"], here) == ["whisper"]


def test_torch_reference_is_deterministic(artifacts):
    ckpt, _ = artifacts.get(**ALL_ON)
    _, a = load_checkpoint(ckpt)
    _, b = load_checkpoint(ckpt)
    src = torch.randint(3, 48, (1, 5))
    assert torch.equal(a.generate_greedy(src, torch.ones_like(src), 5)[0], b.generate_greedy(src, torch.ones_like(src), 5)[0])
