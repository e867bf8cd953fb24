"""PASTA parity: the compiled scheduler against the PyTorch model under PASTA's masks.

Teacher-forced: task documents (k = 1..4 queries) are fed through the runtime's
scheduler, which forks, steps and splices rows exactly as when it decodes, with every
token given instead of chosen; the logits that chose each answer token must match the
PyTorch model's masked whole-document pass (models/pasta.py `masked_logits`) at that
token's predecessor in its own thread, judged by the precision's bounds
(edgeseq/quality.py). Greedy: the runtime's parallel schedule against the torch
sequential interpreter, token for token (at fp32; int8 reports it).
"""

from typing import Any

import numpy as np
import torch

from edgeseq.models.pasta import batch_layout, generate_sequential, masked_logits
from edgeseq.models.pasta_task import TAGS, pasta_examples_per_k
from edgeseq.parity import float64_copy, logit_errors, reference_error
from edgeseq.quality import QualityBounds, as_bounds, calibrated, judged
from edgeseq.runtimes.pasta_lang import Budgets
from edgeseq.runtimes.pasta_layout import pasta_layout

PARITY_SEED = 4242


def predecessors(ids: list[int], prompt_length: int, partial: bool = False) -> list[int | None]:
    """For each answer token, the index of the previous token of its own thread (None for
    a chunk's forced `<async>`): the position whose logits chose it."""
    thread = pasta_layout(ids, prompt_length, TAGS, partial=partial).thread
    last: dict[int, int] = {-1: prompt_length - 1}
    out = []
    for i in range(prompt_length, len(ids)):
        t = int(thread[i])
        out.append(last.get(t))
        last[t] = i
    return out


def pasta_parity(runtime, model: torch.nn.Module, bounds: QualityBounds | float, steps: int = 64,
                 seed: int = PARITY_SEED, count: int = 8) -> dict[str, Any]:
    bounds = as_bounds(bounds)
    examples = pasta_examples_per_k(count // 4, seed)
    prompts, answers = [e.prompt for e in examples], [e.spliced for e in examples]
    budgets = Budgets(max_chunk_tokens=64, max_tokens=max(len(a) for a in answers) + 1)
    forced = runtime.generate(prompts, budgets=budgets, forced=answers, return_logits=True).rows
    ids, positions, _, visible = batch_layout([p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
    with torch.no_grad():
        reference = masked_logits(model, ids, positions, visible).numpy()
        reference64 = masked_logits(float64_copy(model), ids, positions, visible).numpy()
    ours, theirs, theirs64 = [], [], []
    for b, (prompt, result) in enumerate(zip(prompts, forced)):
        if result.tokens != answers[b]:
            raise AssertionError(f"teacher forcing changed document {b}: {result.outcome}")
        for logits, at in zip(result.logits, predecessors(prompt + answers[b], len(prompt))):
            if at is not None:
                ours.append(logits)
                theirs.append(reference[b, at])
                theirs64.append(reference64[b, at])
    errors = logit_errors(np.stack(theirs), np.stack(ours))
    rounding = reference_error(np.stack(theirs), np.stack(theirs64))
    atol = calibrated(bounds, rounding).atol
    agreement, ties = 1.0, []
    for prompt, result in zip(prompts, runtime.generate(prompts).rows):
        ours, reference_tokens = result.tokens, generate_sequential(model, prompt)
        if ours == reference_tokens:
            continue
        first = next((i for i, (a, b) in enumerate(zip(ours, reference_tokens)) if a != b), None)
        agreement = min(agreement, (first or 0) / max(len(reference_tokens), 1))
        ties.append(first is not None and near_tie(model, prompt, reference_tokens, first, atol))
    report = judged(bounds, errors["max_abs_logit_diff"], errors["mean_abs_logit_diff"], errors["top1_agreement"],
                    agreement, all(ties), rounding)
    return {**report, "steps": sum(len(a) for a in answers),
            "cases": [{"documents": len(examples), "teacher_forced_tokens": sum(len(a) for a in answers),
                       "greedy_disagreements": len(ties), "disagreement_is_near_tie": all(ties) if ties else None}]}


def near_tie(model, prompt: list[int], answer: list[int], at: int, atol: float) -> bool:
    """Whether PyTorch's top-2 margin was within 2*atol where the greedy outputs first
    differ (a tie float rounding may break either way; the threads differ from there)."""
    chooser = predecessors(prompt + answer, len(prompt), partial=True)[at]
    if chooser is None:
        return False
    ids, positions, _, visible = batch_layout([prompt + answer], [len(prompt)], partial=True)
    with torch.no_grad():
        top2 = np.sort(masked_logits(model, ids, positions, visible)[0, chooser].numpy())[-2:]
    return bool(top2[1] - top2[0] <= 2 * atol)
