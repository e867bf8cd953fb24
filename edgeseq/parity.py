"""Accuracy parity between a compiled artifact and its PyTorch model.

One helper for every family: teacher-forced logits compared step by step (max and mean
abs difference, top-1 agreement), and greedy tokens decoded independently by both
(agreement over the steps). The precision's bounds (edgeseq/quality.py) judge them: at
fp32 a greedy disagreement is excused only when PyTorch itself was at a near-tie (top-2
margin within 2*atol) at the first differing step; int8 declares error bounds instead.
"""

import copy
from typing import Any

import numpy as np
import torch

from edgeseq.beam_parity import beam_parity, hf_beams, judge, torch_beams
from edgeseq.quality import QualityBounds, as_bounds, calibrated, judged


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same model in float64: the truth its float32 rounding is measured against."""
    return copy.deepcopy(model).double().eval()


def reference_error(logits32: np.ndarray, logits64: np.ndarray) -> float:
    """The reference's own fp32 rounding error on these logits (max abs, against fp64)."""
    return float(np.abs(logits64 - logits32.astype(np.float64)).max())


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


def near_tie_at_first_disagreement(reference_logits: np.ndarray, agree: np.ndarray, atol: float) -> bool | None:
    """None when the tokens agree; else whether PyTorch's top-2 margin at the first differing
    step was within 2*atol (a tie that float rounding may break either way).
    reference_logits: [..., N, V], agree: [..., N]."""
    if agree.all():
        return None
    index = tuple(np.argwhere(~agree)[0])
    top2 = np.sort(reference_logits[index])[-2:]
    return bool(top2[1] - top2[0] <= 2 * atol)


def logit_errors(reference: np.ndarray, ours: np.ndarray) -> dict[str, float]:
    """Max and mean abs difference and top-1 agreement of two [..., V] logit arrays."""
    diff = np.abs(reference - ours)
    return {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "top1_agreement": float((reference.argmax(-1) == ours.argmax(-1)).mean())}


def summarize(reports: list[dict[str, Any]], bounds: QualityBounds | float, steps: int) -> dict[str, Any]:
    """One report from the per-case ones, judged by the precision's bounds calibrated by the
    reference's own rounding error (the largest over the cases)."""
    bounds = as_bounds(bounds)
    errors = [r["reference_fp64_vs_fp32"] for r in reports if r.get("reference_fp64_vs_fp32") is not None]
    report = judged(
        bounds,
        max(r["max_abs_logit_diff"] for r in reports),
        float(np.mean([r["mean_abs_logit_diff"] for r in reports])),
        float(np.mean([r["top1_agreement"] for r in reports])),  # pooled: one short case is noisy
        min(r["greedy_token_agreement"] for r in reports),
        all(r["disagreement_is_near_tie"] in (None, True) for r in reports),
        max(errors) if errors else None,
    )
    return {**report, "steps": steps, "cases": reports}


