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
from edgeseq.graph_spec import PREFIX_BLOCK

from .artifact import Artifact
from .backend import Backend
from .kv_cache import BufferSpec, CacheManager
from .prefix_cache import PrefixCache
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
        # a decoder-only artifact with an extend graph prefills block by block (see `_admit_blocked`)
        self.extend = decode.get("extend") if decode.get("extend") in graphs else None
        self.block_tokens = int(decode.get("prefix_block", PREFIX_BLOCK))
        self.extend_logits = next((t["name"] for t in graphs[self.extend]["outputs"] if t["role"] == "logits"),
                                  None) if self.extend else None
        self.prefix_cache: PrefixCache | None = None  # set by load() where the artifact supports one
        if self.extend:
            self._mask_inputs = self._compute_mask_inputs()
            self._extend_outputs = self._compute_extend_outputs()
            self._handoff_names = self._compute_handoff_names()
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
        if self.extend is not None:
            return [self._admit_blocked(s) for s in rows]
        c = self.cache
        feeds, outputs = self.run_once([s.prompt for s in rows])
        if self.shape == "encoder_decoder":
            values = {**feeds, **outputs}
            c.reserve("source", max(len(s.prompt) for s in rows))
            for i, s in enumerate(rows):
                slot = c.add_row(s)
                for name, t in self.state.items():
                    if t["role"] == "encoder_output":
                        c.write_row(name, slot, values[t["source"]][i])
                s.next_token = self.config["bos_token_id"]
                s.position = len(s.prompt) if self.config.get("consecutive_positions") else 0
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

    # ----- blocked prefill and the prefix cache ---------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """What one prefix-cache block of this model holds: the entries of its tokens in every
        place `_places` names, and the handoffs at its end."""
        specs = {t["name"]: t for t in self.graph_inputs[self.extend]} | self.state
        total = 0
        for name, _, start, end in self._places(1):
            t = specs[name]
            per_slot = int(np.prod([d for d in t["dims"] if isinstance(d, int)])) * np.dtype(t["dtype"]).itemsize
            total += per_slot * (end - start)
        for name in self._handoff_names:
            t = next((t for t in self.state.values() if t.get("source") == name), None)
            if t is not None:
                total += int(np.prod([d for d in t["dims"] if isinstance(d, int)])) * np.dtype(t["dtype"]).itemsize
        return total

    def _admit_blocked(self, row: Row) -> np.ndarray | None:
        """Prefill (decoder-only) or encode (a causal encoder) one row's prompt block by block,
        each block at batch 1 over the exact-length states before it: a decoder-only
        artifact's first block by its prefill graph, every other block by its extend graph.
        The whole blocks found in the prefix cache are copied in instead of computed: since
        every prompt is run this way, cache on or off, a restored block holds the bits its
        computation gives, and so does everything after it. A decoder-only prompt's last
        block is always computed (its logits choose the first new token)."""
        c, cache, size = self.cache, self.prefix_cache, self.block_tokens
        prompt, decoder_only = row.prompt, self.shape == "decoder_only"
        c.reserve("cache" if decoder_only else "source", len(prompt) + decoder_only)
        slot = c.add_row(row)
        keys = cache.keys(prompt, row.request.cache_salt) if cache is not None else []
        reusable = (len(prompt) - 1) // size if decoder_only else len(prompt) // size
        hits = cache.lookup(keys[:reusable]) if cache is not None else []
        carry, found = self._empty_carry(), len(hits)
        try:
            for j, block in enumerate(hits):
                self._restore_block(slot, j, block, carry)
            logits = None
            for begin in range(found * size, len(prompt), size):
                chunk = prompt[begin:begin + size]
                if decoder_only and begin == 0:
                    logits = self._prefill_first_block(slot, chunk, carry)
                else:
                    logits = self._extend_block(slot, chunk, begin, carry)
                if cache is not None and begin // size < len(keys):
                    kept = cache.insert(keys[begin // size], *self._block_contents(slot, begin // size, carry))
                    if kept is not None:
                        hits.append(kept)  # pinned with the rest of the chain until the prefill ends
            if cache is not None:
                cache.stats.hit_tokens += found * size
                cache.stats.miss_tokens += len(prompt) - found * size
        finally:
            if cache is not None:
                cache.release(hits)
        self.prefilled_rows += 1
        if decoder_only:
            for name, source in self.handoff_sources.items():
                c.write_row(name, slot, carry[source][0])
            c.lengths[slot] = len(prompt)
            row.position = len(prompt)
            return logits
        for name, t in self.state.items():  # the source mask: every slot of this source is real
            if t["role"] == "encoder_output" and t["source"] in self._mask_inputs:
                c.write_row(name, slot, np.ones(len(prompt), dtype=c.specs[name].dtype))
        row.next_token = self.config["bos_token_id"]
        row.position = len(prompt) if self.config.get("consecutive_positions") else 0
        return None

    def _compute_mask_inputs(self) -> set[str]:
        return {t["name"] for t in self.graph_inputs[self.once] if t["role"] == "mask"}

    def _empty_carry(self) -> dict[str, np.ndarray]:
        """What a blocked prefill carries from block to block outside the row's buffers: the
        extend graph's own caches (a causal encoder's keys/values), empty, at exact length."""
        carry = {}
        for t in self.graph_inputs[self.extend]:
            if t["role"] == "cache" and t["name"] not in self.cache.specs:
                dims = [1 if d == "batch" else 0 if isinstance(d, str) else d for d in t["dims"]]
                carry[t["name"]] = np.zeros(dims, dtype=np.dtype(t["dtype"]))
        return carry

    def _places(self, j: int):
        """Where block j's contents live: (name, kind, start, end) for the row's caches (a
        lagging cache's entries `lag` slots earlier), the encoder outputs the extend graph
        writes, and the carried caches."""
        size = self.block_tokens
        for name, spec in self.cache.specs.items():
            if spec.role == "cache" and self.shape == "decoder_only":
                yield name, "row", max(0, j * size - spec.lag), (j + 1) * size - spec.lag
            elif spec.role == "encoder_output" and self.state[name]["source"] in self._extend_outputs:
                yield name, "row", j * size, (j + 1) * size
        for t in self.graph_inputs[self.extend]:
            if t["role"] == "cache" and t["name"] not in self.cache.specs:
                yield t["name"], "carry", j * size, (j + 1) * size

    def _compute_extend_outputs(self) -> set[str]:
        return {t["name"] for t in self.artifact.manifest["graphs"][self.extend]["outputs"]}


    def _row_region(self, name: str, slot: int, start: int, end: int) -> tuple:
        """Index of slots start..end-1 of one row's buffer along its growing axis."""
        spec = self.cache.specs[name]
        axis = 2 if spec.role == "cache" else spec.axis
        index = [slot] + [slice(None)] * (self.cache.buffers[name].ndim - 1)
        index[axis] = slice(start, end)
        return tuple(index)

    def _block_contents(self, slot: int, j: int, carry: dict[str, np.ndarray]):
        """(entries, handoffs) of block j, just computed: what the prefix cache keeps."""
        entries = {}
        for name, kind, start, end in self._places(j):
            entries[name] = self.cache.buffers[name][self._row_region(name, slot, start, end)] if kind == "row" \
                else carry[name][0, :, start:end]
        return entries, {k: v for k, v in carry.items() if k not in entries and k in self._handoff_names}

    def _restore_block(self, slot: int, j: int, block, carry: dict[str, np.ndarray]) -> None:
        for name, kind, start, _ in self._places(j):
            entries = block.entries[name]
            if kind == "row":
                self.cache.buffers[name][self._row_region(name, slot, start, start + entries.shape[1])] = entries
            else:
                carry[name] = np.concatenate([carry[name], entries[None]], axis=2)
        carry.update(block.handoffs)

    def _compute_handoff_names(self) -> set[str]:
        """The handoff outputs a block leaves for the next block or the first step."""
        return set(self.handoff_sources.values()) | {
            t["source"] for t in self.graph_inputs[self.extend] if t["role"] == "handoff"}

    def _prefill_first_block(self, slot: int, chunk: list[int], carry: dict[str, np.ndarray]) -> np.ndarray:
        """A decoder-only prompt's first block by the prefill graph (no past)."""
        ids = np.asarray([chunk], dtype=np.int64)
        by_role = {"token_ids": ids, "positions": np.arange(len(chunk), dtype=np.int64)[None], "mask": np.ones_like(ids)}
        outputs = self._run(self.once, {t["name"]: by_role[t["role"]] for t in self.graph_inputs[self.once]})
        numpy = self.backend.numpy
        for name, t in self.state.items():
            if t["role"] == "cache" and t.get("init"):
                self.cache.write_prefix(name, slot, numpy(outputs[t["init"]])[0])
        carry.update({name: np.array(numpy(outputs[name])) for name in self._handoff_names if name in outputs})
        return numpy(outputs[self.once_logits])[0, -1]

    def _extend_block(self, slot: int, chunk: list[int], begin: int, carry: dict[str, np.ndarray]) -> np.ndarray | None:
        """One block at prompt slot `begin` by the extend graph, over the row's caches (cut to
        their exact length) and the carried state; writes its entries where they live and
        returns the logits at its last token (None for an encoder)."""
        c, numpy = self.cache, self.backend.numpy
        feeds, writes = {}, []
        for t in self.graph_inputs[self.extend]:
            name, role = t["name"], t["role"]
            if role == "token_ids":
                feeds[name] = np.asarray([chunk], dtype=np.int64)
            elif role == "positions":
                feeds[name] = np.arange(begin, begin + len(chunk), dtype=np.int64)[None]
            elif role == "cache" and name in c.specs:
                end = begin - c.specs[name].lag
                feeds[name] = np.ascontiguousarray(c.buffers[name][slot:slot + 1, :, :end])
                writes.append((name, t["source"], end))
            elif role == "cache":
                feeds[name] = carry[name]
            else:  # a handoff: the previous block's output
                feeds[name] = carry[t["source"]]
        outputs = self._run(self.extend, feeds)
        for name, source, at in writes:
            values = numpy(outputs[source])[0]
            c.buffers[name][slot, :, at:at + values.shape[1]] = values
        for t in self.graph_inputs[self.extend]:
            if t["role"] == "cache" and t["name"] not in c.specs:
                carry[t["name"]] = np.concatenate([carry[t["name"]], numpy(outputs[t["source"]])], axis=2)
        for name, t in self.state.items():
            if t["role"] == "encoder_output" and t["source"] in outputs:
                values = numpy(outputs[t["source"]])[0]
                c.buffers[name][self._row_region(name, slot, begin, begin + values.shape[c.specs[name].axis - 1])] = values
        carry.update({name: np.array(numpy(outputs[name])) for name in self._handoff_names if name in outputs})
        return numpy(outputs[self.extend_logits])[0, -1] if self.extend_logits else None

    def step(self, rows: list[Row]) -> np.ndarray:
        """One token for every active row (`rows` are the cache's owners in slots 0..n-1, in slot order):
        returns the logits [n, V] that choose each row's next token."""
        c = self.cache
        n = len(rows)
        c.reserve("cache", int(c.lengths[:n].max()) + 1)
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
