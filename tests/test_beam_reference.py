"""Beam search on the families transformers cannot run: RED (read as an encoder-decoder) and
StagFormer (decoder-only, its step split into concurrent stages) against the PyTorch
reference beam search (models/beam_reference.py) over the torch model, with transformers'
own logits processors on the reference side: the same sequences and scores within 1e-4
for each early_stopping, two returned sequences."""

import numpy as np
import pytest
import torch
from conftest import red_model, stagformer_model
from edgeseq.models.beam_reference import reference_beam_search, transformers_processors
from edgeseq.models.checkpoint import save_checkpoint
from edgeseq.runtimes import load

from edgeseq.pipeline import compile_checkpoint

OPTIONS = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_new_tokens=6, repetition_penalty=1.3,
               num_return_sequences=2)
MAX_NEW = 16
EOS = 2


def eos_prone(model, scale: float = 10.0, eos_gain: float = 4.0):
    """Logits of a size that depends on the input (std-0.02 weights leave them flat), and an eos
    column that often wins: hypotheses end at several lengths. Heads are [in, out]."""
    with torch.no_grad():
        for head in [m for name, m in model.named_modules() if name.endswith("lm_head")]:
            head.weight.mul_(scale)
            head.weight[:, EOS] *= eos_gain
    return model


@pytest.fixture(scope="module", params=["red", "stagformer"])
def torch_pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"beam-{request.param}")
    model = eos_prone(red_model(3) if request.param == "red" else stagformer_model(3, n_stacks=2, n_layers=2))
    save_checkpoint(model, request.param, root / "ckpt")
    compile_checkpoint(root / "ckpt", root / "art")
    with load(root / "art") as runtime:
        yield request.param, runtime, model


def next_logits_of(family: str, model, source: list[int]):
    """The torch model's next-token logits over full histories (no cache)."""
    def red(histories):
        src = torch.tensor([source] * len(histories))
        return model(src, torch.ones_like(src), torch.tensor(histories))[0][:, -1]

    def stagformer(histories):
        ids = torch.tensor(histories)
        return model(ids, torch.arange(ids.shape[1])[None].expand_as(ids), torch.ones_like(ids))[0][:, -1]

    return red if family == "red" else stagformer


def reference(family: str, model, source: list[int], early_stopping):
    history = [model.config.bos_token_id] if family == "red" else list(source)
    processors = transformers_processors(OPTIONS, len(history), EOS, MAX_NEW)
    return reference_beam_search(next_logits_of(family, model, source), history, OPTIONS["num_beams"], MAX_NEW, {EOS},
                                 OPTIONS["length_penalty"], early_stopping, OPTIONS["num_return_sequences"], processors)


def compare(torch_pair, early_stopping, count: int, seed: int) -> tuple[list, set]:
    family, runtime, model = torch_pair
    rng = np.random.default_rng(seed)
    differ, lengths = [], set()
    for _ in range(count):
        source = rng.integers(3, model.config.vocab_size, size=int(rng.integers(2, 10))).tolist()
        theirs = reference(family, model, source, early_stopping)
        result = runtime.generate([source], max_new_tokens=MAX_NEW, early_stopping=early_stopping, **OPTIONS)
        if result.tokens != [tokens for tokens, _, _ in theirs]:
            differ.append((source, result.tokens, theirs))
            continue
        np.testing.assert_allclose([r.score for r in result.rows], [s for _, s, _ in theirs], atol=1e-4, rtol=0)
        lengths |= {len(t) for t in result.tokens}
    return differ, lengths


@pytest.mark.parametrize("early_stopping", [True, False, "never"], ids=["true", "false", "never"])
def test_beams_equal_the_torch_reference(torch_pair, early_stopping):
    differ, lengths = compare(torch_pair, early_stopping, count=4, seed=0)
    assert differ == []
    if early_stopping != "never":  # ("never" with length_penalty 2 keeps the longest: all at the limit)
        assert len(lengths) >= 2  # hypotheses ended at eos at several lengths, not only at the limit


@pytest.mark.slow
@pytest.mark.parametrize("early_stopping", [True, False, "never"], ids=["true", "false", "never"])
def test_beams_equal_the_torch_reference_on_50_prompts(torch_pair, early_stopping):
    differ, _ = compare(torch_pair, early_stopping, count=50, seed=1)
    assert len(differ) <= 1, differ
