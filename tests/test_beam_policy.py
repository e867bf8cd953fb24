"""The beam policy's row handling, on recorded row operations and on the fake numpy model:
a reorder copies only the rows whose parent changed (in place, through the cache manager),
the first step forks from one prefill, a beam request holds num_beams rows, and beam
requests share steps with greedy and sampling ones (each gives what it gives alone)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from edgeseq.runtimes import SamplingOptions
from edgeseq.runtimes.policies.beam import BeamOptions, BeamPolicy
from edgeseq.runtimes.requests import Request
from fake_model import fake_model

from edgeseq.errors import GenerateError


class RecordedOps:
    """Row operations that only record what the policy asked for."""

    def __init__(self):
        self.calls = []

    def fork(self, parent, child, length=None, state=None):
        self.calls.append(("fork", parent.index, child.index))
        return True

    def reorder(self, source, target):
        self.calls.append(("reorder", source.index, target.index))

    def release(self, row):
        self.calls.append(("release", row.index))


def beam_policy(num_beams=4, max_new=8):
    request = Request([5, 6], max_new, frozenset([2]))
    return BeamPolicy(request, BeamOptions(num_beams), None, [5, 6], frozenset([2]))


def test_the_first_step_forks_the_other_beams_from_the_one_prefilled_row():
    policy, ops = beam_policy(), RecordedOps()
    policy._reorder(ops, [0, 0, 0, 0], [7, 8, 9, 10])
    assert ops.calls == [("fork", 0, 1), ("fork", 0, 2), ("fork", 0, 3)]
    assert [r.tokens for r in policy.beams] == [[7], [8], [9], [10]]


def test_a_reorder_copies_only_the_rows_whose_parent_changed():
    policy, ops = beam_policy(), RecordedOps()
    policy._reorder(ops, [0, 0, 0, 0], [7, 8, 9, 10])
    rows = list(policy.beams)
    ops.calls.clear()
    # beams 0, 1 and 3 continue; beam 2 is dropped and its row becomes a copy of beam 0's
    policy._reorder(ops, [0, 1, 0, 3], [11, 12, 13, 14])
    assert ops.calls == [("reorder", 0, 2)]
    assert policy.beams[0] is rows[0] and policy.beams[1] is rows[1] and policy.beams[3] is rows[3]
    assert policy.beams[2] is rows[2]  # the spare row, now holding beam 0's history
    assert [r.tokens for r in policy.beams] == [[7, 11], [8, 12], [7, 13], [10, 14]]
    ops.calls.clear()
    policy._reorder(ops, [0, 1, 2, 3], [1, 1, 1, 1])  # every beam continues its own row: nothing copied
    assert ops.calls == []


@pytest.fixture
def model():
    with fake_model() as m:
        yield m


def test_a_beam_request_holds_num_beams_rows_and_forks_once(model):
    before = model.engine.prefilled_rows
    result = model.generate([[3, 4, 5]], 10, stop_tokens=[], num_beams=4, num_return_sequences=3)
    assert model.engine.prefilled_rows - before == 1  # one prefill
    assert model.scheduler.forks == 3  # the other three beams fork from it
    assert len(result.tokens) == 3 and all(len(t) == 10 for t in result.tokens)
    scores = [r.score for r in result.rows]
    assert scores == sorted(scores, reverse=True)
    assert not model.scheduler.active  # every row freed


def test_beams_share_steps_with_greedy_and_sampling_and_give_what_they_give_alone(model):
    jobs = []
    for i in range(8):
        prompt = [3 + i, 4, 5 + i % 3]
        if i % 3 == 0:
            jobs.append((prompt, dict(num_beams=3, num_return_sequences=2, length_penalty=1.5)))
        elif i % 3 == 1:
            jobs.append((prompt, dict(repetition_penalty=1.2, no_repeat_ngram_size=2)))
        else:
            jobs.append((prompt, dict(sampling=SamplingOptions(do_sample=True, seed=i, temperature=1.5))))

    def run(job):
        prompt, options = job
        result = model.generate([prompt], 12, stop_tokens=[], **options)
        return result.tokens, [r.extras() for r in result.rows]

    alone = [run(job) for job in jobs]
    steps_before = model.scheduler.steps
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, jobs))
    assert together == alone
    assert model.scheduler.steps - steps_before < sum(12 for _ in jobs)  # they shared steps


@pytest.mark.parametrize("options, message", [
    (dict(num_beams=0), "num_beams=0 must be a whole number >= 1"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 must be between 1 and num_beams=2"),
    (dict(num_beams=2, length_penalty=float("nan")), "length_penalty=nan must be a finite number"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping='sometimes' is not True, False or \"never\""),
    (dict(num_beams=2, n=2), "n=2 samples and num_beams > 1 do not combine"),
    (dict(num_beams=2, sampling=SamplingOptions(do_sample=True)), "do_sample with num_beams > 1 is not offered"),
    (dict(num_beams=40), "num_beams=40 needs 2 x 40 candidates from a vocabulary of 32"),
])
def test_bad_beam_options_are_one_line_errors(model, options, message):
    with pytest.raises(GenerateError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        model.generate([[3, 4]], 5, **options)
    assert caught.value.fix


def test_a_beam_streams_no_tokens_and_ends_with_its_hypotheses(model):
    """Which hypothesis wins is known at the end: the stream yields nothing, its result holds them."""
    stream = model.stream([3, 4], 5, stop_tokens=[], num_beams=2, num_return_sequences=2)
    assert list(stream) == []
    assert stream.result.tokens == model.generate([[3, 4]], 5, stop_tokens=[], num_beams=2, num_return_sequences=2).tokens


def test_top_breaks_ties_toward_the_lower_index():
    from edgeseq.runtimes.policies.beam import _top

    assert _top(np.array([1.0, 3.0, 3.0, 2.0], dtype=np.float32), 3).tolist() == [1, 2, 3]
