"""The `pasta` policy: threads forked at promises, decoded together, spliced at the sync.

Each document (one prompt, one request) starts as one thread, main, on one row. The main
thread's tokens go through PASTA-LANG's parser (runtimes/pasta_lang.py):
- a promise's `/>` is fed like any token; right after that step the scheduler records a
  fork point (the main row's cache length, and its handoff state), moves the main
  thread's position to p + N + 1 and creates chunk j, which gets its own row as a copy
  of that prefix (no recomputed prefix) and starts from a forced `<async>` at p + 1;
- every running thread, of every document of every caller, is one row of the one
  scheduler's batched step (under StagFormer the stage sessions of that step run
  concurrently);
- `<sync/>` (and eos) makes the main thread wait until its chunks have finished; at the
  sync each chunk's cache segment is appended to the main row, then `<sync/>` is fed, so
  from that token on the main thread sees every chunk, as in training;
- a finished chunk's segment is copied aside and its row freed at once. Under StagFormer
  a row's last token's cross-cache entry is written one step later, so a chunk closed by
  `</async>` runs one more (flush) step before its segment is complete.

Schedules: "parallel" steps every running thread at once; "sequential" is the
interpreter's order (one thread at a time: a chunk runs to its end right after its
promise, then the main thread goes on). Both use the same rules, so their greedy output
is the same token for token, and it is that of the torch interpreter
(models/pasta.py `generate_sequential`).

Budgets (pasta_lang.Budgets): `max_live_threads` chunks decode at once per document,
later promises wait for a row (forked from their snapshot when one frees); a chunk is
closed at `max_chunk_tokens`; the spliced answer is cut at `max_tokens` tokens and at
the model's positions, at the same index as the sequential interpreter would stop: a
thread stops once its token is certainly past that index (its lower bound in the
spliced order), and the spliced output is truncated at the first stop in document order.

Sampling: each thread draws from its own RNG stream, seeded (seed, document, thread), so
what a thread samples does not depend on which others share its steps.

Rows: a document reserves two rows at admission (its main thread and one chunk), so a
promise always finds a row eventually, whatever other requests hold; chunks past the
reservation fork when the scheduler has a free row. The main row is never freed before
the document ends: pending chunks fork from it.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from ..pasta_lang import Budgets, Kind, MainParser, PastaTags, chunk_token
from ..requests import Request, Row, RowResult, TokenEvent, rng_stream
from ..sampling import choose_next
from .base import Policy, RowOps

MAIN = -1
SCHEDULES = ("parallel", "sequential")


@dataclass(eq=False)
class Thread:
    """One thread of a document: main, or chunk j (j = 0, 1, ... in promise order)."""

    index: int
    document: int  # its document's index
    rng: np.random.Generator
    tokens: list[int] = field(default_factory=list)  # main: after the prompt; chunk: <async> .. </async>
    row: Row | None = None  # its cache row's state, once forked
    state: str = "pending"  # pending (no row yet), running, waiting, flushing, done, stopped
    stop_reason: str = ""
    logits: list[np.ndarray] = field(default_factory=list)  # per token, when recorded
    # chunks: where they fork (the main row's cache length and state after its promise)
    promised: int = 0
    fork_length: int = 0
    fork_state: dict | None = None
    fork_position: int = 0
    main_before: int = 0  # main tokens up to and including the promise
    # the timeline, in scheduler steps
    promised_step: int = 0
    forked_step: int | None = None
    finished_step: int | None = None
    waits: list[list[int]] = field(default_factory=list)  # [from, to] steps spent waiting (main)
    segment: dict | None = None  # a finished chunk's cache slots, until the sync splices them

    @property
    def finished(self) -> bool:
        return self.state in ("done", "stopped")

    def timeline(self, step_s: list[float]) -> dict:
        def at(step):
            return None if step is None else round(step_s[min(step, len(step_s) - 1)], 6)

        out = {"thread": "main" if self.index == MAIN else self.index, "tokens": len(self.tokens),
               "forked_step": self.forked_step, "forked_s": at(self.forked_step),
               "finished_step": self.finished_step, "finished_s": at(self.finished_step),
               "waits": [list(w) for w in self.waits], "stopped": self.stop_reason or None}
        if self.index != MAIN:
            out |= {"promised": self.promised, "promised_step": self.promised_step}
        return out


@dataclass(eq=False)
class Document:
    """One prompt's threads and its outcome."""

    index: int
    main: Thread
    parser: MainParser
    chunks: list[Thread] = field(default_factory=list)
    forced: dict[int, list[int]] | None = None  # thread -> its tokens, when teacher-forced
    fork_next: int | None = None  # N of the promise the main thread feeds in this step

    @property
    def threads(self) -> list[Thread]:
        return [self.main, *self.chunks]

    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.threads)

    def answer_bound(self, thread: Thread) -> int:
        """A lower bound of the index, in the spliced answer, of `thread`'s next token."""
        if thread.index == MAIN:
            return len(self.main.tokens) + sum(len(c.tokens) for c in self.chunks)
        return thread.main_before + sum(len(c.tokens) for c in self.chunks[: thread.index + 1])

    def spliced(self) -> tuple[list[int], list[np.ndarray | None], list[tuple[int, str]]]:
        """The answer in the spliced order (each chunk right after its promise, as the
        sequential interpreter writes it), each token's choosing logits (when recorded), and
        the stops: (index where the stopped thread's next token would go, why)."""
        tokens, logits, stops = [], [], []
        after = {c.main_before: c for c in self.chunks}  # chunk j follows the main token closing promise j

        def recorded(thread: Thread, count: int) -> list:
            return (thread.logits + [None] * count)[:count]  # None where nothing was recorded

        for m, token in enumerate(self.main.tokens, 1):
            tokens.append(token)
            logits.append(self.main.logits[m - 1] if m <= len(self.main.logits) else None)
            chunk = after.get(m)
            if chunk is not None:
                tokens.extend(chunk.tokens)
                logits.extend(recorded(chunk, len(chunk.tokens)))
                if chunk.state == "stopped":
                    stops.append((len(tokens), chunk.stop_reason))
        if self.main.state == "stopped":
            stops.append((len(tokens), self.main.stop_reason))
        return tokens, logits, stops


