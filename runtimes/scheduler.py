"""The scheduler: one per loaded model, continuous batching over the engine.

Callers submit sequences from any thread; one worker thread (`edgeseq-scheduler`) owns
the engine. Between two steps it drops cancelled and expired rows, admits waiting ones
(up to `max_batch` rows in all), runs one step over every active row, and hands each
row its token as soon as it is chosen. A row leaves the batch the moment it finishes; a
new request joins at the next step. A failing step fails only the rows in it; the
worker goes on with the next requests. `close` fails what is still queued or running
and stops every thread.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from edgeseq.errors import (
    DeadlineError,
    EdgeseqError,
    GenerateError,
    ModelClosedError,
    QueueFullError,
    StepError,
)

from .engine import Engine
from .sampling import choose_next
from .sequence import Sequence


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int = 32, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1:
            raise GenerateError(f"max_batch={max_batch} and max_queue={max_queue} must be >= 1", "use positive limits")
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.wakeup = threading.Condition()
        self.closed = False
        self.steps = 0  # batched steps run, and rows over them: their ratio is the mean batch size
        self.rows_stepped = 0
        # called with the batch size after every decode step, on the scheduler thread (a
        # server's metrics); an observer must be quick and must not raise
        self.step_observers: list[Callable[[int], None]] = []
        self.thread = threading.Thread(target=self._loop, name="edgeseq-scheduler", daemon=True)
        self.thread.start()

    # ----- callers' side ----------------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> None:
        with self.wakeup:
            if self.closed:
                raise ModelClosedError("the model is closed", "load the artifact again")
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFullError(
                    f"the request queue is full ({len(self.waiting)} waiting, limit {self.max_queue})",
                    "retry later, or load the model with a larger max_queue",
                )
            self.waiting.extend(seqs)
            self.wakeup.notify()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> list[Sequence]:
        return list(self.engine.cache.owners)

    def close(self, timeout: float = 30.0) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        self.thread.join(timeout)
        closed = ModelClosedError("the model was closed while this request was queued or running", "load it again")
        for seq in [*self.waiting, *self.engine.cache.owners]:
            self._finish(seq, closed)
        self.waiting.clear()

    # ----- the worker -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.wakeup:
                while not self.closed and not self.waiting and not self.engine.cache.owners:
                    self.wakeup.wait()
                if self.closed:
                    return
                room = self.max_batch - self.engine.cache.rows
                admit = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
            try:
                self._iteration(admit)
            except BaseException as e:  # a bug here must not leave callers waiting forever
                error = e if isinstance(e, EdgeseqError) else StepError(f"internal scheduler error: {e!r}", "report this")
                for seq in [*admit, *self.engine.cache.owners]:
                    self._finish(seq, error)

    def _iteration(self, admit: list[Sequence]) -> None:
        now = time.monotonic()
        for seq in self.engine.cache.owners[:]:
            self._drop_if_gone(seq, now)
        admit = [s for s in admit if not self._drop_if_gone(s, now)]
        if admit:
            try:
                first = self.engine.admit(admit)
            except Exception as e:
                for seq in admit:
                    self._finish(seq, _as_generate_error(e))
            else:
                for seq, logits in zip(admit, first):
                    if logits is not None:
                        self._choose([seq], logits[None])
        rows = self.engine.cache.owners[:]
        if not rows:
            return
        try:
            logits = self.engine.step(rows)
        except Exception as e:
            for seq in rows:
                self._finish(seq, _as_generate_error(e))
            return
        self.steps += 1
        self.rows_stepped += len(rows)
        for observe in self.step_observers:
            observe(len(rows))
        self._choose(rows, logits)

    def _drop_if_gone(self, seq: Sequence, now: float) -> bool:
        if seq.cancelled.is_set():
            self._finish(seq)
            return True
        if seq.expired(now):
            self._finish(seq, DeadlineError(
                f"the request's deadline passed after {len(seq.tokens)} of {seq.max_new_tokens} tokens",
                "allow a longer timeout, or ask for fewer tokens"))
            return True
        return False

    def _choose(self, seqs: list[Sequence], logits: np.ndarray) -> None:
        """Each row's next token from its logits [n, V], by its own sampling options and RNG."""
        greedy = logits.argmax(axis=-1).tolist()
        for i, seq in enumerate(seqs):
            token = greedy[i] if not seq.sampling.do_sample else int(choose_next(logits[i : i + 1], seq.sampling, seq.rng)[0])
            if seq.accept(token, logits[i].copy() if seq.return_logits else None):
                self._finish(seq)

    def _finish(self, seq: Sequence, error: BaseException | None = None) -> None:
        self.engine.release(seq)
        seq.finish(error)


def _as_generate_error(e: Exception) -> GenerateError:
    if isinstance(e, GenerateError):
        return e
    return StepError(f"decoding failed: {e!r}", "the requests of this step failed; the model keeps serving")
