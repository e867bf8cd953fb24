"""PASTA's model side (models/pasta.py): the masks reach every attention, threads are
isolated as docs/design.md §1 says, and the sequential interpreter stays within its budgets."""

import numpy as np
import pytest
import torch
from edgeseq.models import pasta_task as T
from edgeseq.models.checkpoint import make_config, native_record
from edgeseq.models.pasta import (
    TAGS,
    Budgets,
    PastaCorpus,
    batch_layout,
    generate_sequential,
    masked_logits,
    pasta_loss,
)
from edgeseq.models.tasks import pasta_examples
from edgeseq.runtimes.pasta_layout import pasta_layout


def tiny(stacks: int):
    torch.manual_seed(0)
    config = make_config("stagformer", "tiny", {"vocab_size": T.PastaTask().vocab_size, "max_positions": 192,
                                                "n_layers": 2 * stacks, "n_stacks": stacks})
    return native_record("stagformer").model_class(config).eval()


@pytest.mark.parametrize("stacks", [1, 2])
def test_causal_masks_through_the_pasta_path_equal_the_plain_forward(stacks):
    model = tiny(stacks)
    ids = torch.randint(3, 40, (2, 12))
    positions = torch.arange(12).expand(2, -1)
    visible = torch.tril(torch.ones(12, 12, dtype=torch.bool)).expand(2, -1, -1)
    with torch.no_grad():
        plain, *_ = model(ids, positions, torch.ones_like(ids))
        pasta = masked_logits(model, ids, positions, visible)
    torch.testing.assert_close(pasta, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stacks", [1, 2])
def test_a_chunk_changes_nothing_another_thread_may_not_see(stacks):
    """Rewrite chunk 0's values: chunk 1 and the main thread before the sync are unchanged;
    the sync and what follows it do change."""
    model = tiny(stacks)
    e = pasta_examples(1, seed=21, k=2)[0]
    doc = e.prompt + e.spliced
    other = list(doc)
    start = len(e.prompt) + 6  # chunk 0's <async>
    for i in range(start + 1, start + len(e.chunks[0]) - 1):
        other[i] = T.FIRST_VALUE + (other[i] - T.FIRST_VALUE + 3) % 8
    ids, positions, _, visible = batch_layout([doc, other], [len(e.prompt)] * 2)
    with torch.no_grad():
        logits = masked_logits(model, ids, positions, visible)
    chunk1 = start + len(e.chunks[0]) + 6
    sync = doc.index(T.SYNC)
    unchanged = list(range(len(e.prompt))) + list(range(start + len(e.chunks[0]), sync))
    torch.testing.assert_close(logits[0, unchanged], logits[1, unchanged], rtol=1e-5, atol=1e-5)
    assert chunk1 in unchanged
    assert not torch.allclose(logits[0, sync:], logits[1, sync:], atol=1e-4)


def test_the_loss_is_finite_and_trains():
    model = tiny(1).train()
    corpus = PastaCorpus()
    ids, extra = (torch.from_numpy(a) for a in corpus.sample(8, 0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = pasta_loss(model, ids, extra)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(first) and loss.item() < first * 0.8


def test_the_sequential_interpreter_keeps_its_budgets():
    model = tiny(1)
    budgets = Budgets(max_live_threads=2, max_chunk_tokens=5, max_tokens=40)
    for e in pasta_examples(5, seed=22):
        out = generate_sequential(model, e.prompt, budgets)
        assert len(out) <= budgets.max_tokens
        assert out.count(T.ASYNC) <= out.count(T.CLOSE)


@pytest.mark.parametrize("stacks", [1, 2])
def test_every_interpreted_token_is_the_argmax_after_its_own_threads_last_token(stacks):
    """Replay the interpreter's output under the layout: each token it chose is the argmax
    of the logits at the previous token of the same thread (the main thread goes on from
    its promise, not from the chunk spliced before it). Forced tokens are skipped: a
    chunk's <async>, and a </async> that closed a chunk at its budget."""
    model = tiny(stacks)
    for e in pasta_examples(2, seed=23):
        prompt = e.prompt
        doc = prompt + e.spliced[:6]  # start inside the answer: after promise 1's `/>`
        out = generate_sequential(model, prompt, Budgets(max_chunk_tokens=4, max_tokens=16), prefix=e.spliced[:6])
        assert out[:6] == e.spliced[:6]
        full = prompt + out
        ids, positions, _, visible = batch_layout([full], [len(prompt)], partial=True)
        with torch.no_grad():
            chosen = masked_logits(model, ids, positions, visible)[0].argmax(-1).tolist()
        thread = pasta_layout(full, len(prompt), TAGS, partial=True).thread.tolist()
        for i in range(len(doc), len(full)):
            earlier = [j for j in range(i) if thread[j] == thread[i]]
            if full[i] == T.ASYNC or not earlier or (full[i] == T.END_ASYNC and thread[i] >= 0
                                                    and i - earlier[0] + 1 >= 4):
                continue
            assert full[i] == chosen[earlier[-1]], (i, full[i], chosen[earlier[-1]])
