"""Blocked prefill: a prompt run block by block, with whole blocks taken from the prefix cache.

An artifact with an `extend` graph (a decoder-only StagFormer or PASTA model, RED with a
causal encoder) has every prompt prefilled (decoder) or encoded (RED) in blocks of
`prefix_block` tokens, each at batch 1 over the exact-length states before it: a
decoder's first block by its prefill graph, every other block by the extend graph. The
whole blocks found in the prefix cache (runtimes/prefix_cache.py) are copied in instead
of computed. Since every prompt is run this way, cache on or off, a restored block holds
exactly the bits its computation gives, and so does everything computed after it.

Where a block's contents live: the row's caches in the cache manager (a decoder's self
and cross caches; a lagging cache's entries `lag` slots earlier), the encoder outputs the
extend graph writes (RED's source keys/values), and caches only the prefill itself reads
(RED's encoder keys/values), which are carried in buffers of this object. The handoffs a
block leaves (StagFormer's stack outputs) are carried from block to block and kept with it.

Feeds are copies into reused buffers, never fresh arrays: a multi-megabyte array made per
block costs a page fault per 4 KiB, more than the copy itself.
"""

import numpy as np

from edgeseq.graph_spec import PREFIX_BLOCK

from .requests import Row


def _nbytes(t: dict) -> int:
    """Bytes of one slot of a tensor spec (its fixed dims; the batch and growing axes count 1)."""
    return int(np.prod([d for d in t["dims"] if isinstance(d, int)])) * np.dtype(t["dtype"]).itemsize


