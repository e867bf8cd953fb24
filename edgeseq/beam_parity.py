"""Beam-search parity: the artifact's beams against the reference's on a few prompts, in
`edgeseq parity` and the compile check.

The decoding is the artifact's default one where that is a beam search (its checkpoint's
generation config), else `num_beams 4`. The reference is transformers' `generate` (NASH)
or the PyTorch reference beam search over the torch model (models/beam_reference.py: RED,
StagFormer). Per prompt: the returned hypotheses equal and their scores within the bound,
or a divergence, reported with the step where the best hypotheses part and the gap there
between the two paths' running scores (sums of processed log-probabilities). A divergence
whose gap is within what the logits' own error allows over that many steps is a near-tie:
reported, not a failure; any other fails parity. Where the reference itself cannot run a
beam search on the model (transformers' `generate` fails on some T5 layouts its greedy path
handles), the beam part says so ("skipped") and judges nothing.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from edgeseq.runtimes.policies.decodings import BEAM_OPTIONS
from edgeseq.runtimes.processors import OPTION_NAMES

CASES = 4
STEPS = 16
# (tokens, sequence score, each token's processed log-probability), best first
Hypotheses = list[tuple[list[int], float, list[float]]]


def beam_options(runtime) -> dict[str, Any]:
    """The artifact's default beam search, or num_beams 4 where it has none."""
    defaults = runtime.decoding.defaults
    if defaults.get("num_beams", 1) > 1:
        return {k: v for k, v in defaults.items() if k in (*BEAM_OPTIONS, *OPTION_NAMES)}
    return {"num_beams": 4}


def beam_parity(runtime, reference: Callable[[list[int], dict, int], Hypotheses], atol: float, seed: int = 0,
                cases: int = CASES, steps: int = STEPS) -> dict[str, Any]:
    options = beam_options(runtime)
    penalty = float(options.get("length_penalty", 1.0))
    score_bound = max(1e-4, 2 * atol * max(1.0, steps ** (1 - penalty)))
    rng = np.random.default_rng(seed)
    vocab = runtime.config["vocab_size"]
    equal, score_diff, divergences = 0, 0.0, []
    for case in range(cases):
        source = rng.integers(3, vocab, size=int(rng.integers(2, 12))).tolist()
        ours = runtime.generate([source], max_new_tokens=steps, logprobs=0, use_generation_defaults=False, **options)
        try:
            theirs = reference(source, options, steps)
        except Exception as e:  # noqa: BLE001  (the reference's own failure: nothing to judge against)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return {"options": options, "steps": steps, "cases": case, "passed": True,
                    "skipped": f"the reference's beam search failed on this model: {type(e).__name__}: {first}"}
        if ours.tokens == [t for t, _, _ in theirs]:
            equal += 1
            score_diff = max(score_diff, max(abs(r.score - s) for r, (_, s, _) in zip(ours.rows, theirs)))
            continue
        divergences.append(divergence(case, ours.rows[0].tokens, ours.rows[0].token_logprobs, theirs[0][0], theirs[0][2],
                                      atol))
    near_ties = all(d["near_tie"] for d in divergences)
    return {"options": options, "steps": steps, "cases": cases, "sequences_equal": equal,
            "max_score_diff": score_diff, "score_bound": score_bound, "divergences": divergences,
            "passed": near_ties and score_diff <= score_bound}


def divergence(case: int, ours: list[int], our_logprobs: list[float], theirs: list[int], their_logprobs: list[float],
               atol: float) -> dict[str, Any]:
    """Where two best hypotheses part, and the gap between their running scores at that step."""
    step = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    upto = step + 1
    gap = abs(sum(our_logprobs[:upto]) - sum(their_logprobs[:upto]))
    # each side's log-probabilities may be off by twice the logits' error per step
    allowed = 4 * atol * upto
    return {"case": case, "step": step, "score_gap": gap, "near_tie": bool(gap <= allowed), "allowed_gap": allowed}


def judge(report: dict[str, Any], beam: dict[str, Any]) -> dict[str, Any]:
    """A parity report with its beam part, failing where the beams do at fp32 (int8's weights
    move scores by more than a near-tie: there the beams are reported, not judged)."""
    report = {**report, "beam": beam}
    if not beam["passed"] and report.get("precision", "fp32") == "fp32":
        report["passed"] = False
        report["failures"] = [*report.get("failures", []),
                              f"beam search: {len(beam['divergences'])} divergence(s) past a near-tie or scores "
                              f"{beam['max_score_diff']:.1e} apart (bound {beam['score_bound']:.1e})"]
    return report


def hf_beams(hf) -> Callable[[list[int], dict, int], Hypotheses]:
    """transformers' generate on the (mask-folded) Hugging Face model."""
    import torch
    from transformers import GenerationConfig

    c = hf.config

    def reference(source: list[int], options: dict, steps: int) -> Hypotheses:
        config = GenerationConfig(max_new_tokens=steps, decoder_start_token_id=c.decoder_start_token_id,
                                  eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, do_sample=False,
                                  output_scores=True, return_dict_in_generate=True, **options)
        ids = torch.tensor([source])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            transitions = hf.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
        hypotheses = []
        for sequence, score, logprobs in zip(out.sequences, out.sequences_scores, transitions):
            tokens = sequence.tolist()[1:]
            if c.eos_token_id in tokens:
                tokens = tokens[: tokens.index(c.eos_token_id) + 1]
            hypotheses.append((tokens, float(score), logprobs[: len(tokens)].tolist()))
        return hypotheses

    return reference


def torch_beams(next_logits_for: Callable[[list[int]], Callable], history_for: Callable[[list[int]], list[int]],
                eos: int) -> Callable[[list[int], dict, int], Hypotheses]:
    """The PyTorch reference beam search over the torch model (RED, StagFormer)."""
    from edgeseq.models.beam_reference import reference_beam_search, transformers_processors

    def reference(source: list[int], options: dict, steps: int) -> Hypotheses:
        history = history_for(source)
        processors = transformers_processors(options, len(history), eos, steps, source)
        return reference_beam_search(next_logits_for(source), history, options["num_beams"], steps, {eos},
                                     options.get("length_penalty", 1.0), options.get("early_stopping", False),
                                     options.get("num_return_sequences", 1), processors if len(processors) else None)

    return reference
