"""What a request looks like on the way in (checked ids) and on the way out (tokens per row)."""

from dataclasses import dataclass, field

import numpy as np

from edgeseq.errors import GenerateError

from .requests import RowResult


@dataclass
class GenerateResult:
    """The same for every family. Output rows are prompt-major: prompt b's n samples are rows
    b*n .. b*n+n-1. `rows[i]` carries row i's finish reason and what only its decoding has
    (PASTA: a PastaResult, whose `tokens` are the spliced answer, with its outcome, thread
    timeline and longest path)."""

    tokens: list[list[int]]  # per row, generated ids (a stop token, if hit, is the last)
    logits: list[np.ndarray] = field(default_factory=list)  # per step [rows, V], when asked for
    rows: list[RowResult] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: list[RowResult], vocab_size: int) -> "GenerateResult":
        result = cls([r.tokens for r in rows], rows=rows)
        recorded = [r.logits for r in rows if r.logits is not None]
        if recorded and all(x is not None for logits in recorded for x in logits):  # per-step [rows, V]
            steps = max(len(logits) for logits in recorded)
            nan = np.full(vocab_size, np.nan, np.float32)
            result.logits = [np.stack([logits[i] if i < len(logits) else nan for logits in recorded])
                             for i in range(steps)]
        return result


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