class Scratch:
    """One reusable flat buffer per name; `view` is a contiguous array of any shape over it."""

    def __init__(self):
        self.flat: dict[str, np.ndarray] = {}

    def view(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        n = int(np.prod(shape))
        buffer = self.flat.get(name)
        if buffer is None or buffer.size < n or buffer.dtype != dtype:
            buffer = np.empty(max(n, 2 * buffer.size if buffer is not None else n), dtype=dtype)
            self.flat[name] = buffer
        return buffer[:n].reshape(shape)


class BlockedPrefill:
    """The blocked prefill of one engine (not thread-safe: the scheduler's thread runs it)."""

    def __init__(self, engine, decode: dict):
        self.engine = engine
        self.cache = engine.cache
        self.extend = decode["extend"]
        self.block_tokens = int(decode.get("prefix_block", PREFIX_BLOCK))
        self.decoder_only = engine.shape == "decoder_only"
        self.inputs = engine.graph_inputs[self.extend]
        outputs = engine.artifact.manifest["graphs"][self.extend]["outputs"]
        self.outputs = {t["name"] for t in outputs}
        self.logits = next((t["name"] for t in outputs if t["role"] == "logits"), None)
        self.masks = {t["name"] for t in engine.graph_inputs[engine.once] if t["role"] == "mask"}
        # the handoff outputs a block leaves for the next block or for the row's first step
        self.handoff_names = set(engine.handoff_sources.values()) | {
            t["source"] for t in self.inputs if t["role"] == "handoff"}
        self.carried = {t["name"]: t for t in self.inputs if t["role"] == "cache" and t["name"] not in self.cache.specs}
        self.carry: dict[str, np.ndarray] = {}  # [1, H, capacity, Dh] per carried cache
        self.scratch = Scratch()

    # ----- where a block lives ---------------------------------------------------------------
    def places(self, j: int):
        """(name, where, start, end) of block j's contents: "row" (a cache-manager buffer,
        along its growing axis) or "carry" (a buffer of this object)."""
        size = self.block_tokens
        for name, spec in self.cache.specs.items():
            if spec.role == "cache" and self.decoder_only:
                yield name, "row", max(0, j * size - spec.lag), (j + 1) * size - spec.lag
            elif spec.role == "encoder_output" and self.engine.state[name]["source"] in self.outputs:
                yield name, "row", j * size, (j + 1) * size
        for name in self.carried:
            yield name, "carry", j * size, (j + 1) * size

    @property
    def block_bytes(self) -> int:
        """What one prefix-cache block holds: its tokens' entries in every place, and the handoffs."""
        specs = {t["name"]: t for t in self.inputs} | self.engine.state
        total = sum(_nbytes(specs[name]) * (end - start) for name, _, start, end in self.places(1))
        outputs = {t["name"]: t for t in self.engine.artifact.manifest["graphs"][self.extend]["outputs"]}
        return total + sum(_nbytes(outputs[name]) for name in self.handoff_names if name in outputs)

    def _region(self, name: str, slot: int, start: int, end: int) -> tuple:
        """Index of slots start..end-1 of one row of a cache-manager buffer along its growing axis."""
        spec = self.cache.specs[name]
        index = [slot] + [slice(None)] * (self.cache.buffers[name].ndim - 1)
        index[2 if spec.role == "cache" else spec.axis] = slice(start, end)
        return tuple(index)

    def _reserve_carry(self, length: int) -> None:
        for name, t in self.carried.items():
            buffer = self.carry.get(name)
            if buffer is None or buffer.shape[2] < length:
                capacity = max(length, 2 * buffer.shape[2] if buffer is not None else length)
                dims = [1 if d == "batch" else capacity if isinstance(d, str) else d for d in t["dims"]]
                fresh = np.zeros(dims, dtype=np.dtype(t["dtype"]))
                if buffer is not None:
                    fresh[:, :, : buffer.shape[2]] = buffer
                self.carry[name] = fresh

    def _past(self, name: str, slot: int, end: int) -> np.ndarray:
        """Slots 0..end-1 of a cache (the row's, or a carried one) as a contiguous [1, H, end, Dh] feed."""
        source = self.cache.buffers[name][slot:slot + 1] if name in self.cache.specs else self.carry[name]
        view = self.scratch.view(name, (1, source.shape[1], end, *source.shape[3:]), source.dtype)
        np.copyto(view, source[:, :, :end])
        return view

    # ----- one row ---------------------------------------------------------------------------
    def admit(self, row: Row) -> np.ndarray | None:
        """Give `row` a cache slot and prefill its prompt; the logits for its first token (None
        for an encoder). A decoder's last block (the one holding the prompt's last token) is
        always computed: its logits choose the first new token."""
        c, cache, size = self.cache, self.engine.prefix_cache, self.block_tokens
        prompt = row.prompt
        c.reserve("cache" if self.decoder_only else "source", len(prompt) + self.decoder_only)
        self._reserve_carry(len(prompt))
        slot = c.add_row(row)
        keys = cache.keys(prompt, row.request.cache_salt) if cache is not None else []
        reusable = (len(prompt) - 1) // size if self.decoder_only else len(prompt) // size
        chain = cache.lookup(keys[:reusable]) if cache is not None else []
        found, handoffs, logits = len(chain), {}, None
        try:
            for j, block in enumerate(chain):
                self._restore(slot, j, block)
                handoffs = block.handoffs
            for begin in range(found * size, len(prompt), size):
                chunk = prompt[begin:begin + size]
                if self.decoder_only and begin == 0:
                    logits, handoffs = self._first_block(slot, chunk)
                else:
                    logits, handoffs = self._extend_block(slot, chunk, begin, handoffs)
                j = begin // size
                if cache is not None and j < len(keys):
                    kept = cache.insert(keys[j], self._contents(slot, j), handoffs)
                    if kept is not None:
                        chain.append(kept)  # pinned with the rest of the chain until the prefill ends
            if cache is not None:
                cache.stats.hit_tokens += found * size
                cache.stats.miss_tokens += len(prompt) - found * size
        finally:
            if cache is not None:
                cache.release(chain)
        return self._finish(row, slot, handoffs, logits)

    def _finish(self, row: Row, slot: int, handoffs: dict[str, np.ndarray], logits):
        c, engine, length = self.cache, self.engine, len(row.prompt)
        if self.decoder_only:
            for name, source in engine.handoff_sources.items():
                c.write_row(name, slot, handoffs[source][0])
            c.lengths[slot] = length
            row.position = length
            return logits
        for name, t in engine.state.items():  # the source mask: every slot of this source is real
            if t["role"] == "encoder_output" and t["source"] in self.masks:
                c.write_row(name, slot, np.ones(length, dtype=c.specs[name].dtype))
        row.next_token = engine.config["bos_token_id"]
        row.position = length if engine.config.get("consecutive_positions") else 0
        return None

    def _contents(self, slot: int, j: int) -> dict[str, np.ndarray]:
        """Block j's entries, just computed (views: the prefix cache copies what it keeps)."""
        return {name: self.cache.buffers[name][self._region(name, slot, start, end)] if where == "row"
                else self.carry[name][0, :, start:end] for name, where, start, end in self.places(j)}

    def _restore(self, slot: int, j: int, block) -> None:
        for name, where, start, _ in self.places(j):
            entries = block.entries[name]
            if where == "row":
                self.cache.buffers[name][self._region(name, slot, start, start + entries.shape[1])] = entries
            else:
                self.carry[name][0, :, start:start + entries.shape[1]] = entries

    def _kept_handoffs(self, outputs: dict) -> dict[str, np.ndarray]:
        numpy = self.engine.backend.numpy
        return {name: np.array(numpy(outputs[name])) for name in self.handoff_names if name in outputs}

    def _first_block(self, slot: int, chunk: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A decoder's first block by the prefill graph (no past)."""
        engine, numpy = self.engine, self.engine.backend.numpy
        ids = np.asarray([chunk], dtype=np.int64)
        by_role = {"token_ids": ids, "positions": np.arange(len(chunk), dtype=np.int64)[None], "mask": np.ones_like(ids)}
        outputs = engine._run(engine.once, {t["name"]: by_role[t["role"]] for t in engine.graph_inputs[engine.once]})
        for name, t in engine.state.items():
            if t["role"] == "cache" and t.get("init"):
                self.cache.write_prefix(name, slot, numpy(outputs[t["init"]])[0])
        return numpy(outputs[engine.once_logits])[0, -1], self._kept_handoffs(outputs)

    def _extend_block(self, slot: int, chunk: list[int], begin: int, handoffs: dict[str, np.ndarray]):
        """One block at prompt slot `begin` by the extend graph, over the caches before it and
        the previous block's handoffs; writes its entries where they live. Returns the logits
        at its last token (None for an encoder) and its handoffs."""
        c, engine, numpy = self.cache, self.engine, self.engine.backend.numpy
        feeds, writes = {}, []
        for t in self.inputs:
            name, role = t["name"], t["role"]
            if role == "token_ids":
                feeds[name] = np.asarray([chunk], dtype=np.int64)
            elif role == "positions":
                feeds[name] = np.arange(begin, begin + len(chunk), dtype=np.int64)[None]
            elif role == "cache":
                end = begin - (c.specs[name].lag if name in c.specs else 0)
                feeds[name] = self._past(name, slot, end)
                writes.append((name, t["source"], end))
            else:  # a handoff: the previous block's output
                feeds[name] = handoffs[t["source"]]
        outputs = engine._run(self.extend, feeds)
        for name, source, at in writes:
            values = numpy(outputs[source])[0]
            target = c.buffers[name][slot] if name in c.specs else self.carry[name][0]
            target[:, at:at + values.shape[1]] = values
        for name, t in engine.state.items():
            if t["role"] == "encoder_output" and t["source"] in outputs:
                values = numpy(outputs[t["source"]])[0]
                c.buffers[name][self._region(name, slot, begin, begin + values.shape[c.specs[name].axis - 1])] = values
        logits = numpy(outputs[self.logits])[0, -1] if self.logits else None
        return logits, self._kept_handoffs(outputs)