@dataclass
class PastaResult(RowResult):
    """The spliced answer is `tokens`; the extra fields say how it was decoded."""

    threads: list[dict] = field(default_factory=list)  # per thread its timeline
    outcome: str = "ended"  # eos, or why the answer ended: max_tokens, max_positions, malformed: <reason>
    steps: int = 0  # batched steps in which this document's threads ran
    longest_path: int = 0  # tokens on the longest chain that must be decoded one after another

    def extras(self) -> dict:
        return {"outcome": self.outcome, "steps": self.steps, "longest_path": self.longest_path,
                "theoretical_speedup": self.theoretical_speedup, "threads": self.threads}

    @property
    def theoretical_speedup(self) -> float:
        """Tokens / longest sequential path: the speedup of unbounded threads at no cost per row."""
        return len(self.tokens) / max(self.longest_path, 1)



class PastaPolicy(Policy):
    """One document's threads on the rows of one request (the request's row 0 is main)."""

    reserve = 2

    def __init__(self, request: Request, tags: PastaTags, config: dict, budgets: Budgets, schedule: str,
                 forced: list[int] | None = None):
        self.request, self.tags, self.schedule, self.budgets = request, tags, schedule, budgets
        self.max_positions = config.get("max_positions", 1 << 30)
        self.pad = config.get("pad_token_id", 0)
        self.sampling = request.sampling
        self.record_logits = request.return_logits
        self.document = request.stream_index  # the RNG streams' key: (seed, document, thread + 1)
        self.step_count = 0
        self.step_s = [0.0]
        self.start_time = time.perf_counter()
        main = Thread(MAIN, self.document, self._rng(MAIN), state="running")
        main.row = request.new_row(0, main.rng)
        self.doc = Document(self.document, main, MainParser(tags, config["vocab_size"]))
        if forced is not None:
            self.doc.forced = split_threads(forced, tags)
        self.by_row = {id(main.row): main}

    def _rng(self, thread: int) -> np.random.Generator | None:
        if not self.sampling.do_sample:  # a greedy thread draws nothing (a Generator is ~20 us)
            return None
        return rng_stream(self.sampling.seed, self.document, thread + 1)

    # ----- the scheduler's calls -------------------------------------------------------------
    def start(self) -> list[Row]:
        self.start_time = time.perf_counter()
        return [self.doc.main.row]

    def admitted(self, ops: RowOps, row: Row, logits: np.ndarray | None) -> None:
        self._choose(ops, self.doc.main, logits)

    def runnable(self, ops: RowOps) -> list[Row]:
        return [t.row for t in self._runnable(ops)]

    def stepped(self, ops: RowOps, rows: list[Row], logits: list[np.ndarray]) -> None:
        self.step_count += 1
        self.step_s.append(time.perf_counter() - self.start_time)
        for row, row_logits in zip(rows, logits):
            self._after_step(ops, self.by_row[id(row)], row_logits)

    @property
    def done(self) -> bool:
        return self.doc.finished

    def progress(self) -> str:
        return f"{sum(len(t.tokens) for t in self.doc.threads)} of {self.budgets.max_tokens} tokens"

    # ----- which threads step ------------------------------------------------------------------
    def _runnable(self, ops: RowOps) -> list[Thread]:
        """Start the chunks that may start, resolve the main thread's wait, then the threads
        to step: every live one, or under the sequential schedule the live chunk alone (the
        main thread goes on only when no chunk is open)."""
        doc = self.doc
        self._start_chunks(ops)
        if doc.main.state == "waiting" and all(c.finished for c in doc.chunks):
            self._end_wait(ops)
        live = [t for t in doc.threads if t.state in ("running", "flushing")]
        if self.schedule == "sequential":
            return [t for t in live if t is not doc.main][:1] or live
        return live

    def _start_chunks(self, ops: RowOps) -> None:
        """Fork pending chunks, in promise order, while the schedule's live limit (one chunk
        when sequential) and the free rows allow; a fork a budget stops frees its place."""
        limit = 1 if self.schedule == "sequential" else self.budgets.max_live_threads
        live = sum(c.state in ("running", "flushing") for c in self.doc.chunks)
        for c in self.doc.chunks:
            if c.state != "pending":
                continue
            if live >= limit or not ops.can_fork(self.request):
                return
            self._fork(ops, c)
            live += c.state == "running"

    def _end_wait(self, ops: RowOps) -> None:
        """Every chunk has finished: splice them (at a sync) or end the document (at eos)."""
        main = self.doc.main
        main.waits[-1][1] = self.step_count
        if main.tokens[-1] == self.tags.eos:
            self._finish(ops, main, "done")
            return
        if any(c.state == "stopped" for c in self.doc.chunks):
            self._finish(ops, main, "stopped", "a chunk before the sync stopped")
            return
        for c in self.doc.chunks:
            if c.segment is not None:
                ops.append(main.row, c.segment)
                c.segment = None
        main.state = "running"

    def _fork(self, ops: RowOps, chunk: Thread) -> None:
        """Chunk `chunk` gets a row: the main row's prefix up to its promise, and `<async>`."""
        if self.doc.answer_bound(chunk) >= self.budgets.max_tokens:
            self._stop(ops, chunk, "max_tokens")
            return
        if chunk.fork_position >= self.max_positions:
            self._stop(ops, chunk, "max_positions")
            return
        row = self.request.new_row(0, chunk.rng)
        if not ops.fork(self.doc.main.row, row, chunk.fork_length, chunk.fork_state):
            self.request.rows.remove(row)
            return
        chunk.row = row
        self.by_row[id(row)] = chunk
        chunk.fork_state = None
        row.position, row.next_token = chunk.fork_position, self.tags.async_
        chunk.tokens.append(self.tags.async_)
        chunk.logits.append(None)  # forced, never chosen
        chunk.state, chunk.forked_step = "running", self.step_count
        self.request.emit(TokenEvent(self.tags.async_, 0, chunk.fork_position, chunk.index))

    # ----- after a step ------------------------------------------------------------------------
    def _after_step(self, ops: RowOps, t: Thread, logits: np.ndarray) -> None:
        """`t`'s fed token gave `logits`: act on what it fed, then choose its next token."""
        if t.state == "flushing":
            self._close_chunk(ops, t)
            return
        if t.index != MAIN and t.tokens[-1] == self.tags.end_async:  # tokens[0] is <async>
            if ops.lagging:  # </async>'s cross-cache entry is written by one more step
                t.state, t.row.next_token, t.row.position = "flushing", self.pad, t.fork_position
            else:
                self._close_chunk(ops, t)
            return
        if t.index == MAIN and self.doc.fork_next is not None:
            self._promise(ops, self.doc.fork_next)
            self.doc.fork_next = None
        self._choose(ops, t, logits)

    def _promise(self, ops: RowOps, promised: int) -> None:
        """The main row has just fed a promise's `/>`: record chunk j's fork point."""
        doc, main = self.doc, self.doc.main
        chunk = Thread(len(doc.chunks), doc.index, self._rng(len(doc.chunks)))
        chunk.promised, chunk.main_before, chunk.promised_step = promised, len(main.tokens), self.step_count
        chunk.fork_length, chunk.fork_state = ops.snapshot(main.row)
        chunk.fork_position = main.row.position  # p + 1: the promise's `/>` sat at p
        main.row.position += promised  # the main thread resumes at p + N + 1
        doc.chunks.append(chunk)

    def _choose(self, ops: RowOps, t: Thread, logits: np.ndarray) -> None:
        """Append `t`'s next token (chosen, or forced) unless a budget stops it first."""
        doc = self.doc
        if doc.answer_bound(t) >= self.budgets.max_tokens:
            self._stop(ops, t, "max_tokens")
            return
        if t.row.position >= self.max_positions:
            self._stop(ops, t, "max_positions")
            return
        forced = doc.forced.get(t.index) if doc.forced is not None else None
        if forced is not None:
            if len(t.tokens) >= len(forced):
                self._stop(ops, t, "the forced answer ended")
                return
            token = forced[len(t.tokens)]
        elif not self.sampling.do_sample:
            token = int(logits.argmax())
        else:
            token = int(choose_next(logits[None], self.sampling, t.rng)[0])
        if t.index != MAIN:
            token = chunk_token(self.tags, len(t.tokens), token, self.budgets.max_chunk_tokens)
        t.tokens.append(token)
        if self.record_logits:
            t.logits.append(logits.copy())
        t.row.next_token = token
        if self.request.streamed:
            self.request.emit(TokenEvent(token, 0, t.row.position, t.index))
        if t.index != MAIN:
            return
        event = doc.parser.feed(token)
        if event.kind is Kind.FORK:
            doc.fork_next = event.promised
        elif event.kind in (Kind.SYNC, Kind.END):
            t.state = "waiting"
            t.waits.append([self.step_count, None])
        elif event.kind is Kind.MALFORMED:
            self._stop(ops, t, f"malformed: {event.reason}")

    # ----- endings -----------------------------------------------------------------------------
    def _close_chunk(self, ops: RowOps, t: Thread) -> None:
        """A closed chunk's cache slots go aside until the sync; its row is freed now."""
        t.segment = ops.segment(t.row, t.fork_length, t.fork_length + len(t.tokens))
        self._finish(ops, t, "done")

    def _stop(self, ops: RowOps, t: Thread, reason: str) -> None:
        self._finish(ops, t, "stopped", reason)

    def _finish(self, ops: RowOps, t: Thread, state: str, reason: str = "") -> None:
        t.state, t.stop_reason, t.finished_step = state, reason, self.step_count
        if t.index != MAIN and t.row is not None:
            ops.release(t.row)  # the main row stays: pending chunks fork from it

    def result(self) -> list[RowResult]:
        """The spliced answer, cut where the sequential interpreter would have stopped."""
        doc = self.doc
        tokens, logits, stops = doc.spliced()
        cut = min([len(tokens), self.budgets.max_tokens] + [at for at, _ in stops])
        if tokens[cut - 1: cut] == [self.tags.eos]:
            outcome = "eos"
        elif cut == self.budgets.max_tokens:
            outcome = "max_tokens"
        else:
            outcome = min(stops)[1] if stops else "ended"
        reason = "stop" if outcome == "eos" else "length"
        return [PastaResult(tokens[:cut], reason, logits[:cut] if self.record_logits else None,
                            [t.timeline(self.step_s) for t in doc.threads], outcome, self.step_count,
                            longest_path(doc, self.tags))]

