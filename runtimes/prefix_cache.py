"""The prefix cache: whole blocks of prompt tokens computed once, reused by every later prompt
that starts with the same tokens.

A block is PREFIX_BLOCK prompt tokens (edgeseq/graph_spec.py). Its key is a hash chain, as
vLLM's automatic prefix caching keys its blocks: block j's key hashes block j-1's key and
block j's token ids, and the chain starts from the artifact's identity (its manifest's
SHA-256) and the request's `cache_salt`, so a block is found only after the same whole
prefix, of the same model, for the same tenant. A block holds, for every cache buffer of
the model, the entries of its slots, and the graph's handoff outputs at its end: what the
prefill of the next block reads.

The blocks live in one slab of fixed-size slots, allocated once (`Slab`), and are copied
into a request's own cache row at admission (the row's cache is one contiguous buffer the
step reads in place; there are no paged blocks to point at). A block is pinned while a
request reads or writes it (its whole chain, during its prefill), and only unpinned blocks
are evicted, least recently used first, when no slot is free; the bound in bytes is a hard
limit. A released chain's first block becomes the most recent, so chains are evicted
tail first. The cache is used from the scheduler's thread only;
`stats` may be read from any thread.

Numbers do not change with the cache on (runtimes/engine.py): every prompt of an artifact
with an `extend` graph is prefilled block by block whether its blocks come from here or
not, so a restored block holds exactly the bits its prefill would compute.
"""

import hashlib
import mmap
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from edgeseq.errors import LoadError

DEFAULT_PREFIX_CACHE_MB = 256.0


@dataclass(eq=False)
class Block:
    key: bytes
    slot: int  # its slot of the slab
    entries: dict[str, np.ndarray]  # cache buffer -> its entries for the block's slots [H, n, Dh] (views of the slab)
    handoffs: dict[str, np.ndarray]  # the prefill's handoff outputs at the block's last slot (views of the slab)
    pins: int = 0


