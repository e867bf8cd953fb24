"""The runtime engine and scheduler: continuous batching is invisible in results, streaming,
cancellation, fork/splice/release on the cache manager, faults, deadlines, limits, close."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ALL_ON, wait_until
from edgeseq.runtimes import SamplingOptions, load, read_artifact
from edgeseq.runtimes.backend import make_backend
from edgeseq.runtimes.engine import Engine
from edgeseq.runtimes.requests import Row

from edgeseq.errors import GenerateError

CASES = {
    "red": dict(family="red", **ALL_ON),
    "nash-t5": dict(family="nash", variant="t5-v1", sparsity=0.5),
    "nash-bart": dict(family="nash", variant="bart", sparsity=0.5),
    "stagformer-split": dict(family="stagformer"),
    "stagformer-unsplit": dict(family="stagformer", split=False),
}
CLIENTS = 16


def requests(vocab: int, count: int = CLIENTS, seed: int = 0) -> list[tuple[list[int], int, SamplingOptions, list | None]]:
    """Prompts of different lengths, different max_new_tokens, greedy and seeded sampling,
    with and without stop tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        prompt = rng.integers(3, vocab, size=int(rng.integers(1, 24))).tolist()
        sampling = SamplingOptions(do_sample=True, temperature=1.2, top_k=8, seed=100 + i) if i % 2 else SamplingOptions()
        out.append((prompt, int(rng.integers(2, 24)), sampling, [] if i % 3 else None))
    return out


def alone_and_together(model, reqs):
    call = lambda r: model.generate([r[0]], r[1], stop_tokens=r[3], sampling=r[2]).tokens[0]  # noqa: E731
    alone = [call(r) for r in reqs]
    barrier = threading.Barrier(len(reqs))

    def at_once(r):
        barrier.wait(timeout=60)
        return call(r)

    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(at_once, reqs))
    return alone, together


@pytest.mark.parametrize("case", CASES)
def test_concurrent_generate_gives_each_call_its_own_tokens(artifacts, case):
    _, art = artifacts.get(**CASES[case])
    # max_batch below the client count: requests also wait in the queue and join mid-flight
    with load(art, max_batch=6) as model:
        reqs = requests(model.config["vocab_size"])
        alone, together = alone_and_together(model, reqs)
        assert together == alone
        assert model.scheduler.rows_stepped > model.scheduler.steps  # rows did share steps


def test_a_batch_call_equals_its_rows_alone(artifacts):
    _, art = artifacts.get(family="stagformer")
    with load(art) as model:
        rows = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
        batch = model.generate(rows, 12, stop_tokens=[]).tokens
        assert batch == [model.generate([r], 12, stop_tokens=[]).tokens[0] for r in rows]


def test_stream_yields_generates_tokens(artifacts):
    _, art = artifacts.get(**ALL_ON)
    with load(art) as model:
        for prompt, n, sampling, stops in requests(model.config["vocab_size"], 4, seed=1):
            expected = model.generate([prompt], n, stop_tokens=stops, sampling=sampling).tokens[0]
            assert list(model.stream(prompt, n, stop_tokens=stops, sampling=sampling)) == expected


def test_closing_a_stream_cancels_its_row_while_others_run_on(artifacts):
    _, art = artifacts.get(family="stagformer")
    with load(art) as model:
        others = [([5 + i, 6, 7], 40) for i in range(3)]
        expected = [model.generate([p], n, stop_tokens=[]).tokens[0] for p, n in others]
        full = model.generate([[9, 9, 9]], 60, stop_tokens=[]).tokens[0]
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(model.generate, [p], n, []) for p, n in others]
            stream = model.stream([9, 9, 9], 60, stop_tokens=[])
            head = [next(stream) for _ in range(5)]
            stream.close()
            assert [f.result(timeout=60).tokens[0] for f in futures] == expected
        assert head == full[:5]
        wait_until(lambda: not model.scheduler.active)  # the cancelled row left the cache


