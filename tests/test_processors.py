"""The logits processors (runtimes/processors.py) against transformers' own, one by one and
all together in transformers' order, on random histories and scores: equal outputs, with
the numpy side's state built one token at a time (never from the whole history)."""

import numpy as np
import pytest
import torch
from edgeseq.models.beam_reference import transformers_processors
from edgeseq.runtimes.processors import ProcessorOptions, Processors

from edgeseq.errors import GenerateError

V, EOS, PROMPT, MAX_NEW = 20, 2, 3, 10
ENCODER_IDS = [4, 5, 6, 4, 5, 7, 8]


def theirs(options: dict, prompt_length: int):
    """transformers' processors for `options`, in its order (the reference side, models/beam_reference.py)."""
    return transformers_processors(options, prompt_length, EOS, MAX_NEW, ENCODER_IDS)


CASES = {
    "repetition_penalty": dict(repetition_penalty=1.7),
    "no_repeat_ngram_size=1": dict(no_repeat_ngram_size=1),
    "no_repeat_ngram_size=3": dict(no_repeat_ngram_size=3),
    "encoder_no_repeat_ngram_size": dict(encoder_no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[3], [EOS], [4, 5], [5, 6, 7]]),
    "min_length": dict(min_length=PROMPT + 4),
    "min_new_tokens": dict(min_new_tokens=5),
    "forced_bos_token_id": dict(forced_bos_token_id=4),
    "forced_eos_token_id": dict(forced_eos_token_id=EOS),
    "suppress_tokens": dict(suppress_tokens=[3, 9]),
    "begin_suppress_tokens": dict(begin_suppress_tokens=[3, 9]),
    "begin_suppress_tokens after a forced bos": dict(forced_bos_token_id=4, begin_suppress_tokens=[3, 9]),
    "all": dict(repetition_penalty=1.3, no_repeat_ngram_size=2, encoder_no_repeat_ngram_size=2,
                bad_words_ids=[[4, 5]], min_length=PROMPT + 2, min_new_tokens=3, forced_eos_token_id=EOS,
                suppress_tokens=[9], begin_suppress_tokens=[3]),
}


@pytest.mark.parametrize("prompt_length", [1, PROMPT], ids=["decoder-start", "prompt"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_processor_equals_transformers(case, prompt_length):
    options = CASES[case]
    rng = np.random.default_rng(0)
    rows = 4
    mine = Processors(ProcessorOptions.from_options(options, V), frozenset([EOS]), prompt_length, MAX_NEW, ENCODER_IDS)
    starts = [rng.integers(3, 9, prompt_length).tolist() for _ in range(rows)]
    states = [mine.start(s) for s in starts]
    histories = [list(s) for s in starts]
    processors = theirs(options, prompt_length)
    for _ in range(MAX_NEW):  # every length the processors see, with repeats of small ids
        scores = rng.standard_normal((rows, V)).astype(np.float32) * 3
        expected = processors(torch.tensor(histories), torch.from_numpy(scores.copy())).numpy()
        got = mine.apply(scores.copy(), states)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
        finite = ~np.isneginf(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-6, atol=1e-6)
        for state, history in zip(states, histories):  # one token each: the state grows incrementally
            token = int(rng.integers(3, 9))
            mine.advance(state, token)
            history.append(token)


def test_a_forked_history_is_its_own():
    p = Processors(ProcessorOptions(no_repeat_ngram_size=2), frozenset([EOS]), 1, MAX_NEW)
    parent = p.start([0, 4])
    child = parent.copy()
    p.advance(child, 5)
    assert (4,) not in parent.ngrams and child.ngrams[(4,)] == {5} and parent.tokens == [0, 4]


@pytest.mark.parametrize("options, message", [
    (dict(repetition_penalty=float("nan")), "repetition_penalty=nan must be a finite number > 0"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty=inf must be a finite number > 0"),
    (dict(repetition_penalty=0), "must be a finite number > 0"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size=-1 must be a whole number >= 0"),
    (dict(bad_words_ids=[[V]]), f"bad_words_ids holds {V}, not a token id of this model's vocabulary [0, {V})"),
    (dict(bad_words_ids=[3]), "bad_words_ids must be a list of non-empty token id lists"),
    (dict(suppress_tokens=[-1]), "suppress_tokens holds -1"),
    (dict(forced_bos_token_id=V + 5), f"forced_bos_token_id holds {V + 5}"),
])
def test_bad_processor_options_are_named(options, message):
    with pytest.raises(GenerateError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ProcessorOptions.from_options(options, V)
