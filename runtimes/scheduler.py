"""The scheduler: one per loaded model, continuous batching over the engine, every policy.

Callers submit requests from any thread; one worker thread (`edgeseq-scheduler`) owns the
engine. Between two steps it drops cancelled and expired requests (every row of each),
admits waiting ones while their reserved rows fit under `max_batch`, asks each active
request's policy which of its rows run now (a policy may fork rows here, or wait), runs
one step over all of them, and hands each policy its rows' logits. A row leaves the batch
the moment its policy frees it; a new request joins at the next step. A failing step
fails only the requests with rows in it; the worker goes on with the next requests.
`close` fails what is still queued or running and stops every thread.

Rows: a request holds max(its policy's `reserve`, the rows it has) of the `max_batch`
rows. Admission takes a request only when its reserve fits; a fork beyond a request's
reserve takes a row only when no other request's reserve needs it. So every admitted
request can always reach its reserve, and none waits forever on another's rows.
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
from .requests import Request, Row


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int = 32, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1:
            raise GenerateError(f"max_batch={max_batch} and max_queue={max_queue} must be >= 1", "use positive limits")
        self.engine = engine
        self.max_batch = min(max_batch, engine.cache.max_rows)
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.wakeup = threading.Condition()
        self.closed = False
        self.steps = 0  # batched steps run, and rows over them: their ratio is the mean batch size
        self.rows_stepped = 0
        self.forks = 0  # rows forked from another row's cache, segments spliced onto a row, rows
        self.splices = 0  # copied into another of their request's in place (beam reorders)
        self.reorders = 0
        # called with the batch size after every decode step, on the scheduler thread (a
        # server's metrics); an observer must be quick and must not raise
        self.step_observers: list[Callable[[int], None]] = []
        self.thread = threading.Thread(target=self._loop, name="edgeseq-scheduler", daemon=True)
        self.thread.start()

    # ----- callers' side ----------------------------------------------------------------------
    def submit(self, requests: list[Request]) -> None:
        for request in requests:
            if request.policy.reserve > self.max_batch:
                raise GenerateError(f"a request needs {request.policy.reserve} cache rows; this model takes "
                                    f"{self.max_batch} rows per step", "ask for fewer samples, or load with a larger max_batch")
        with self.wakeup:
            if self.closed:
                raise ModelClosedError("the model is closed", "load the artifact again")
            if len(self.waiting) + len(requests) > self.max_queue:
                raise QueueFullError(
                    f"the request queue is full ({len(self.waiting)} waiting, limit {self.max_queue})",
                    "retry later, or load the model with a larger max_queue",
                )
            self.waiting.extend(requests)
            self.wakeup.notify()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> list[Row]:
        """The rows in the cache now, of every running request."""
        return list(self.engine.cache.owners)

    def close(self, timeout: float = 30.0) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        self.thread.join(timeout)
        closed = ModelClosedError("the model was closed while this request was queued or running", "load it again")
        for request in [*self.waiting, *self.running]:
            self._finish(request, closed)
        self.waiting.clear()

    # ----- rows (the policies' RowOps) ----------------------------------------------------------
    def _committed(self, extra: Request | None = None) -> int:
        return sum(max(r.policy.reserve, r.held + (r is extra)) for r in self.running)

    def can_fork(self, request: Request) -> bool:
        return self._committed(request) <= self.max_batch and self.engine.cache.rows < self.engine.cache.max_rows

    def fork(self, parent: Row, child: Row, length: int | None = None, state: dict | None = None) -> bool:
        if not self.can_fork(child.request):
            return False
        self.engine.fork(parent, child, length, state)
        child.request.held += 1
        self.forks += 1
        return True

    def reorder(self, source: Row, target: Row) -> None:
        self.engine.reorder(source, target)
        self.reorders += 1

    def release(self, row: Row) -> None:
        if row.slot is not None:
            row.request.held -= 1
            self.engine.release(row)

    def snapshot(self, row: Row) -> tuple[int, dict]:
        return int(self.engine.cache.lengths[row.slot]), self.engine.cache.row_state(row.slot)

    def segment(self, row: Row, start: int, end: int) -> dict:
        return self.engine.cache.segment(row.slot, start, end)

    def append(self, row: Row, segment: dict) -> None:
        self.engine.cache.append(row.slot, segment)
        self.splices += 1

    @property
    def lagging(self) -> bool:
        return self.engine.lagging

    # ----- the worker -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.wakeup:
                while not self.closed and not self.waiting and not self.running:
                    self.wakeup.wait()
                if self.closed:
                    return
                admit, committed = [], self._committed()
                while self.waiting and committed + self.waiting[0].policy.reserve <= self.max_batch:
                    admit.append(self.waiting.popleft())
                    committed += admit[-1].policy.reserve
            try:
                self._iteration(admit)
            except BaseException as e:  # a bug here must not leave callers waiting forever
                error = e if isinstance(e, EdgeseqError) else StepError(f"internal scheduler error: {e!r}", "report this")
                for request in [*admit, *self.running]:
                    self._finish(request, error)

    def _iteration(self, admit: list[Request]) -> None:
        now = time.monotonic()
        for request in self.running[:]:
            self._drop_if_gone(request, now)
        admit = [r for r in admit if not self._drop_if_gone(r, now)]
        if admit:
            self._admit(admit)
        runnable = []
        for request in self.running[:]:
            rows = request.policy.runnable(self)
            if request.policy.done:  # e.g. a PASTA document whose last chunk ended at its eos
                self._finish(request)
            else:
                runnable.extend(rows)
        if not runnable:
            if self.running and not admit:  # a policy bug: the next iteration would be this one again
                for request in self.running[:]:
                    self._finish(request, StepError("no row of the running requests can run", "report this as a bug"))
            return
        self._first_rows(runnable)
        try:
            logits = self.engine.step(runnable)
        except Exception as e:
            stepping = {id(r.request) for r in runnable}  # only on failure: not per step
            for request in [r for r in self.running if id(r) in stepping]:
                self._finish(request, _as_generate_error(e))
            return
        self.steps += 1
        self.rows_stepped += len(runnable)
        for observe in self.step_observers:
            observe(len(runnable))
        self._after_step(runnable, logits)

    def _admit(self, admit: list[Request]) -> None:
        rows = [row for request in admit for row in request.policy.start()]
        try:
            first = self.engine.admit(rows)
        except Exception as e:
            for request in admit:
                self._finish(request, _as_generate_error(e))
            return
        self.running.extend(admit)
        for row in rows:
            row.request.held += 1
        for row, logits in zip(rows, first):
            row.request.policy.admitted(self, row, logits)
        for request in admit:
            if request.policy.done:
                self._finish(request)

    def _after_step(self, rows: list[Row], logits: np.ndarray) -> None:
        """Each request's stepped rows and their logits [V] to its policy; ended requests finish."""
        if len(rows) == 1:
            groups = {id(rows[0].request): (rows[0].request, rows, [logits[0]])}
        else:
            groups = {}
            for row, row_logits in zip(rows, logits):
                group = groups.setdefault(id(row.request), (row.request, [], []))
                group[1].append(row)
                group[2].append(row_logits)
        # last slots first: a finished row in the last slot is freed without moving another
        # into its place (256 rows ending in one step moved 255 rows of every buffer)
        for request, request_rows, request_logits in reversed(groups.values()):
            try:
                request.policy.stepped(self, request_rows, request_logits)
            except Exception as e:  # one request's policy failing fails that request only
                self._finish(request, _as_generate_error(e))
                continue
            if request.policy.done:
                self._finish(request)

    def _first_rows(self, runnable: list[Row]) -> None:
        """Put the rows to step in slots 0..m-1 (a step runs those), moving only rows that
        are outside, and order `runnable` by slot."""
        cache, m = self.engine.cache, len(runnable)
        if m < cache.rows:
            stepping = {id(r) for r in runnable}
            holes = [slot for slot in range(m) if id(cache.owners[slot]) not in stepping]
            for row, hole in zip([r for r in runnable if r.slot >= m], holes):
                cache.swap(row.slot, hole)
        runnable.sort(key=lambda r: r.slot)

    def _drop_if_gone(self, request: Request, now: float) -> bool:
        if request.cancelled.is_set():
            self._finish(request)
            return True
        if request.expired(now):
            self._finish(request, DeadlineError(f"the request's deadline passed after {request.policy.progress()}",
                                                "allow a longer timeout, or ask for fewer tokens"))
            return True
        return False

    def _finish(self, request: Request, error: BaseException | None = None) -> None:
        """Free every row of the request, record its result (on success) and wake its caller."""
        for row in request.rows:
            self.release(row)
        if request in self.running:
            self.running.remove(request)
        if error is None and not request.done:
            try:
                request.result = request.policy.result()
            except Exception as e:
                error = _as_generate_error(e)
        request.finish(error)


def _as_generate_error(e: Exception) -> GenerateError:
    if isinstance(e, GenerateError):
        return e
    return StepError(f"decoding failed: {e!r}", "the requests of this step failed; the model keeps serving")
