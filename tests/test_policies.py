"""Decoding policies against a fake numpy backend (tests/fake_model.py): the real scheduler,
engine and cache manager, milliseconds per test. Forks copy the prefix, a fork that finds
no free row waits for one, a sync splices, released rows are reused, cancelling a request
frees every row it holds, and a fault in a step with forked rows fails that request alone."""

import threading
import time

import pytest
from conftest import wait_until
from edgeseq.models import pasta_task as T
from edgeseq.models.pasta_task import pasta_examples
from edgeseq.runtimes import SamplingOptions
from edgeseq.runtimes.pasta_lang import Budgets
from fake_model import fake_model

from edgeseq.errors import GenerateError

SAMPLED = SamplingOptions(do_sample=True, temperature=2.0, seed=11)
PASTA = {"pasta": {"tags": T.TAGS.as_dict()}}


@pytest.fixture
def model():
    with fake_model() as m:
        yield m


def test_greedy_follows_the_fake_models_rule(model):
    """The fake model's own arithmetic, step by step: the harness itself is right."""
    prompt = [5, 6, 7]
    tokens, seen = [], sum(prompt)
    for position in range(len(prompt) - 1, len(prompt) + 5):
        tokens.append((7 * seen + 3 * position) % 32)
        seen += tokens[-1]
    assert model.generate([prompt], 6, stop_tokens=[]).tokens[0] == tokens


def test_samples_fork_one_prefill_and_equal_separate_rows(model):
    prompt = [3, 4, 5, 6]
    before = model.engine.prefilled_rows
    n4 = model.generate([prompt], 12, stop_tokens=[], sampling=SAMPLED, n=4)
    assert model.engine.prefilled_rows - before == 1  # one prefill, three forks
    assert model.scheduler.forks == 3
    separate = model.generate([prompt] * 4, 12, stop_tokens=[], sampling=SAMPLED)
    assert n4.tokens == separate.tokens and len({tuple(t) for t in n4.tokens}) > 1
    two = model.generate([prompt, [9, 9]], 12, stop_tokens=[], sampling=SAMPLED, n=2)
    assert two.tokens == model.generate([prompt, prompt, [9, 9], [9, 9]], 12, stop_tokens=[], sampling=SAMPLED).tokens
    assert [r.finish_reason for r in n4.rows] == ["length"] * 4
    assert not model.scheduler.active


def test_a_request_waits_until_its_rows_are_free():
    """max_batch 4: a stream holds one row, so an n = 4 request waits in the queue until the
    stream's row is freed; the freed rows are reused and the result is the one made alone."""
    with fake_model(max_batch=4) as model:
        alone_n = model.generate([[3, 4]], 6, stop_tokens=[], sampling=SAMPLED, n=4).tokens
        stream = model.stream([8, 8], 1_000_000, stop_tokens=[])
        head = [next(stream) for _ in range(3)]
        results = {}
        waiter = threading.Thread(target=lambda: results.update(
            n=model.generate([[3, 4]], 6, stop_tokens=[], sampling=SAMPLED, n=4).tokens))
        waiter.start()
        wait_until(lambda: model.scheduler.queue_depth == 1)
        time.sleep(0.05)
        assert model.scheduler.queue_depth == 1 and "n" not in results  # still waiting for rows
        stream.close()
        waiter.join(10)
        assert results["n"] == alone_n and head == model.generate([[8, 8]], 3, stop_tokens=[]).tokens[0]
        wait_until(lambda: not model.scheduler.active)
        assert model.scheduler._committed() == 0


def test_more_samples_than_rows_is_refused_at_once():
    with fake_model(max_batch=2) as model:
        with pytest.raises(GenerateError, match="a request needs 3 cache rows; this model takes 2"):
            model.generate([[3, 4]], 4, n=3)
        with pytest.raises(GenerateError, match="n=0 must be a whole number"):
            model.generate([[3, 4]], 4, n=0)
        with pytest.raises(GenerateError, match="option 'budgets' is not one this artifact's decoding"):
            model.generate([[3, 4]], 4, budgets=Budgets())


