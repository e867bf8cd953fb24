"""Beam search and the logits processors against transformers' `generate`, on NASH T5 v1, T5
v1.1 and BART checkpoints (random weights, soft masks, a head that often says eos so
hypotheses finish at every length): the same sequences and sequence scores within 1e-4,
for each `early_stopping`, with two returned sequences. The fast grid takes a few prompts
per variant; `-m slow` runs 50 each (at most one divergence, at a near-tie)."""

import numpy as np
import pytest
import torch
from edgeseq.models.nash import load_nash
from edgeseq.models.nash_checkpoints import (
    nash_dims,
    random_masks,
    random_model,
    save_hf_checkpoint,
)
from edgeseq.runtimes import load
from transformers import GenerationConfig

from edgeseq.pipeline import compile_checkpoint

VARIANTS = ("t5-v1", "t5-v1.1", "bart")
ISSUE_CONFIG = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_new_tokens=8, repetition_penalty=1.3,
                    num_return_sequences=2)
BART_EXTRA = dict(forced_bos_token_id=0, forced_eos_token_id=2)
MAX_NEW = 24
SCORE_TOL = 1e-4


def eos_prone(model, eos: int):
    """A head that puts eos near the top often: hypotheses end at many lengths."""
    with torch.no_grad():
        if getattr(model, "final_logits_bias", None) is not None:  # BART: logits of a size that
            model.get_output_embeddings().weight.mul_(10.0)  # depends on the input (init_std 0.02
            model.final_logits_bias[0, eos] += 6.0  # leaves them flat), and an eos bias
        else:  # T5: a longer eos row in the head
            model.get_output_embeddings().weight[eos] *= 4.0
    return model


@pytest.fixture(scope="module", params=VARIANTS)
def nash_pair(request, tmp_path_factory):
    """(variant, the compiled artifact loaded, the transformers model with the masks folded in)."""
    root = tmp_path_factory.mktemp(f"beam-{request.param}")
    model = random_model(request.param, "tiny", seed=0)
    eos_prone(model, model.config.eos_token_id)
    ckpt = save_hf_checkpoint(model, root / "ckpt", random_masks(nash_dims(model.config), 0.3, seed=1))
    compile_checkpoint(ckpt, root / "art")
    with load(root / "art") as runtime:
        yield request.param, runtime, load_nash(ckpt).reference()


def prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(rng.integers(3, 14))).tolist() for _ in range(count)]


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def transformers_beams(hf, source: list[int], options: dict) -> tuple[list[list[int]], list[float]]:
    c = hf.config
    config = GenerationConfig(max_new_tokens=MAX_NEW, decoder_start_token_id=c.decoder_start_token_id,
                              eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, **options)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([source]), attention_mask=torch.ones(1, len(source), dtype=torch.long),
                          generation_config=config)
    return [until_eos(s.tolist()[1:], c.eos_token_id) for s in out.sequences], out.sequences_scores.tolist()


def options_for(variant: str, early_stopping) -> dict:
    return {**ISSUE_CONFIG, **(BART_EXTRA if variant == "bart" else {}), "early_stopping": early_stopping}


def compare(nash_pair, early_stopping, count: int, seed: int = 0) -> list[tuple]:
    """Per prompt, (prompt, ours, theirs) where they differ; asserts scores where they agree."""
    variant, runtime, hf = nash_pair
    options = options_for(variant, early_stopping)
    differ = []
    for source in prompts(count, hf.config.vocab_size, seed):
        theirs, their_scores = transformers_beams(hf, source, options)
        result = runtime.generate([source], max_new_tokens=MAX_NEW, **options)
        if result.tokens != theirs:
            differ.append((source, result.tokens, theirs))
            continue
        ours = [row.score for row in result.rows]
        np.testing.assert_allclose(ours, their_scores, atol=SCORE_TOL, rtol=0)
    return differ


@pytest.mark.parametrize("early_stopping", [True, False, "never"], ids=["true", "false", "never"])
def test_beams_equal_transformers(nash_pair, early_stopping):
    assert compare(nash_pair, early_stopping, count=4) == []


@pytest.mark.slow
@pytest.mark.parametrize("early_stopping", [True, False, "never"], ids=["true", "false", "never"])
def test_beams_equal_transformers_on_50_prompts(nash_pair, early_stopping):
    differ = compare(nash_pair, early_stopping, count=50, seed=1)
    assert len(differ) <= 1, differ


