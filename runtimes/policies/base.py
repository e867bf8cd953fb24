"""What a decoding policy is: a small object over the rows of one request.

The scheduler (runtimes/scheduler.py) runs every policy the same way and knows none of them:
- `start()`: the rows to admit; they are prefilled (or encoded) together with the rows of
  every other request admitted in the same iteration;
- `admitted(ops, row, logits)`: after the prefill, with the row's logits for its first
  token (None for an encoder-decoder, whose first step starts from bos);
- `runnable(ops)`: before each step, the rows to step now (a policy may fork rows here;
  a fork that finds no free row returns False and the policy tries again next step);
- `stepped(ops, rows, logits)`: after the step, what its stepped rows chose;
- `done` / `result()`: whether every row has ended, and the request's output rows.
`reserve` rows are held for the request from its admission on (samples: n; beams:
num_beams; PASTA: its main thread and one chunk), so a fork under that count always finds a row and no set of
admitted requests can wait on each other forever.

`RowOps` is what a policy may do to rows; the scheduler implements it over the engine and
the cache manager, and tests implement it over a fake numpy backend.
"""

from typing import Protocol

import numpy as np

from ..requests import Request, Row, RowResult


class RowOps(Protocol):
    def fork(self, parent: Row, child: Row, length: int | None = None, state: dict | None = None) -> bool:
        """`child` gets a row copying `parent`'s cache prefix (`length` slots; default all) and
        state (`state`: a `snapshot`'s); False when no row is free for its request now."""

    def can_fork(self, request: Request) -> bool:
        """Whether a fork for `request` would find a row now."""

    def reorder(self, source: Row, target: Row) -> None:
        """`target` (a row of the same request) becomes a copy of `source` in place: caches,
        position, next token (a beam search's reorder; the encoder outputs are the same)."""

    def release(self, row: Row) -> None:
        """Free the row's cache slot (it stays the request's, with its tokens)."""

    def snapshot(self, row: Row) -> tuple[int, dict[str, np.ndarray]]:
        """The row's cache length and a copy of its non-cache state: a later fork's start."""

    def segment(self, row: Row, start: int, end: int) -> dict[str, np.ndarray]:
        """A copy of the row's cache slots start..end-1."""

    def append(self, row: Row, segment: dict[str, np.ndarray]) -> None:
        """Splice a segment onto the row's cache, visible from its next step."""

    @property
    def lagging(self) -> bool:
        """Whether some cache's entry for a row's last token is written one step later."""


class Policy:
    request: Request
    reserve: int = 1

    def start(self) -> list[Row]:
        raise NotImplementedError

    def admitted(self, ops: RowOps, row: Row, logits: np.ndarray | None) -> None:
        raise NotImplementedError

    def runnable(self, ops: RowOps) -> list[Row]:
        raise NotImplementedError

    def stepped(self, ops: RowOps, rows: list[Row], logits: list[np.ndarray]) -> None:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def result(self) -> list[RowResult]:
        raise NotImplementedError

    def progress(self) -> str:
        """How far the request got, for a deadline's message."""
        tokens = max((len(r.tokens) for r in self.request.rows), default=0)
        return f"{tokens} of {self.request.max_new_tokens} tokens"