def default_cases(config: dict[str, Any], steps: int) -> tuple[list[list[int]], int]:
    """Source-length groups (batch 1 for each length, then one mixed batch) and the step count."""
    limit = config["max_positions"]
    steps = min(steps, limit // 2)
    room = limit - steps if config["consecutive_positions"] else limit
    singles = sorted({min(n, room) for n in (1, 7, 32, 64)})
    mixed = [min(n, room) for n in (3, 17, 1, 9)]
    return [[n] for n in singles] + [mixed], steps


def runtime_runs(runtime, steps: int, seed: int, cases: list[list[int]]):
    """For each case (source lengths, one per row): random rows and the runtime's greedy
    decoding of them, with step logits and no stop tokens. Yields (lengths, rows, result)."""
    rng = np.random.default_rng(seed)
    for lengths in cases:
        rows = [rng.integers(3, runtime.config["vocab_size"], size=n).tolist() for n in lengths]
        yield lengths, rows, runtime.generate(rows, max_new_tokens=steps, stop_tokens=[], return_logits=True,
                                               use_generation_defaults=False)


def teacher_forced_parity(
    runtime, reference, bounds: QualityBounds | float, steps: int, seed: int, cases: list[list[int]] | None,
) -> dict[str, Any]:
    """Encoder-decoder parity: `reference(source, mask, decoder_in, steps)` returns the
    teacher-forced logits [B, N, V] for the runtime's own tokens, its own greedy tokens, and
    the same logits from the model in float64."""
    c = runtime.config
    default, steps = default_cases(c, steps)
    reports = []
    for lengths, rows, result in runtime_runs(runtime, steps, seed, cases or default):
        ort_tokens = np.array(result.tokens)  # [B, N]
        ort_logits = np.stack(result.logits, axis=1)  # [B, N, V]
        source, mask = _padded(rows, c["pad_token_id"])
        decoder_in = torch.cat(
            [torch.full((len(rows), 1), c["bos_token_id"]), torch.from_numpy(ort_tokens[:, :-1])], dim=1
        )
        with torch.inference_mode():
            ref_logits, ref_tokens, ref64 = reference(source, mask, decoder_in, steps)
        agree = ref_tokens == ort_tokens
        error = reference_error(ref_logits, ref64)
        atol = calibrated(as_bounds(bounds), error).atol
        reports.append({
            "source_lengths": lengths,
            **logit_errors(ref_logits, ort_logits),
            "reference_fp64_vs_fp32": error,
            "greedy_token_agreement": float(agree.mean()),
            "disagreement_is_near_tie": near_tie_at_first_disagreement(ref_logits, agree, atol),
        })
    return summarize(reports, bounds, steps)


def encoder_decoder_parity(
    runtime, model: torch.nn.Module, bounds: QualityBounds | float, steps: int = 64, seed: int = 0,
    cases: list[list[int]] | None = None,
) -> dict[str, Any]:
    """RED: the runtime against the PyTorch model."""
    model64 = float64_copy(model)

    def reference(source, mask, decoder_in, n):
        logits, _ = model(source, mask, decoder_in)
        logits64, _ = model64(source, mask, decoder_in)
        return logits.numpy(), model.generate_greedy(source, mask, n)[0].numpy(), logits64.numpy()

    def next_logits_for(source):
        def next_logits(histories):
            src = torch.tensor([source] * len(histories))
            return model(src, torch.ones_like(src), torch.tensor(histories))[0][:, -1]
        return next_logits

    report = teacher_forced_parity(runtime, reference, bounds, steps, seed, cases)
    beams = torch_beams(next_logits_for, lambda source: [model.config.bos_token_id], model.config.eos_token_id)
    return judge(report, beam_parity(runtime, beams, report["atol"], seed))


def decoder_only_parity(
    runtime, model: torch.nn.Module, bounds: QualityBounds | float, steps: int = 64, seed: int = 0,
    cases: list[list[int]] | None = None,
) -> dict[str, Any]:
    """StagFormer: the runtime's staggered, cached, left-padded decoding vs PyTorch's
    whole-sequence passes run on each row alone (no cache, no padding)."""
    c = runtime.config
    default, steps = default_cases({**c, "consecutive_positions": True}, steps)  # one position range
    model64 = float64_copy(model)
    reports = []
    for lengths, rows, result in runtime_runs(runtime, steps, seed, cases or default):
        ort_logits = np.stack(result.logits, axis=1)  # [B, N, V]
        refs, agree, ties, error = [], [], [], 0.0
        for b, row in enumerate(rows):
            seq = torch.tensor([row + result.tokens[b][:-1]])
            n = seq.shape[1]
            with torch.inference_mode():
                full, *_ = model(seq, torch.arange(n)[None], torch.ones_like(seq))
                full64, *_ = model64(seq, torch.arange(n)[None], torch.ones_like(seq))
                torch_tokens, _ = model.generate_greedy(torch.tensor([row]), steps)
            ref = full[0, len(row) - 1 :].numpy()  # logits that chose each generated token
            error = max(error, reference_error(ref, full64[0, len(row) - 1 :].numpy()))
            refs.append(ref)
            same = torch_tokens[0].numpy() == np.array(result.tokens[b])
            agree.append(same)
            ties.append(near_tie_at_first_disagreement(ref, same, calibrated(as_bounds(bounds), error).atol))
        disagreeing = [t for t in ties if t is not None]
        reports.append({
            "source_lengths": lengths,
            **logit_errors(np.stack(refs), ort_logits),
            "reference_fp64_vs_fp32": error,
            "greedy_token_agreement": float(np.concatenate(agree).mean()),
            "disagreement_is_near_tie": all(disagreeing) if disagreeing else None,
        })
    report = summarize(reports, bounds, steps)

    def next_logits_for(source):
        def next_logits(histories):
            ids = torch.tensor(histories)
            return model(ids, torch.arange(ids.shape[1])[None].expand_as(ids), torch.ones_like(ids))[0][:, -1]
        return next_logits

    beams = torch_beams(next_logits_for, list, model.config.eos_token_id)
    return judge(report, beam_parity(runtime, beams, report["atol"], seed))


@torch.inference_mode()
def hf_greedy(model, source: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """transformers' own cached greedy decoding, no logits processors: [B, steps] ids."""
    start = model.config.decoder_start_token_id
    token = torch.full((source.shape[0], 1), start, dtype=torch.long)
    encoder_out = model.get_encoder()(input_ids=source, attention_mask=mask)
    past, out = None, []
    for _ in range(steps):
        step = model(encoder_outputs=encoder_out, attention_mask=mask, decoder_input_ids=token,
                     past_key_values=past, use_cache=True)
        past = step.past_key_values
        token = step.logits[:, -1:].argmax(-1)
        out.append(token)
    return torch.cat(out, dim=1)


def hf_parity(
    runtime, model, bounds: QualityBounds | float, steps: int = 64, seed: int = 0,
    cases: list[list[int]] | None = None,
) -> dict[str, Any]:
    """NASH: the runtime against Hugging Face transformers with the masks folded in
    (`model` is exporters.nash.NashExportModel): teacher-forced logits and cached greedy."""
    hf = model.checkpoint.reference()
    hf64 = float64_copy(hf)

    def reference(source, mask, decoder_in, n):
        logits = hf(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_in).logits
        logits64 = hf64(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_in).logits
        return logits.numpy(), hf_greedy(hf, source, mask, n).numpy(), logits64.numpy()

    report = teacher_forced_parity(runtime, reference, bounds, steps, seed, cases)
    return judge(report, beam_parity(runtime, hf_beams(hf), report["atol"], seed))

