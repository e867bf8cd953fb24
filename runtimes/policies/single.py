"""The `single` policy: one row per request, greedy or seeded sampling, ended by a stop token
or max_new_tokens. The row is freed the moment it ends, so a waiting request takes it at
the next step."""

import numpy as np

from ..requests import Request, Row, RowResult, TokenEvent
from ..sampling import choose_next
from .base import Policy, RowOps


class SinglePolicy(Policy):
    def __init__(self, request: Request):
        self.request = request
        self.live: list[Row] = [request.new_row(0)]

    def start(self) -> list[Row]:
        return self.live[:1]

    def admitted(self, ops: RowOps, row: Row, logits: np.ndarray | None) -> None:
        if logits is not None:  # decoder-only: the prefill chose the first token; else bos starts
            self.choose(ops, row, logits)

    def runnable(self, ops: RowOps) -> list[Row]:
        return self.live

    def stepped(self, ops: RowOps, rows: list[Row], logits: list[np.ndarray]) -> None:
        for row, row_logits in zip(rows, logits):
            self.choose(ops, row, row_logits)

    def choose(self, ops: RowOps, row: Row, logits: np.ndarray) -> None:
        """The row's next token from its logits [V], by the request's options and the row's RNG."""
        request = self.request
        sampling = request.sampling
        token = int(logits.argmax()) if not sampling.do_sample else int(choose_next(logits[None], sampling, row.rng)[0])
        row.tokens.append(token)
        if request.return_logits:
            row.logits.append(logits.copy())
        if request.streamed:  # a TokenEvent per token only for a reader
            request.emit(TokenEvent(token, row.index, row.position))
        row.next_token = token
        if token in request.stops or len(row.tokens) >= request.max_new_tokens:
            row.done = True
            self.live.remove(row)
            ops.release(row)

    @property
    def done(self) -> bool:
        return not self.live

    def result(self) -> list[RowResult]:
        request = self.request
        return [RowResult(r.tokens, "stop" if r.tokens and r.tokens[-1] in request.stops else "length",
                          r.logits if request.return_logits else None)
                for r in sorted(request.rows, key=lambda r: r.index)]