def test_hypotheses_end_at_eos_and_at_the_length_limit(nash_pair):
    """The grid above means something: finished hypotheses of several lengths, ended by eos
    and by max_new_tokens, and the eos withheld for min_new_tokens."""
    variant, runtime, hf = nash_pair
    reasons, lengths = set(), set()
    for source in prompts(6, hf.config.vocab_size, seed=3):
        for row in runtime.generate([source], max_new_tokens=MAX_NEW, **options_for(variant, False)).rows:
            reasons.add(row.finish_reason)
            lengths.add(len(row.tokens))
            assert len(row.tokens) >= ISSUE_CONFIG["min_new_tokens"]
    assert "stop" in reasons and len(lengths) >= 2, (reasons, lengths)


# ----- the processors alone: greedy (and sampling's filters) as transformers' generate -----------------
GREEDY_PROCESSORS = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5, suppress_tokens=[7, 8],
                         begin_suppress_tokens=[9, 10], bad_words_ids=[[11], [12, 13]])


def transformers_greedy(hf, source: list[int], options: dict) -> list[int]:
    c = hf.config
    config = GenerationConfig(max_new_tokens=MAX_NEW, decoder_start_token_id=c.decoder_start_token_id,
                              eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, do_sample=False, num_beams=1,
                              **options)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([source]), attention_mask=torch.ones(1, len(source), dtype=torch.long),
                          generation_config=config)
    return until_eos(out[0].tolist()[1:], c.eos_token_id)


def test_greedy_with_every_processor_equals_transformers(nash_pair):
    variant, runtime, hf = nash_pair
    options = {**GREEDY_PROCESSORS, **(BART_EXTRA if variant == "bart" else {})}
    plain_differs = False
    for source in prompts(4, hf.config.vocab_size, seed=5):
        ours = runtime.generate([source], max_new_tokens=MAX_NEW, **options).tokens[0]
        assert ours == transformers_greedy(hf, source, options), source
        assert not {7, 8, 11} & set(ours) and ours[0] not in (9, 10) and len(ours) >= 5
        plain_differs |= runtime.generate([source], max_new_tokens=MAX_NEW).tokens[0] != ours
    assert plain_differs  # the processors changed something


# ----- log-probabilities: of the processed distribution, as transformers' output_scores ---------------
def test_greedy_and_beam_logprobs_equal_transformers_scores(nash_pair):
    variant, runtime, hf = nash_pair
    c = hf.config
    source = prompts(1, c.vocab_size, seed=7)[0]
    ids = torch.tensor([source])
    for options in (dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2), options_for(variant, False)):
        config = GenerationConfig(max_new_tokens=MAX_NEW, decoder_start_token_id=c.decoder_start_token_id,
                                  eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, do_sample=False,
                                  output_scores=True, return_dict_in_generate=True, **options)
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            # per returned sequence, per token: the processed log-probability it was chosen with
            expected = hf.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                                    normalize_logits=options["num_beams"] == 1)
        result = runtime.generate([source], max_new_tokens=MAX_NEW, logprobs=3, **options)
        for row, want, sequence in zip(result.rows, expected, out.sequences):
            n = len(row.tokens)
            assert row.tokens == until_eos(sequence.tolist()[1:], c.eos_token_id)
            np.testing.assert_allclose(row.token_logprobs, want[:n].numpy(), atol=1e-4, rtol=0)
            assert all(len(alternatives) == 3 for alternatives in row.top_logprobs)
            if options["num_beams"] == 1:  # greedy: the chosen token is the best alternative
                assert [alternatives[0][0] for alternatives in row.top_logprobs] == row.tokens
            else:  # a hypothesis' score is its log-probabilities' sum over its length ** penalty
                assert row.score == pytest.approx(sum(row.token_logprobs) / n ** options["length_penalty"], abs=1e-4)


def test_sampling_logprobs_are_of_the_warped_distribution(nash_pair):
    """Sampled tokens' log-probabilities equal torch's log-softmax of the logits after
    transformers' processors and warpers (temperature, top-k, top-p), on the runtime's own logits."""
    from edgeseq.runtimes import SamplingOptions
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    variant, runtime, hf = nash_pair
    source = prompts(1, hf.config.vocab_size, seed=8)[0]
    sampling = SamplingOptions(True, 0.7, 20, 0.9, 5)
    result = runtime.generate([source], max_new_tokens=8, stop_tokens=[], sampling=sampling, logprobs=0,
                              return_logits=True)
    row = result.rows[0]
    warp = [TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.9)]
    for step, (token, logprob) in enumerate(zip(row.tokens, row.token_logprobs)):
        scores = torch.from_numpy(result.logits[step][:1].astype(np.float32))
        for w in warp:
            scores = w(None, scores)
        assert logprob == pytest.approx(torch.log_softmax(scores, -1)[0, token].item(), abs=1e-4)