class Slab:
    """The cache's memory: `count` slots of one layout (per name a shape and dtype, the
    growing axis at its full block length), mapped once as anonymous memory the OS backs only
    when touched: a block stored is a copy into a slot, never a fresh allocation (fresh arrays
    cost page faults that, on a virtual machine, cost more than the copy). Once every slot has
    been used, storing a block costs the copy alone."""

    def __init__(self, layout: dict[str, tuple[tuple[int, ...], np.dtype]], capacity: int):
        self.layout, offset = {}, 0
        for name, (shape, dtype) in layout.items():
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self.layout[name] = (offset, shape, np.dtype(dtype))
            offset += size
        self.slot_bytes = offset
        self.count = capacity // offset if offset else 0
        # anonymous shared memory: on the virtual machines measured here its first touch costs
        # a third of private memory's (huge pages included), and that first fill is the
        # cache's only cost over a prefill without it (benchmarks/prefix_cache.py)
        self.memory = mmap.mmap(-1, max(self.count * offset, 1))
        self.bytes = np.frombuffer(self.memory, dtype=np.uint8)

    def views(self, slot: int) -> dict[str, np.ndarray]:
        base = slot * self.slot_bytes
        return {name: self.bytes[base + offset: base + offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
                for name, (offset, shape, dtype) in self.layout.items()}


@dataclass
class PrefixCacheStats:
    hit_tokens: int = 0  # prompt tokens restored from blocks
    miss_tokens: int = 0  # prompt tokens prefilled
    evictions: int = 0
    blocks: int = 0  # resident
    bytes: int = 0  # resident
    capacity_bytes: int = 0
    block_tokens: int = 0
    inserted: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


def unsupported_reason(manifest: dict) -> str | None:
    """Why an artifact cannot share prompt prefixes (one line), or None where it can."""
    decode, config = manifest["decode"], manifest["model_config"]
    if decode.get("extend") in manifest["graphs"]:
        return None
    if decode["shape"] == "decoder_only" or config.get("causal_encoder"):
        return "this artifact was compiled without the extend graph a blocked prefill needs; recompile it"
    return ("its encoder reads the whole source at once (bidirectional attention), so a prefix's states "
            "depend on the tokens after it")


def check_bound(prefix_cache_mb, block_bytes: int) -> int:
    """The cache's bound in bytes for `load(prefix_cache_mb=...)` (0: off); one-line errors
    for a bound that is not a number, negative, or too small to hold one block."""
    if isinstance(prefix_cache_mb, bool) or not isinstance(prefix_cache_mb, (int, float)) or prefix_cache_mb != prefix_cache_mb:
        raise LoadError(f"prefix_cache_mb={prefix_cache_mb!r} is not a number of megabytes",
                        "pass a number such as 64, or 0 to turn the prefix cache off")
    if prefix_cache_mb < 0:
        raise LoadError(f"prefix_cache_mb={prefix_cache_mb} is negative",
                        "pass a bound in megabytes (e.g. 64), or 0 to turn the prefix cache off")
    capacity = int(prefix_cache_mb * 2**20)
    if 0 < capacity < block_bytes:
        raise LoadError(f"prefix_cache_mb={prefix_cache_mb} holds no block: one block of this model takes "
                        f"{block_bytes / 2**20:.3f} MB",
                        f"pass at least {block_bytes / 2**20:.3f} (a few blocks' worth or more), or 0 to turn it off")
    return capacity


class PrefixCache:
    """Blocks by key, least recently used first, in a slab of `capacity` bytes at most (laid
    out from the first block stored: every block of a model has the same parts)."""

    def __init__(self, identity: str, block_tokens: int, capacity: int):
        self.identity = identity.encode()
        self.block_tokens = block_tokens
        self.capacity = capacity
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.slab: Slab | None = None
        self.free: list[int] = []
        self.stats = PrefixCacheStats(capacity_bytes=capacity, block_tokens=block_tokens)

    def keys(self, tokens: list[int], salt: str | None) -> list[bytes]:
        """The chain of keys of `tokens`' whole blocks."""
        root = hashlib.sha256(self.identity + b"\0" + (b"salt:" + salt.encode() if salt is not None else b"")).digest()
        keys, parent = [], root
        ids = np.asarray(tokens, dtype="<i8")
        for j in range(len(tokens) // self.block_tokens):
            chunk = ids[j * self.block_tokens:(j + 1) * self.block_tokens]
            parent = hashlib.sha256(parent + chunk.tobytes()).digest()
            keys.append(parent)
        return keys

    def lookup(self, keys: list[bytes]) -> list[Block]:
        """The cached blocks of the longest prefix of `keys`, pinned (`release` them when read)."""
        found = []
        for key in keys:
            block = self.blocks.get(key)
            if block is None:
                break
            self.blocks.move_to_end(key)
            block.pins += 1
            found.append(block)
        return found

    def release(self, chain: list[Block]) -> None:
        """A request is done reading `chain` (its prompt's blocks, first to last): unpin them,
        and make the first the most recently used, so eviction takes a chain from its tail
        and a prefix stays findable as long as any of it is kept (as vLLM frees a request's
        blocks tail first)."""
        for block in reversed(chain):
            block.pins -= 1
            if block.key in self.blocks:
                self.blocks.move_to_end(block.key)

    def insert(self, key: bytes, entries: dict[str, np.ndarray], handoffs: dict[str, np.ndarray]) -> Block | None:
        """Keep a block just computed (copied into a slot), unless one is there already;
        returns it pinned (the caller releases it with its chain), or None where every slot
        holds a pinned block (the bound is a hard limit; the block is then not kept)."""
        block = self.blocks.get(key)
        if block is None:
            slot = self._take_slot(entries, handoffs)
            if slot is None:
                return None
            views = self.slab.views(slot)
            kept = {}
            for name, values in (*entries.items(), *handoffs.items()):
                view = views[name][:, : values.shape[1]] if name in entries else views[name]
                view[...] = values
                kept[name] = view
            block = Block(key, slot, {k: kept[k] for k in entries}, {k: kept[k] for k in handoffs})
            self.blocks[key] = block
            self.stats.inserted += 1
            self._count()
        self.blocks.move_to_end(key)
        block.pins += 1
        return block

    def _take_slot(self, entries, handoffs) -> int | None:
        if self.slab is None:
            layout = {name: ((v.shape[0], self.block_tokens, *v.shape[2:]), v.dtype) for name, v in entries.items()}
            layout |= {name: (v.shape, v.dtype) for name, v in handoffs.items()}
            self.slab = Slab(layout, self.capacity)
            self.free = list(range(self.slab.count - 1, -1, -1))
        if not self.free:
            self._evict_one()
        return self.free.pop() if self.free else None

    def _evict_one(self) -> None:
        """Free the slot of the least recently used unpinned block, if there is one. A pinned
        block is never dropped: a request is reading it."""
        for key, block in self.blocks.items():  # oldest first
            if block.pins == 0:
                del self.blocks[key]
                self.free.append(block.slot)
                self.stats.evictions += 1
                self._count()
                return

    def _count(self) -> None:
        self.stats.blocks = len(self.blocks)
        self.stats.bytes = len(self.blocks) * (self.slab.slot_bytes if self.slab else 0)