def test_a_long_request_does_not_leave_later_steps_wide(artifacts):
    """A step attends over every slot of the cache and source axes: once a long request has
    left, short ones shrink both axes again (after SHRINK_PATIENCE narrow steps) and decode
    exactly as on a fresh model."""
    from edgeseq.runtimes.kv_cache import SHRINK_FLOOR, SHRINK_PATIENCE

    short = [([5, 6, 7], 20), ([8, 9, 10, 11], 20)]  # together more steps than the patience
    assert sum(n for _, n in short) > SHRINK_PATIENCE
    # RED: an encoder's source axis; a p = 1 StagFormer: a decoder-only cache
    for case, long_prompt, long_new, axis in ((ALL_ON, list(range(3, 43)) * 2 + list(range(3, 23)), 20, "source"),
                                             (dict(family="stagformer", n_stacks=1, n_layers=2), [5, 6, 7], 140, "cache")):
        _, art = artifacts.get(**case)
        with load(art, prefix_cache_mb=0) as fresh:
            expected = [fresh.generate([p], n, stop_tokens=[]).tokens[0] for p, n in short]
        with load(art, prefix_cache_mb=0) as model:
            cache = model.engine.cache
            model.generate([long_prompt], long_new, stop_tokens=[])
            wide = cache.capacity[axis]
            assert wide > SHRINK_FLOOR, (axis, wide)
            assert [model.generate([p], n, stop_tokens=[]).tokens[0] for p, n in short] == expected
            assert cache.capacity[axis] < wide, axis


# ----- the engine, driven directly ------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_engine(artifacts):
    """A p = 1 decoder-only LM's engine without a scheduler: the test drives every step."""
    _, art = artifacts.get(family="stagformer", n_stacks=1, n_layers=2)
    artifact = read_artifact(art)
    backend = make_backend(artifact, threads=1)
    engine = Engine(artifact, backend, max_rows=8)
    yield engine
    engine.close()
    backend.close()


def seq(prompt: list[int]) -> Row:
    return Row(prompt)


def greedy_steps(engine: Engine, seqs: list[Row], steps: int) -> list[np.ndarray]:
    """Run `steps` batched steps over `seqs` (the engine's active rows); greedy tokens."""
    out = []
    for _ in range(steps):
        logits = engine.step(seqs)
        out.append(logits)
        for s, token in zip(seqs, logits.argmax(-1).tolist()):
            s.next_token = token
    return out


def test_fork_continues_exactly_like_its_parent(lm_engine):
    parent = seq([5, 6, 7, 8])
    first = lm_engine.admit([parent])[0]
    parent.next_token = int(first.argmax())
    greedy_steps(lm_engine, [parent], 3)
    child = seq([])
    lm_engine.fork(parent, child)
    assert child.slot == 1 and lm_engine.cache.lengths[1] == lm_engine.cache.lengths[0]
    both = greedy_steps(lm_engine, [parent, child], 4)
    for logits in both:
        np.testing.assert_array_equal(logits[0], logits[1])  # same prefix (copied, not recomputed), same token
    lm_engine.release(child)
    lm_engine.release(parent)
    assert lm_engine.cache.rows == 0


def test_splice_appends_another_rows_cache_segment(lm_engine):
    """Row A holds prompt P; row B holds P + Q. Splicing B's slots for Q onto A makes A's
    next step exactly B's."""
    p, q = [5, 6, 7], [20, 21, 22, 23]
    a, b = seq(p), seq(p + q)
    lm_engine.admit([a])
    lm_engine.admit([b])
    lm_engine.splice(a, b, len(p), len(p + q))
    a.position = b.position
    assert lm_engine.cache.lengths[a.slot] == len(p + q)
    a.next_token = b.next_token = 30
    logits = lm_engine.step([a, b])
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-6)
    for s in (b, a):
        lm_engine.release(s)


