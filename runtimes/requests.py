"""Requests and rows: what a caller asked for, and the cache rows that answer it, as data.

A `Request` is one prompt with its options, stop set, deadline, cancellation, the policy
that decides what its rows do after each step, and the queue its events go to (`generate`
waits for the end, `stream` reads every token). A `Row` is one cache row's state: its slot
(owned by the cache manager), position, next input token, the tokens it chose, its RNG
stream and its state. A request owns one or more rows: one (single decoding), n (samples:
one prefill, n - 1 forks), or as many as a PASTA document has live threads.

Nothing about a request lives in a decode loop's local variables, so the one scheduler
can pause, fork, splice, cancel and finish any of them between two steps.
"""

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .sampling import SamplingOptions

_ids = itertools.count()
FINISHED = object()  # the last item a request's event queue receives (or an exception)


class TokenEvent(NamedTuple):
    """One token as it was chosen: which output row (0 .. n-1) and, for PASTA, which thread
    (-1 main, j chunk j) chose it, and the position it is fed at."""

    token: int
    row: int
    position: int
    thread: int | None = None


def rng_stream(seed: int | None, *key: int) -> np.random.Generator:
    """An RNG stream of its own per (seed, key): results do not depend on which other rows
    share a step (identical seeds would make identical rows)."""
    return np.random.default_rng(None if seed is None else [seed, *key])


@dataclass(eq=False)
class Row:
    """One cache row's state. `prompt` is what its request's first row is prefilled with."""

    prompt: list[int]
    request: "Request | None" = None
    index: int = 0  # the output row of its request it belongs to (samples: 0 .. n-1)
    rng: np.random.Generator | None = None
    slot: int | None = None  # cache row, owned by the cache manager
    next_token: int | None = None
    position: int = 0
    tokens: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # per token, when its request asks (`logprobs`)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    done: bool = False


@dataclass
class RowResult:
    """One output row of a request: its tokens, why it ended ("stop": a stop token, "length":
    max_new_tokens) and, when asked for, the logits that chose each token."""

    tokens: list[int]
    finish_reason: str = "length"
    logits: list[np.ndarray | None] | None = None
    # when asked for (`logprobs=K`): per token its log-probability under the processed
    # distribution it was chosen from (transformers' output_scores), and the K best there
    token_logprobs: list[float] | None = field(default=None, kw_only=True)
    top_logprobs: list[list[tuple[int, float]]] | None = field(default=None, kw_only=True)
    # what ended it with "stop": the matched stop string, or the stop token's id
    stop_reason: str | int | None = field(default=None, kw_only=True)
    # with stop strings: the text, cut before the matched one (or after, if asked to include it)
    text: str | None = field(default=None, kw_only=True)

    def extras(self) -> dict[str, Any]:
        """What only some decodings report besides the tokens (PASTA: outcome, threads)."""
        return {}


@dataclass(eq=False)
class Request:
    prompt: list[int]
    max_new_tokens: int
    stops: frozenset[int]
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    deadline: float | None = None  # time.monotonic() value
    return_logits: bool = False
    # whether each token goes to `events` as it is chosen (`stream`); `generate` waits for the
    # end only, so its caller's thread is not woken (and the GIL not handed over) per token
    streamed: bool = False
    stream_index: int = 0  # the first RNG stream of its rows: row i draws from (seed, stream_index + i)
    logprobs: int | None = None  # per token its log-probability and the K best alternatives (None: off)
    cache_salt: str | None = None  # prefix-cache blocks are shared only among requests of one salt
    id: int = field(default_factory=lambda: next(_ids))
    policy: Any = None  # set by the decoding that made the request (runtimes/policies/)
    rows: list[Row] = field(default_factory=list)
    held: int = 0  # cache rows it holds now (kept by the scheduler: it runs hot, once per fork check)
    result: list[RowResult] | None = None
    error: BaseException | None = None
    done: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def new_row(self, index: int, rng: np.random.Generator | None = None) -> Row:
        if rng is None and self.sampling.do_sample:  # greedy rows draw nothing (a Generator is ~20 us)
            rng = rng_stream(self.sampling.seed, self.stream_index + index)
        row = Row(self.prompt, self, index, rng)
        self.rows.append(row)
        return row


    def emit(self, event: TokenEvent) -> None:
        if self.streamed:
            self.events.put(event)

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self.events.put(error if error is not None else FINISHED)

    def cancel(self) -> None:
        self.cancelled.set()

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) > self.deadline
