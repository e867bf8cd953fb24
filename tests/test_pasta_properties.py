"""Property tests for PASTA-LANG: random and malformed tag streams through the parser and
the scheduler (no exception escapes, nothing hangs, budgets hold, the schedule does not
matter), and random well-formed documents whose runtime masks and positions must equal
training's (the runtime's teacher-forced logits equal PyTorch's under the layout)."""

import time

import numpy as np
import torch
from conftest import declared_atol
from edgeseq.models import pasta_task as T
from edgeseq.models.pasta import batch_layout, masked_logits
from edgeseq.runtimes.pasta_lang import Budgets, Event, Kind, MainParser
from edgeseq.runtimes.pasta_layout import pasta_layout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseq.families.pasta.parity import predecessors

VOCAB = T.PastaTask().vocab_size
TAG_IDS = [T.PROMISE, T.TOPIC, T.TOKENS, T.CLOSE, T.ASYNC, T.END_ASYNC, T.SYNC, T.EOS]
PER_CASE_S = 60  # a case taking longer than this counts as a hang
CASES = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# streams biased towards tags and numbers, so promises, chunks and syncs actually occur
token = st.one_of(st.sampled_from(TAG_IDS), st.integers(T.NUMBER_BASE, T.NUMBER_BASE + T.MAX_NUMBER - 1),
                  st.integers(0, VOCAB - 1))
plain = st.integers(T.FIRST_VALUE, VOCAB - 1)  # never a tag


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(-3, VOCAB + 3), max_size=60))
def test_the_parser_takes_any_stream(stream):
    parser = MainParser(T.TAGS, VOCAB)
    events = [parser.feed(t) for t in stream]
    assert all(isinstance(e, Event) for e in events)
    ends = [i for i, e in enumerate(events) if e.kind in (Kind.END, Kind.MALFORMED)]
    if ends:  # after eos or a malformed token every token is malformed: the thread has stopped
        assert all(e.kind is Kind.MALFORMED for e in events[ends[0] + 1:])
    for i, e in enumerate(events):
        if e.kind is Kind.FORK:
            assert stream[i] == T.CLOSE and 1 <= e.promised <= T.MAX_NUMBER
        if e.kind is Kind.MALFORMED:
            assert e.reason


@CASES
@given(prompt=st.lists(plain, min_size=1, max_size=12), stream=st.lists(token, max_size=50),
       live=st.integers(1, 3), chunk_budget=st.integers(2, 8), total=st.integers(1, 60))
def test_random_streams_through_the_scheduler(pasta_compiled, prompt, stream, live, chunk_budget, total):
    """Any stream, fed as the threads' tokens: no exception, no hang, budgets held, and the
    same output in both schedules."""
    runtime, _ = pasta_compiled
    budgets = Budgets(live, chunk_budget, total)
    outputs = []
    for schedule in ("parallel", "sequential"):
        start = time.monotonic()
        result = runtime.generate([prompt + [T.BOS]], budgets=budgets, forced=[stream], schedule=schedule).rows[0]
        assert time.monotonic() - start < PER_CASE_S
        assert len(result.tokens) <= total and result.outcome
        assert all(c["tokens"] <= chunk_budget for c in result.threads[1:])
        outputs.append(result.tokens)
    assert outputs[0] == outputs[1]


@st.composite
def documents(draw):
    """A random well-formed answer: k promises with random N, chunks of random content,
    main-thread text between them, syncs at random places (a later chunk then sees the
    earlier ones), the final values and eos."""
    k = draw(st.integers(1, 4))
    answer = []
    for i in range(k):
        answer += draw(st.lists(plain, max_size=2))
        answer += [T.PROMISE, T.TOPIC, T.topic(i), T.TOKENS, T.number(draw(st.integers(1, T.MAX_NUMBER))), T.CLOSE]
        answer += [T.ASYNC, *draw(st.lists(plain, min_size=1, max_size=8)), T.END_ASYNC]
        if draw(st.booleans()):
            answer.append(T.SYNC)
    answer += [T.SYNC, *draw(st.lists(plain, min_size=1, max_size=4)), T.EOS]
    prompt = draw(st.lists(plain, min_size=1, max_size=20)) + [T.BOS]
    return prompt, answer


@CASES
@given(doc=documents(), live=st.integers(1, 4))
def test_runtime_masks_and_positions_equal_trainings(pasta_compiled, doc, live):
    runtime, model = pasta_compiled
    prompt, answer = doc
    pasta_layout(prompt + answer, len(prompt), T.TAGS)  # well-formed by construction
    result = runtime.generate([prompt], budgets=Budgets(live, 64, 200), forced=[answer], return_logits=True,
                              schedule="parallel").rows[0]
    assert result.tokens == answer and result.outcome == "eos"
    ids, positions, _, visible = batch_layout([prompt + answer], [len(prompt)])
    with torch.no_grad():
        reference = masked_logits(model, ids, positions, visible)[0].numpy()
    for logits, at in zip(result.logits, predecessors(prompt + answer, len(prompt))):
        if at is not None:
            np.testing.assert_allclose(logits, reference[at], atol=declared_atol("pasta"), rtol=0)
