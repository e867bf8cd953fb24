"""PASTA's masks, positions and targets (runtimes/pasta_layout.py) on task documents."""

import numpy as np
import pytest
from edgeseq.models import pasta_task as T
from edgeseq.models.tasks import pasta_examples
from edgeseq.runtimes.pasta_layout import MAIN, LayoutError, pasta_layout

TAGS = T.TAGS


def layout_of(example):
    return pasta_layout(example.prompt + example.spliced, len(example.prompt), TAGS)


def test_two_queries_by_hand():
    e = pasta_examples(1, seed=11, k=2)[0]
    e.promised = [len(c) for c in e.chunks]  # true lengths
    lay = layout_of(e)
    P = len(e.prompt)
    c0, c1 = len(e.chunks[0]), len(e.chunks[1])
    p0_end = P + 5  # the promise's `/>`
    chunk0 = range(p0_end + 1, p0_end + 1 + c0)
    p1 = range(chunk0[-1] + 1, chunk0[-1] + 7)
    chunk1 = range(p1[-1] + 1, p1[-1] + 1 + c1)
    sync = chunk1[-1] + 1
    assert list(lay.thread[list(chunk0)]) == [0] * c0 and list(lay.thread[list(chunk1)]) == [1] * c1
    assert (lay.thread[:P] == MAIN).all() and lay.thread[sync] == MAIN
    # positions: the chunk right after its promise; the main thread resumes after N
    assert list(lay.positions[:P + 6]) == list(range(P + 6))
    assert list(lay.positions[list(chunk0)]) == list(range(P + 6, P + 6 + c0))
    assert lay.positions[p1[0]] == P + 6 + c0
    assert lay.positions[sync] == lay.positions[chunk1[0]] + c1
    # masks: chunk 1 sees promise 0 and 1 but not chunk 0; promise 1 does not see chunk 0
    v = lay.visible
    assert v[chunk1[0], p0_end] and v[chunk1[0], p1[-1]] and not v[chunk1[0], chunk0[0]]
    assert not v[p1[0], chunk0[0]] and v[p1[0], p0_end]
    assert not v[chunk0[-1], p1[0]]  # nothing after the chunk's start in the main thread
    assert v[sync, chunk0[0]] and v[sync, chunk1[-1]] and v[sync + 1, chunk0[2]]
    # targets: each token's next in its own thread; `<async>` is never a target
    assert lay.targets[p0_end] == T.PROMISE  # the main thread goes on with promise 1
    assert lay.targets[chunk0[0]] == e.chunks[0][1] and lay.targets[chunk0[-1]] == -1
    assert lay.targets[P - 1] == T.PROMISE and (lay.targets[: P - 1] == -1).all()
    assert T.ASYNC not in lay.targets.tolist()


def test_positions_follow_the_promised_length_when_it_is_off():
    e = pasta_examples(1, seed=12, k=1)[0]
    e.promised = [len(e.chunks[0]) + 2]  # over-promised
    lay = layout_of(e)
    P, c = len(e.prompt), len(e.chunks[0])
    sync = P + 6 + c
    assert lay.positions[sync] == (P + 5) + e.promised[0] + 1
    e.promised = [2]  # under-promised: the chunk keeps counting, the main thread overlaps it
    lay = layout_of(e)
    assert lay.positions[P + 6 + c - 1] == P + 5 + c and lay.positions[sync] == P + 5 + 3


def test_every_document_is_causal_and_each_thread_sees_itself():
    for e in pasta_examples(200, seed=13):
        lay = layout_of(e)
        v = lay.visible
        assert not np.triu(v, 1).any() and np.diag(v).all()
        final = len(v) - 1  # eos sees everything
        assert v[final].all()


@pytest.mark.parametrize("damage", [
    lambda s: [t for t in s if t != T.END_ASYNC],
    lambda s: [t for t in s if t != T.ASYNC],
    lambda s: [T.ASYNC] + s,
    lambda s: [t for t in s if t != T.TOKENS],
])
def test_malformed_documents_are_layout_errors(damage):
    e = pasta_examples(1, seed=14, k=2)[0]
    with pytest.raises(LayoutError):
        pasta_layout(e.prompt + damage(list(e.spliced)), len(e.prompt), TAGS)
