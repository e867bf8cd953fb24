"""PASTA: the decoder-only model (StagFormer; p = 1 is the plain LM) with PASTA's masks.

Training and the torch reference decode with the layout of runtimes/pasta_layout.py: a
chunk sees the main thread up to its promise and itself, the main thread sees chunks only
from the sync on, positions restart after each promise. Under StagFormer (p >= 2) stack
k cross-attends to stack k-1's outputs at the tokens its query may see, itself excluded
(the stagger: a token reads the previous stack's output of earlier tokens only).

`generate_sequential` is the sequential interpreter: one thread at a time, each chunk
decoded right after its promise (so the output is already spliced), with the budgets of
runtimes/pasta_lang.py; the parallel runtime must reproduce it token for token.
"""

import numpy as np
import torch
import torch.nn.functional as F
from edgeseq.runtimes.pasta_lang import Budgets, Kind, MainParser, chunk_token
from edgeseq.runtimes.pasta_layout import pasta_layout

from . import pasta_task as T
from .pasta_task import TAGS, PastaExample, PastaTask, pasta_check, pasta_examples

# PASTA's model is a StagFormer (p = 1: the plain LM) over the PASTA task's vocabulary,
# trained with PASTA's masks; the recipe of scripts/train_pasta.py
PRESETS = {"tiny": dict(vocab_size=PastaTask().vocab_size, d_model=128, n_heads=4, n_layers=4, n_stacks=1,
                        d_ff=512, max_positions=192)}


def batch_layout(docs: list[list[int]], prompt_lengths: list[int], partial: bool = False):
    """Padded numpy arrays for documents: ids, positions, targets [B, T] and visible [B, T, T]."""
    width = max(len(d) for d in docs)
    ids = np.full((len(docs), width), T.PAD, dtype=np.int64)
    positions = np.zeros_like(ids)
    targets = np.full_like(ids, -1)
    visible = np.zeros((len(docs), width, width), dtype=bool)
    visible[:, np.arange(width), np.arange(width)] = True  # padding sees itself: no empty softmax
    for b, (doc, p) in enumerate(zip(docs, prompt_lengths)):
        lay = pasta_layout(doc, p, TAGS, partial=partial)
        n = len(doc)
        ids[b, :n], positions[b, :n], targets[b, :n] = doc, lay.positions, lay.targets
        visible[b, :n, :n] = lay.visible
    return ids, positions, targets, visible


def masked_logits(model, ids, positions, visible) -> torch.Tensor:
    """Logits [B, T, V] of a StagFormer model under PASTA's masks."""
    ids, positions, visible = (torch.as_tensor(a) for a in (ids, positions, visible))
    n = ids.shape[1]
    self_allowed = visible[:, None]
    # cross: stack k-1's outputs at slots 0..n-2 that the query sees, itself excluded
    earlier = visible & ~torch.eye(n, dtype=torch.bool)[None]
    null = torch.ones(ids.shape[0], 1, n, 1, dtype=torch.bool)
    cross_allowed = torch.cat([null, earlier[:, None, :, : n - 1]], dim=-1)
    logits, *_ = model(ids, positions, torch.ones_like(ids), allowed=(self_allowed, cross_allowed))
    return logits


