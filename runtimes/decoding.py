"""What a request looks like on the way in (checked ids) and on the way out (tokens per row)."""

from dataclasses import dataclass, field

import numpy as np

from edgeseq.errors import GenerateError


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
