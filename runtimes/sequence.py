"""A sequence: one row's whole state, as data the scheduler can pause, fork, cancel and finish.

Nothing about a request lives in a decode loop's local variables: its prompt, the tokens
chosen so far, the next input and its position, its cache slot, its sampling options and
its own RNG stream, its stop set, budget and deadline, and where its tokens go (a queue
that `generate` and `stream` read).
"""

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .sampling import SamplingOptions

_ids = itertools.count()
FINISHED = object()  # the last item a sequence's event queue receives (or an exception)


def row_rng(sampling: SamplingOptions, row: int) -> np.random.Generator:
    """Each row its own stream: row b of a call seeded s draws from seed (s, b), so results do
    not depend on which other rows share a step (identical seeds would make identical rows)."""
    return np.random.default_rng(None if sampling.seed is None else [sampling.seed, row])


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    max_new_tokens: int
    stops: frozenset[int]
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    rng: np.random.Generator | None = None
    deadline: float | None = None  # time.monotonic() value
    return_logits: bool = False
    # whether each token goes to `events` as it is chosen (`stream`); `generate` waits for the
    # end only, so its caller's thread is not woken (and the GIL not handed over) per token
    streamed: bool = True
    id: int = field(default_factory=lambda: next(_ids))
    # decoding state
    slot: int | None = None  # cache row, owned by the cache manager
    next_token: int | None = None
    position: int = 0
    tokens: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self):
        if self.rng is None:
            self.rng = row_rng(self.sampling, 0)

    def accept(self, token: int, logits: np.ndarray | None = None) -> bool:
        """Record a chosen token; True when the sequence is finished by it."""
        self.tokens.append(token)
        if self.return_logits and logits is not None:
            self.logits.append(logits)
        if self.streamed:
            self.events.put(token)
        self.next_token = token
        return token in self.stops or len(self.tokens) >= self.max_new_tokens

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
