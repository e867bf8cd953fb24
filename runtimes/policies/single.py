"""The `single` policy: one row per request, greedy or seeded sampling, ended by a stop token,
a stop string (runtimes/stop_strings.py) or max_new_tokens. The logits processors, when
asked for, change the raw logits first (as transformers' greedy and sampling do). The row
is freed the moment it ends, so a waiting request takes it at the next step."""

import numpy as np

from ..processors import History, Processors, log_softmax, top_alternatives
from ..requests import Request, Row, RowResult, TokenEvent
from ..sampling import choose_next, sampling_distribution
from ..stop_strings import StopState, StopStrings
from .base import Policy, RowOps


class SinglePolicy(Policy):
    def __init__(self, request: Request, processors: Processors | None = None, history: list[int] | None = None,
                 stop_strings: StopStrings | None = None):
        self.request = request
        self.processors = processors
        self.stop_strings = stop_strings
        self.live: list[Row] = [request.new_row(0)]
        # each row's processor state and stop-string text, by row (forked rows copy their parent's)
        self.histories: dict[int, History] = {id(self.live[0]): processors.start(history)} if processors else {}
        self.texts: dict[int, StopState] = {id(self.live[0]): stop_strings.start()} if stop_strings else {}
        self.matched: dict[int, str] = {}  # by row: the stop string that ended it

    def forked(self, parent: Row, child: Row) -> None:
        """`child` continues from `parent`: it takes copies of its per-row state."""
        if self.processors:
            self.histories[id(child)] = self.histories[id(parent)].copy()
        if self.stop_strings:
            self.texts[id(child)] = self.texts[id(parent)].copy()

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
        scores = logits
        if self.processors:
            history = self.histories[id(row)]
            scores = self.processors.apply(logits[None].astype(np.float32), [history])[0]
        token = int(scores.argmax()) if not sampling.do_sample else int(choose_next(scores[None], sampling, row.rng)[0])
        if self.processors:
            self.processors.advance(history, token)
        if request.logprobs is not None:  # of the distribution the token was chosen from
            if sampling.do_sample:
                with np.errstate(divide="ignore"):
                    dist = np.log(sampling_distribution(scores[None], sampling)[0])
            else:
                dist = log_softmax(scores[None])[0]
            row.logprobs.append(float(dist[token]))
            row.top_logprobs.append(top_alternatives(dist, request.logprobs))
        row.tokens.append(token)
        if request.return_logits:
            row.logits.append(logits.copy())
        if request.streamed:  # a TokenEvent per token only for a reader
            request.emit(TokenEvent(token, row.index, row.position))
        row.next_token = token
        matched = self.stop_strings and self.texts[id(row)].feed(token)
        if matched:
            self.matched[id(row)] = matched
        if matched or token in request.stops or len(row.tokens) >= request.max_new_tokens:
            row.done = True
            self.live.remove(row)
            ops.release(row)

    @property
    def done(self) -> bool:
        return not self.live

    def result(self) -> list[RowResult]:
        request = self.request
        asked = request.logprobs is not None
        return [self.row_result(r, asked) for r in sorted(request.rows, key=lambda r: r.index)]

    def row_result(self, row: Row, asked: bool) -> RowResult:
        request = self.request
        matched = self.matched.get(id(row))
        reason = matched if matched is not None else (row.tokens[-1] if row.tokens and row.tokens[-1] in request.stops
                                                      else None)
        return RowResult(row.tokens, "length" if reason is None else "stop",
                         row.logits if request.return_logits else None,
                         token_logprobs=row.logprobs if asked else None, top_logprobs=row.top_logprobs if asked else None,
                         stop_reason=reason,
                         text=self.stop_strings.final_text(row.tokens, matched) if self.stop_strings else None)
