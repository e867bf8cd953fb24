"""The `samples` policy: `n` completions of one prompt. The prompt is prefilled once; right
after, n - 1 rows fork from that row's cache (no prefix recomputed) and every row chooses
its first token from the same prefill logits, row i drawing from RNG stream
(seed, stream_index + i). So `generate([p], n=4, seed=s)` gives exactly the rows of
`generate([p, p, p, p], seed=s)`. The n rows are reserved at admission."""

import numpy as np

from edgeseq.errors import StepError

from ..processors import Processors
from ..requests import Request, Row
from ..stop_strings import StopStrings
from .base import RowOps
from .single import SinglePolicy


class SamplesPolicy(SinglePolicy):
    def __init__(self, request: Request, n: int, processors: Processors | None = None, history: list[int] | None = None,
                 stop_strings: StopStrings | None = None):
        super().__init__(request, processors, history, stop_strings)
        self.n = self.reserve = n

    def admitted(self, ops: RowOps, row: Row, logits: np.ndarray | None) -> None:
        for i in range(1, self.n):  # fork before choosing: every row starts from the same prefix
            child = self.request.new_row(i)
            if not ops.fork(row, child):
                raise StepError(f"no cache row for sample {i} of a request that reserved {self.n}", "report this")
            self.live.append(child)
            self.forked(row, child)
        if logits is not None:
            for r in list(self.live):
                self.choose(ops, r, logits)