def test_cancelling_a_request_frees_every_row_it_holds(model):
    others = model.generate([[5, 5]], 40, stop_tokens=[]).tokens[0]
    results = {}
    other = threading.Thread(target=lambda: results.update(t=model.generate([[5, 5]], 40, stop_tokens=[]).tokens[0]))
    stream = model.stream([3, 4], 1_000_000, stop_tokens=[], sampling=SAMPLED, n=3)
    other.start()
    events = [stream.next_event() for _ in range(12)]
    assert {e.row for e in events} == {0, 1, 2}  # the three rows' tokens interleave
    assert model.scheduler.active  # while it runs, it holds its rows
    stream.close()
    other.join(10)
    wait_until(lambda: not model.scheduler.active)
    assert results["t"] == others and not model.scheduler.running


def test_a_fault_in_a_step_with_forked_rows_fails_that_request_and_the_model_serves_on(model):
    good = model.generate([[3, 4]], 8, stop_tokens=[], sampling=SAMPLED, n=3).tokens
    stream = model.stream([3, 4], 8, stop_tokens=[], sampling=SAMPLED, n=3)
    model.backend.fail_next = True
    with pytest.raises(GenerateError, match="graph 'step' failed: injected fault"):
        list(stream)
    assert not model.scheduler.active  # every forked row went with it
    assert model.generate([[3, 4]], 8, stop_tokens=[], sampling=SAMPLED, n=3).tokens == good


def test_deadline_of_a_request_with_several_rows(model):
    with pytest.raises(GenerateError, match="deadline passed"):
        model.generate([[3, 4]], 100_000 // 100, stop_tokens=[], n=3, timeout=1e-3)
    wait_until(lambda: not model.scheduler.active)


# ----- the pasta policy on the fake model (teacher-forced: the tokens are given) ----------------
def test_pasta_forks_wait_for_a_row_and_splice_at_the_sync():
    """max_batch 2: the main thread and one chunk at most, so a k = 3 document's later chunks
    wait for a row (forked from their promise's snapshot when one frees); every chunk is
    spliced onto the main row at the sync; the answer is the forced one."""
    e = next(x for x in pasta_examples(20, seed=5) if len(x.chunks) >= 3)
    with fake_model(max_batch=2, vocab=T.PastaTask().vocab_size, extra=PASTA) as model:
        wide = Budgets(max_live_threads=4, max_chunk_tokens=64, max_tokens=200)
        row = model.generate([e.prompt], budgets=wide, forced=[e.spliced], return_logits=True).rows[0]
        assert row.tokens == e.spliced and row.outcome == "eos"
        # the step that chose eos saw every token before it: the prompt, the main thread's and
        # every spliced chunk's (the fake model's peak is 7 * their sum + 3 * the fed position)
        events = list(model.stream(e.prompt, budgets=wide, forced=[e.spliced]).events())
        fed = [ev for ev in events if ev.thread == -1][-2]  # the main token fed before eos was chosen
        seen = sum(e.prompt) + sum(e.spliced[:-1])
        assert int(row.logits[-1].argmax()) == (7 * seen + 3 * fed.position) % model.config["vocab_size"]
        chunks = row.threads[1:]
        assert len(chunks) == len(e.chunks) and model.scheduler.splices == 2 * len(e.chunks)  # two runs
        assert any(c["forked_step"] > c["promised_step"] for c in chunks)  # one waited for a free row
        assert model.scheduler.rows_stepped <= 2 * model.scheduler.steps
        assert not model.scheduler.active


def test_two_pasta_documents_share_steps():
    docs = pasta_examples(2, seed=6, k=2)
    with fake_model(max_batch=8, vocab=T.PastaTask().vocab_size, extra=PASTA) as model:
        wide = Budgets(max_chunk_tokens=64, max_tokens=200)
        alone = [model.generate([d.prompt], budgets=wide, forced=[d.spliced]).rows[0].tokens for d in docs]
        steps = model.scheduler.steps
        both = model.generate([d.prompt for d in docs], budgets=wide, forced=[d.spliced for d in docs]).tokens
        assert both == alone == [d.spliced for d in docs]
        assert model.scheduler.steps - steps < steps  # fewer steps together than one after another