def longest_path(doc: Document, tags: PastaTags) -> int:
    """The earliest step each token could be decoded at with a thread per chunk: main tokens
    one after another, a chunk's after its promise, `<sync/>` and eos after every open
    chunk's end. Its last step is the longest sequential path."""
    length_after = {c.main_before: len(c.tokens) for c in doc.chunks}
    step, open_ends = 0, []
    for m, token in enumerate(doc.main.tokens, 1):
        if token in (tags.sync, tags.eos):
            step, open_ends = max([step, *open_ends]), []
        step += 1
        if m in length_after:
            open_ends.append(step + length_after[m])
    return max([step, *open_ends])


def split_threads(answer: list[int], tags: PastaTags) -> dict[int, list[int]]:
    """A spliced answer's tokens per thread (MAIN, then chunk j in promise order): what
    teacher forcing feeds each thread."""
    threads: dict[int, list[int]] = {MAIN: []}
    parser = MainParser(tags)
    chunk: int | None = None
    expect_chunk = False
    for token in answer:
        if chunk is not None:
            threads[chunk].append(token)
            if token == tags.end_async:
                chunk = None
            continue
        if expect_chunk and token == tags.async_:
            chunk = len(threads) - 1
            threads[chunk] = [token]
            expect_chunk = False
            continue
        threads[MAIN].append(token)
        expect_chunk = parser.feed(token).kind is Kind.FORK
    return threads


def splice_events(events: list, tags: PastaTags) -> list[int]:
    """A streamed PASTA answer put back in the spliced order from its token events (each with
    its thread): every chunk right after the main-thread token that closed its promise. It
    is the answer up to where the answer was cut (a thread may have run past the cut)."""
    threads: dict[int, list[int]] = {}
    for event in events:
        threads.setdefault(event.thread, []).append(event.token)
    parser, out, chunk = MainParser(tags), [], 0
    for token in threads.get(MAIN, []):
        out.append(token)
        if parser.feed(token).kind is Kind.FORK:
            out += threads.get(chunk, [])
            chunk += 1
    return out
