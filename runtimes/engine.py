"""The engine: admit rows (the graph run once per request), then `step` every active row.

Driven entirely by the manifest: `decode.shape` says how a request starts (an encoder
over the source, or a prefill over the prompt), `decode.step` names the graphs of one
step (StagFormer: one per stack), and each graph input's role and `source` say what to
feed it and which output updates it (edgeseq/graph_spec.py). State lives in the cache
manager (runtimes/kv_cache.py); a step reads it in place and writes back only what is
new, so rows of different ages and lengths share every step.

The stages of a split step run concurrently: one long-lived worker thread per stage but
the last, which the calling thread runs; ONNX Runtime releases the GIL while it runs.
A failure in any graph, a stage worker's included, surfaces as a GenerateError naming
the graph; the engine stays usable for the next step.
"""

import threading

import numpy as np

from edgeseq.errors import GenerateError, LoadError, StepError

from .artifact import Artifact
from .backend import Backend
from .blocked_prefill import BlockedPrefill
from .kv_cache import BufferSpec, CacheManager
from .requests import Row

STATE_ROLES = ("cache", "encoder_output", "handoff")


class StageWorker:
    """A daemon thread running one graph whenever the engine hands it feeds; `stop` ends it.

    The hand-off is two raw locks used as binary signals, one step in flight at a time:
    `submit` releases `_start`, the worker runs the graph and releases `_done`, `result`
    acquires it. A step thus costs two futex wake-ups and no allocation (a queue and a
    Future per step cost several lock round trips and objects: measurable at batch 1,
    where a StagFormer stage runs for a few hundred microseconds).
    """

    def __init__(self, run, graph: str):
        self.run = run
        self.graph = graph
        self._start, self._done = threading.Lock(), threading.Lock()
        self._start.acquire()
        self._done.acquire()
        self._feeds: dict | None = None
        self._result: dict | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self.thread = threading.Thread(target=self._loop, name=f"edgeseq-{graph}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self._start.acquire()
            if self._stopping:
                return
            try:
                self._result, self._error = self.run(self.graph, self._feeds), None
            except BaseException as e:  # handed to the submitter, which re-raises
                self._result, self._error = None, e
            self._done.release()

    def submit(self, feeds: dict) -> None:
        self._feeds = feeds
        self._start.release()

    def result(self) -> dict:
        """Wait for the submitted step; its outputs, or its error raised here."""
        self._done.acquire()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result

    def stop(self) -> None:
        self._stopping = True
        self._start.release()
        self.thread.join(timeout=10)


def _growing_axis(dims: list) -> int | None:
    return next((i for i, d in enumerate(dims) if d in ("cache", "source")), None)


class Engine:
    """One loaded model's decoding machinery; not thread-safe (the scheduler owns it)."""

    def __init__(self, artifact: Artifact, backend: Backend, max_rows: int, step_graphs: list[str] | None = None,
                 concurrent: bool = False, handoff_sources: dict[str, str] | None = None):
        manifest = artifact.manifest
        self.artifact, self.backend, self.config = artifact, backend, artifact.config
        decode = manifest["decode"]
        self.shape = decode["shape"]
        self.once = decode["once"]
        self.step_graphs = step_graphs or decode["step"]
        graphs = manifest["graphs"]
        self.graph_inputs = {g: graphs[g]["inputs"] for g in graphs}
        # every state input of the model's step graphs (those run or not) gets a buffer
        state = {t["name"]: t for g in decode["step"] for t in graphs[g]["inputs"] if t["role"] in STATE_ROLES}
        self.state = state
        specs = [BufferSpec(t["name"], t["role"], np.dtype(t["dtype"]), t["dims"], t.get("lag", 0), t.get("pad", 0.0),
                            _growing_axis(t["dims"]) if t["role"] == "encoder_output" else None)
                 for t in state.values()]
        self.cache = CacheManager(specs, max_rows)
        produced = {t["name"] for g in self.step_graphs for t in graphs[g]["outputs"]}
        # which step output updates which buffer: new keys/values are written at each row's
        # slot, handoffs replace the row's value
        self.writes = [(t["source"], name) for name, t in state.items() if t["role"] == "cache" and t["source"] in produced]
        self.handoff_sources = {name: t["source"] for name, t in state.items() if t["role"] == "handoff"}
        self.handoff_sources.update(handoff_sources or {})
        self.handoffs = [(out, name) for name, out in self.handoff_sources.items() if out in produced]
        self.logits_output = next((t["name"] for g in self.step_graphs for t in graphs[g]["outputs"]
                                   if t["role"] == "logits"), None)
        if self.logits_output is None:
            raise LoadError(f"no graph of the step ({', '.join(self.step_graphs)}) has a logits output in the manifest",
                            "recompile the artifact with `edgeseq compile`")
        self.once_logits = next((t["name"] for t in graphs[self.once]["outputs"] if t["role"] == "logits"), None)
        # an artifact with an extend graph prefills (or encodes) every prompt block by block
        self.blocked = BlockedPrefill(self, decode) if decode.get("extend") in graphs else None
        self.prefix_cache = None  # a PrefixCache, set by load() where the artifact supports one
        self.ids = np.zeros((max_rows, 1), dtype=np.int64)
        self.positions = np.zeros((max_rows, 1), dtype=np.int64)
        self._feeds: tuple | None = None  # (key, per-graph feeds) of wrapped views, remade when rows change
        self.prefilled_rows = 0  # rows the once-per-request graph has run over (a fork runs none)
        self.workers = [StageWorker(self._run, g) for g in self.step_graphs[:-1]] if concurrent else []

    # ----- graphs ------------------------------------------------------------------------------
    def _run(self, graph: str, feeds: dict) -> dict:
        try:
            return self.backend.run(graph, feeds)
        except GenerateError:
            raise
        except Exception as e:  # the backend's own error types
            raise StepError(f"graph {graph!r} failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                                "the requests of this step failed; the model keeps serving others") from e

    def feeds(self, n: int) -> dict[str, dict]:
        """Per step graph, its feeds over rows 0..n-1: views of the preallocated buffers,
        wrapped once and reused while the rows and capacities stay the same."""
        key = (n, self.cache.generation)
        if self._feeds is None or self._feeds[0] != key:
            c = self.cache
            views = {"token_ids": self.ids[:n], "positions": self.positions[:n], "cache_length": c.lengths[:n]}
            wrapped = {}
            for g in self.step_graphs:
                wrapped[g] = {t["name"]: self.backend.tensor(views[t["role"]] if t["role"] in views else c.view(t["name"], n))
                              for t in self.graph_inputs[g]}
            self._feeds = (key, wrapped)
        return self._feeds[1]

    def _run_step(self, feeds: dict[str, dict]) -> dict:
        if not self.workers:
            outputs = {}
            for g in self.step_graphs:
                outputs.update(self._run(g, feeds[g]))
            return outputs
        for w in self.workers:
            w.submit(feeds[w.graph])
        outputs, error = {}, None
        try:
            outputs.update(self._run(self.step_graphs[-1], feeds[self.step_graphs[-1]]))
        except GenerateError as e:
            error = e
        for w in self.workers:  # wait for every stage, even after a failure: none may run on
            try:
                outputs.update(w.result())
            except GenerateError as e:
                error = error or e
        if error:
            raise error
        return outputs

    # ----- rows --------------------------------------------------------------------------------
    def run_once(self, rows: list[list[int]]) -> tuple[dict, dict]:
        """The once-per-request graph over rows (right-padded source for an encoder, left-padded
        prompt for a prefill); returns its numpy feeds and outputs by name."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.config["pad_token_id"], dtype=np.int64)
        mask = np.zeros_like(ids)
        for b, r in enumerate(rows):
            span = slice(0, len(r)) if self.shape == "encoder_decoder" else slice(width - len(r), width)
            ids[b, span] = r
            mask[b, span] = 1
        by_role = {"token_ids": ids, "mask": mask, "positions": np.maximum(mask.cumsum(axis=1) - 1, 0)}
        feeds = {t["name"]: by_role[t["role"]] for t in self.graph_inputs[self.once]}
        outputs = self._run(self.once, feeds)
        self.prefilled_rows += len(rows)
        return feeds, {k: self.backend.numpy(v) for k, v in outputs.items()}

    def admit(self, rows: list[Row]) -> list[np.ndarray | None]:
        """Give new rows cache slots and run the once-per-request graph for them.

        Encoder-decoder: the encoder's outputs become the rows' read-only state, and each row
        starts its first step from bos (no logits yet). Decoder-only: the prefill fills the
        rows' caches and returns each row's logits for its first generated token.
        """
        if self.blocked is None:
            return self._admit_batched(rows)
        # a prompt shorter than one block reads and writes no cache block: such prompts are
        # run together at their padded width (one graph call, not one per row)
        results: list[np.ndarray | None] = [None] * len(rows)
        short, blocked = [], []
        for i, s in enumerate(rows):
            (short if len(s.prompt) < self.blocked.block_tokens else blocked).append(i)
        if short:
            for i, logits in zip(short, self._admit_batched([rows[i] for i in short])):
                results[i] = logits
        for i in blocked:
            self.prefilled_rows += 1
            results[i] = self.blocked.admit(rows[i])
        return results

    def _admit_batched(self, rows: list[Row]) -> list[np.ndarray | None]:
        """`admit` for rows prefilled (or encoded) together by the once-per-request graph."""
        c = self.cache
        feeds, outputs = self.run_once([s.prompt for s in rows])
        if self.shape == "encoder_decoder":
            values = {**feeds, **outputs}
            c.reserve("source", max(len(s.prompt) for s in rows))
            first = c.rows
            for s in rows:
                c.add_row(s)
                s.next_token = self.config["bos_token_id"]
                s.position = len(s.prompt) if self.config.get("consecutive_positions") else 0
            for name, t in self.state.items():  # the new rows are consecutive slots: one copy per output
                if t["role"] == "encoder_output":
                    c.write_rows(name, first, values[t["source"]])
            return [None] * len(rows)
        c.reserve("cache", max(len(s.prompt) for s in rows) + 1)
        logits = outputs[self.once_logits]
        for i, s in enumerate(rows):
            slot = c.add_row(s)
            length = len(s.prompt)
            for name, t in self.state.items():
                if t["role"] == "cache" and t.get("init"):
                    full = outputs[t["init"]][i]  # [H, P - lag, Dh], left-padded
                    lag = t.get("lag", 0)
                    c.write_prefix(name, slot, full[:, full.shape[1] - (length - lag):])
            for name, source in self.handoff_sources.items():
                c.write_row(name, slot, outputs[source][i])
            c.lengths[slot] = length
            s.position = length
        return [logits[i, -1] for i in range(len(rows))]

    def step(self, rows: list[Row]) -> np.ndarray:
        """One token for every active row (`rows` are the cache's owners in slots 0..n-1, in slot order):
        returns the logits [n, V] that choose each row's next token."""
        c = self.cache
        n = len(rows)
        c.fit(int(c.lengths[:n].max()) + 1)
        self.ids[:n, 0] = [s.next_token for s in rows]
        self.positions[:n, 0] = [s.position for s in rows]
        outputs = self._run_step(self.feeds(n))
        numpy = self.backend.numpy
        c.write_step([(name, numpy(outputs[out])) for out, name in self.writes], n)
        for out, name in self.handoffs:
            c.buffers[name][:n] = numpy(outputs[out])
        c.lengths[:n] += 1
        for s in rows:
            s.position += 1
        return self.backend.numpy(outputs[self.logits_output])[:, -1]

    def fork(self, parent: Row, child: Row, length: int | None = None,
             state: dict[str, np.ndarray] | None = None) -> None:
        """`child` gets its own row holding a copy of `parent`'s caches (the first `length`
        slots when given) and state (`state` when given: a `cache.row_state` snapshot)."""
        self.cache.fork(parent.slot, child, length, state)
        child.position = parent.position
        child.next_token = parent.next_token

    def reorder(self, source: Row, target: Row) -> None:
        """`target`'s row becomes a copy of `source`'s in place (a beam takes another's history)."""
        self.cache.copy_row(source.slot, target.slot)
        target.position = source.position
        target.next_token = source.next_token

    def splice(self, into: Row, source: Row, start: int, end: int) -> None:
        """Append `source`'s cache slots start..end-1 to `into`'s cache (visible next step)."""
        self.cache.splice(into.slot, source.slot, start, end)

    @property
    def lagging(self) -> bool:
        """Whether some cache lags its row's length (StagFormer's cross caches): a row's last
        token's entry there is written one step later."""
        return any(spec.lag for spec in self.cache.specs.values())

    def release(self, row: Row) -> None:
        if row.slot is not None:
            self.cache.release(row.slot)
            row.slot = None

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
