"""A PyTorch reference beam search for the families transformers cannot run (RED, StagFormer):
the tests compare the runtime's beams with it. Used by tests only.

Written the classic way (transformers' BeamHypotheses before the 2025 vectorized rewrite,
whose semantics the rewrite kept), per hypothesis, so it shares no code with the
runtime's vectorized policy (runtimes/policies/beam.py):
- each step, log-softmax of the next-token logits of every live beam, then the logits
  processors (transformers' own, passed in), plus the beam's score; the best
  max(2, 1 + #eos) x num_beams candidates over all beams (torch.topk);
- a candidate among the first num_beams that ends in eos, or reaches max_new_tokens,
  is offered to the finished hypotheses, scored sum_logprobs / length ** length_penalty;
  the others (up to num_beams) continue;
- the search ends when every beam is done by `early_stopping`'s rule (True: num_beams
  finished; False: the best running beam at its current length cannot beat the worst
  finished; "never": the same at max length when length_penalty > 0).
"""

from collections.abc import Callable

import torch


class Hypotheses:
    """The best `num_beams` finished hypotheses, with transformers' stopping rule."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping, max_new_tokens: int):
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.early_stopping, self.max_new_tokens = early_stopping, max_new_tokens
        self.kept: list[tuple[float, list[int], list[float]]] = []
        self.closed = False

    def worst(self) -> float:
        return min(score for score, _, _ in self.kept)

    def add(self, tokens: list[int], sum_logprobs: float, logprobs: list[float]) -> None:
        score = sum_logprobs / len(tokens) ** self.length_penalty
        if len(self.kept) < self.num_beams or score > self.worst():
            self.kept.append((score, tokens, logprobs))
            if len(self.kept) > self.num_beams:
                self.kept.remove(min(self.kept, key=lambda kept: kept[0]))

    def is_done(self, best_running: float, generated: int) -> bool:
        if len(self.kept) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        length = self.max_new_tokens if self.early_stopping == "never" and self.length_penalty > 0 else generated
        return self.worst() >= best_running / length ** self.length_penalty


def reference_beam_search(
    next_logits: Callable[[list[list[int]]], torch.Tensor],
    history: list[int],
    num_beams: int,
    max_new_tokens: int,
    eos: set[int],
    length_penalty: float = 1.0,
    early_stopping=False,
    num_return_sequences: int = 1,
    processors=None,
) -> list[tuple[list[int], float]]:
    """`next_logits(histories)` -> the next-token logits [len(histories), V] of the model over
    each full history (what transformers calls input_ids). Returns the best
    `num_return_sequences` (generated tokens, sequence score, each token's processed
    log-probability), best first."""
    finished = Hypotheses(num_beams, length_penalty, early_stopping, max_new_tokens)
    beams: list[tuple[float, list[int], list[float]]] = [(0.0, [], [])]  # (score, tokens, their log-probs); beam 0 only
    keep = max(2, 1 + len(eos)) * num_beams
    for step in range(1, max_new_tokens + 1):
        histories = [history + tokens for _, tokens, _ in beams]
        with torch.no_grad():
            scores = torch.log_softmax(next_logits(histories).float(), dim=-1)
            if processors is not None:
                scores = processors(torch.tensor(histories), scores)
        processed = scores
        scores = scores + torch.tensor([s for s, _, _ in beams], dtype=torch.float32)[:, None]
        vocab = scores.shape[-1]
        values, flat = torch.topk(scores.reshape(-1), keep)
        running: list[tuple[float, list[int], list[float]]] = []
        for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
            parent = beams[index // vocab]
            tokens = parent[1] + [index % vocab]
            logprobs = parent[2] + [processed[index // vocab, index % vocab].item()]
            if tokens[-1] in eos or step == max_new_tokens:
                if rank < num_beams and not finished.closed:
                    finished.add(tokens, value, logprobs)
            elif len(running) < num_beams:
                running.append((value, tokens, logprobs))
        if not running:  # every candidate ended
            break
        finished.closed = finished.closed or finished.is_done(running[0][0], step)
        if finished.closed:
            break
        beams = running
    best = sorted(finished.kept, key=lambda kept: -kept[0])[:num_return_sequences]
    return [(tokens, score, logprobs) for score, tokens, logprobs in best]


def transformers_processors(options: dict, history_length: int, eos: int, max_new_tokens: int,
                            encoder_ids: list[int] | None = None):
    """transformers' own logits processors for `options` (GenerationConfig names), in its order
    (GenerationMixin._get_logits_processor): the reference side of every processor comparison."""
    from transformers import (
        EncoderNoRepeatNGramLogitsProcessor,
        ForcedBOSTokenLogitsProcessor,
        ForcedEOSTokenLogitsProcessor,
        LogitsProcessorList,
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        NoBadWordsLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
    )

    o = options
    out = []
    if o.get("repetition_penalty", 1.0) != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(float(o["repetition_penalty"])))
    if o.get("no_repeat_ngram_size"):
        out.append(NoRepeatNGramLogitsProcessor(o["no_repeat_ngram_size"]))
    if o.get("encoder_no_repeat_ngram_size"):
        out.append(EncoderNoRepeatNGramLogitsProcessor(o["encoder_no_repeat_ngram_size"], torch.tensor([encoder_ids])))
    if o.get("bad_words_ids"):
        out.append(NoBadWordsLogitsProcessor(o["bad_words_ids"], eos))
    if o.get("min_length"):
        out.append(MinLengthLogitsProcessor(o["min_length"], eos))
    if o.get("min_new_tokens"):
        out.append(MinNewTokensLengthLogitsProcessor(history_length, o["min_new_tokens"], eos))
    if o.get("forced_bos_token_id") is not None:
        out.append(ForcedBOSTokenLogitsProcessor(o["forced_bos_token_id"]))
    if o.get("forced_eos_token_id") is not None:
        out.append(ForcedEOSTokenLogitsProcessor(history_length + max_new_tokens, o["forced_eos_token_id"]))
    if o.get("suppress_tokens"):
        out.append(SuppressTokensLogitsProcessor(o["suppress_tokens"]))
    if o.get("begin_suppress_tokens"):
        begin = history_length + (1 if history_length == 1 and o.get("forced_bos_token_id") is not None else 0)
        out.append(SuppressTokensAtBeginLogitsProcessor(o["begin_suppress_tokens"], begin))
    return LogitsProcessorList(out)