def test_release_keeps_the_other_rows_intact(lm_engine):
    prompts = [[5, 6], [7, 8, 9], [10]]
    reference = []
    for p in prompts:  # each alone
        s = seq(p)
        s.next_token = int(lm_engine.admit([s])[0].argmax())
        reference.append([logits[0] for logits in greedy_steps(lm_engine, [s], 6)])
        lm_engine.release(s)
    rows = [seq(p) for p in prompts]
    for s, logits in zip(rows, lm_engine.admit(rows)):
        s.next_token = int(logits.argmax())
    early = greedy_steps(lm_engine, rows, 2)
    lm_engine.release(rows[0])  # the last row moves into slot 0
    assert rows[2].slot == 0 and rows[1].slot == 1
    late = greedy_steps(lm_engine, [rows[2], rows[1]], 4)
    for b in (1, 2):
        got = [e[b] for e in early] + [step[0 if b == 2 else 1] for step in late]
        np.testing.assert_array_equal(np.stack(got), np.stack(reference[b]))
    for s in rows[1:]:
        lm_engine.release(s)


# ----- faults, deadlines, limits, close --------------------------------------------------------
def test_a_failing_stage_fails_its_step_and_the_model_serves_on(artifacts):
    _, art = artifacts.get(family="stagformer")
    with load(art) as model:
        good = model.generate([[5, 6, 7]], 8, stop_tokens=[]).tokens
        real_run = model.backend.run
        calls = {"n": 0}

        def broken(graph, feeds):
            if graph == "stage.0" and calls["n"] == 0:  # stage 0 runs on a worker thread
                calls["n"] += 1
                raise RuntimeError("injected fault")
            return real_run(graph, feeds)

        model.backend.run = broken
        with pytest.raises(GenerateError, match="graph 'stage.0' failed: injected fault"):
            model.generate([[5, 6, 7]], 8, stop_tokens=[])
        assert model.generate([[5, 6, 7]], 8, stop_tokens=[]).tokens == good
        assert not model.scheduler.active


def test_deadline_and_queue_limits_are_clear_errors(artifacts):
    _, art = artifacts.get(**ALL_ON)
    with load(art, max_queue=2) as model:
        with pytest.raises(GenerateError, match="queue is full"):
            model.generate([[5], [6], [7]], 4)
        with pytest.raises(GenerateError, match="deadline passed"):
            model.generate([[5, 6]], 100, stop_tokens=[], timeout=1e-4)
        assert len(model.generate([[5, 6]], 3, stop_tokens=[]).tokens[0]) == 3  # still serving
    with pytest.raises(GenerateError, match="stream takes one prompt"):
        model.stream([[5], [6]])


def test_close_stops_every_thread_and_refuses_new_work(artifacts):
    _, art = artifacts.get(family="stagformer")
    before = {t.ident for t in threading.enumerate()}
    model = load(art)
    model.generate([[5, 6]], 4)
    ours = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("edgeseq")]
    assert {t.name for t in ours} >= {"edgeseq-scheduler", "edgeseq-stage.0"}
    model.close()
    assert not [t for t in ours if t.is_alive()]
    with pytest.raises(GenerateError, match="closed"):
        model.generate([[5, 6]], 4)


@pytest.mark.parametrize("case", ["red", "nash-t5"])
def test_n_samples_equal_repeated_prompts_with_one_prefill(artifacts, case):
    _, art = artifacts.get(**CASES[case])
    sampling = SamplingOptions(do_sample=True, temperature=1.2, top_k=8, seed=5)
    with load(art) as model:
        before = model.engine.prefilled_rows
        n4 = model.generate([[5, 6, 7]], 10, stop_tokens=[], sampling=sampling, n=4)
        assert model.engine.prefilled_rows - before == 1  # one prefill (or encoder run), three forks
        assert n4.tokens == model.generate([[5, 6, 7]] * 4, 10, stop_tokens=[], sampling=sampling).tokens
        assert len({tuple(t) for t in n4.tokens}) > 1
        with pytest.raises(GenerateError, match="option 'budgets' is not one"):
            model.generate([[5, 6, 7]], 4, budgets=None)
