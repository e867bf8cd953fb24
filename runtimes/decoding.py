"""What every decode loop shares: checking a request, and collecting tokens per row.

Families differ in how a step runs (encoder + decoder step, staggered stages); they
share the request checks, the sampling, and the bookkeeping of which rows have stopped.
"""

from dataclasses import dataclass, field

import numpy as np

from edgeseq.errors import GenerateError

from .sampling import SamplingOptions, choose_next


@dataclass
class GenerateResult:
    tokens: list[list[int]]  # per row, generated ids (a stop token, if hit, is the last)
    logits: list[np.ndarray] = field(default_factory=list)  # per step [B, V], when asked for


def normalize_input(input_ids, vocab_size: int) -> list[list[int]]:
    """Accept one sequence or a batch of them; reject empty or out-of-vocabulary ids."""
    if isinstance(input_ids, np.ndarray):
        input_ids = input_ids.tolist()
    if not isinstance(input_ids, (list, tuple)) or len(input_ids) == 0:
        raise GenerateError("input is empty", "pass at least one token id, e.g. --input-ids \"5 17 3\"")
    rows = [list(input_ids)] if not isinstance(input_ids[0], (list, tuple, np.ndarray)) else [list(r) for r in input_ids]
    for b, row in enumerate(rows):
        if not row:
            raise GenerateError(f"input row {b} is empty", "every sequence needs at least one token id")
        for t in row:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise GenerateError(f"input row {b} holds {t!r}, not a token id", "pass integer token ids")
            if not 0 <= t < vocab_size:
                raise GenerateError(
                    f"token id {t} in row {b} is outside the vocabulary [0, {vocab_size})",
                    f"use ids from 0 to {vocab_size - 1}",
                )
    return rows


class Decoding:
    """One generate call's choices and bookkeeping: sampling, stop tokens, finished rows."""

    def __init__(self, input_ids, config: dict, max_new_tokens: int, stop_tokens: list[int] | None,
                 sampling: SamplingOptions | None, return_logits: bool):
        self.sampling = sampling or SamplingOptions()
        self.sampling.validate()
        if max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens={max_new_tokens} must be >= 1", "ask for at least one new token")
        self.rows = normalize_input(input_ids, config["vocab_size"])
        self.max_new_tokens = max_new_tokens
        self.stops = {config["eos_token_id"]} if stop_tokens is None else {int(t) for t in stop_tokens}
        self.rng = np.random.default_rng(self.sampling.seed)
        self.return_logits = return_logits
        # plain Python per row: called between two decoder steps, when every numpy call
        # runs with cold caches (~10-20 us each), so the bookkeeping avoids them
        self.done = [False] * len(self.rows)
        self.running = len(self.rows)
        self.result = GenerateResult([[] for _ in self.rows])

    def choose(self, logits: np.ndarray) -> np.ndarray:
        """Pick the next ids from [B, V] logits and record them for rows still running."""
        if self.return_logits:
            self.result.logits.append(logits)
        next_ids = choose_next(logits, self.sampling, self.rng)
        for b, token in enumerate(next_ids.tolist()):
            if not self.done[b]:
                self.result.tokens[b].append(token)
                if token in self.stops:
                    self.done[b] = True
                    self.running -= 1
        return next_ids

    @property
    def finished(self) -> bool:
        return self.running == 0