class PastaCorpus:
    """What `models.training.train` samples from: documents with their layouts packed as
    (ids [B, T], extra [B, T, 2 + T]: positions, targets, visible)."""

    def __init__(self, task: PastaTask | None = None):
        self.task = task or PastaTask()

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def sample(self, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        examples = pasta_examples(batch, seed, self.task)
        ids, positions, targets, visible = batch_layout([e.prompt + e.spliced for e in examples],
                                                        [len(e.prompt) for e in examples])
        return ids, np.concatenate([positions[..., None], targets[..., None], visible.astype(np.int64)], axis=-1)


def pasta_loss(model, ids: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    positions, targets, visible = extra[..., 0], extra[..., 1], extra[..., 2:].bool()
    logits = masked_logits(model, ids, positions, visible)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


def teacher_forced_accuracy(model, examples: list[PastaExample]) -> float:
    """Fraction of examples whose every target token is the argmax (a cheap validation)."""
    ids, positions, targets, visible = batch_layout([e.prompt + e.spliced for e in examples],
                                                    [len(e.prompt) for e in examples])
    with torch.no_grad():
        predicted = masked_logits(model, ids, positions, visible).argmax(-1).numpy()
    scored = targets >= 0
    return float(np.mean([(predicted[b][scored[b]] == targets[b][scored[b]]).all() for b in range(len(examples))]))


@torch.no_grad()
def generate_sequential(model, prompt: list[int], budgets: Budgets | None = None, prefix: list[int] = ()) -> list[int]:
    """The sequential interpreter (greedy): the spliced answer, eos included when reached.

    One thread at a time, in the spliced document's order: the main thread until a promise
    closes, then that chunk to its `</async>`, then the main thread again, which goes on
    from its own last token (it never sees a chunk before the sync). Every token is read by
    runtimes/pasta_lang.py's rules (malformed streams, chunk budgets, the answer's length
    and position budgets). `prefix`: the answer's first tokens, given instead of decoded."""
    budgets = budgets or Budgets()
    start, doc, forced = len(prompt), list(prompt), list(prefix)
    parser = MainParser(TAGS, model.config.vocab_size)
    main_position, last_main = start, start - 1
    chunk: int | None = None  # tokens of the open chunk so far, None in the main thread
    chunk_position = 0
    while len(doc) - start < budgets.max_tokens:
        if (chunk_position if chunk is not None else main_position) >= model.config.max_positions:
            break
        if chunk == 0:
            token = forced.pop(0) if forced else T.ASYNC  # a chunk always opens with <async>
        else:
            if forced:
                token = forced.pop(0)
            else:
                ids, positions, _, visible = batch_layout([doc], [start], partial=True)
                at = len(doc) - 1 if chunk is not None else last_main
                token = int(masked_logits(model, ids, positions, visible)[0, at].argmax())
            if chunk is not None:
                token = chunk_token(TAGS, chunk, token, budgets.max_chunk_tokens)
        doc.append(token)
        if chunk is not None:
            chunk, chunk_position = chunk + 1, chunk_position + 1
            if token == T.END_ASYNC and chunk > 1:
                chunk = None
            continue
        main_position, last_main = main_position + 1, len(doc) - 1
        event = parser.feed(token)
        if event.kind is Kind.FORK:
            chunk, chunk_position = 0, main_position
            main_position += event.promised  # the chunk takes p+1 .. p+N
        elif event.kind in (Kind.END, Kind.MALFORMED):
            break
    return doc[start:]


def held_out_report(model, examples: list[PastaExample], budgets: Budgets | None = None) -> dict:
    """Well-formed and correct rates of the torch interpreter over examples, overall and per k."""
    return outputs_report(examples, [generate_sequential(model, e.prompt, budgets) for e in examples])


def outputs_report(examples: list[PastaExample], outputs: list[list[int]]) -> dict:
    """`check_report` of `pasta_check` on each example's output (any decoder's)."""
    per_k: dict[int, list[dict]] = {}
    for e, output in zip(examples, outputs):
        per_k.setdefault(len(e.queries), []).append(pasta_check(e, output))
    return check_report(per_k)


def check_report(per_k: dict[int, list[dict]]) -> dict:
    """Rates from `pasta_check` results grouped by k: well-formed and all-correct per
    example, and `queries`: the fraction of queries answered right."""
    def rates(groups: dict[int, list[dict]]) -> dict:
        every = [r for v in groups.values() for r in v]
        asked = sum(k * len(v) for k, v in groups.items())
        return {"n": len(every), "well_formed": float(np.mean([r["well_formed"] for r in every])),
                "correct": float(np.mean([r["correct"] for r in every])),
                "queries": sum(r["queries_correct"] for r in every) / asked}
    return {"per_k": {k: rates({k: v}) for k, v in sorted(per_k.items())}, **rates(per_k)}
