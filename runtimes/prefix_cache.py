"""The prefix cache: whole blocks of prompt tokens computed once, reused by every later prompt
that starts with the same tokens.

A block is PREFIX_BLOCK prompt tokens (edgeseq/graph_spec.py). Its key is a hash chain, as
vLLM's automatic prefix caching keys its blocks: block j's key hashes block j-1's key and
block j's token ids, and the chain starts from the artifact's identity (its manifest's
SHA-256) and the request's `cache_salt`, so a block is found only after the same whole
prefix, of the same model, for the same tenant. A block holds, for every cache buffer of
the model, the entries of its slots, and the graph's handoff outputs at its end: what the
prefill of the next block reads.

The blocks are copied into a request's own cache row at admission (the row's cache is one
contiguous buffer the step reads in place; there are no paged blocks to point at). A block
is pinned while a request reads or writes it (its whole chain, during its prefill), and
only unpinned blocks are evicted, least recently used first, under a bound in bytes; a
released chain's first block becomes the most recent, so chains are evicted tail first. The cache is used from the scheduler's thread only;
`stats` may be read from any thread.

Numbers do not change with the cache on (runtimes/engine.py): every prompt of an artifact
with an `extend` graph is prefilled block by block whether its blocks come from here or
not, so a restored block holds exactly the bits its prefill would compute.
"""

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from edgeseq.errors import LoadError

DEFAULT_PREFIX_CACHE_MB = 256.0


@dataclass(eq=False)
class Block:
    key: bytes
    entries: dict[str, np.ndarray]  # cache buffer -> its entries for the block's slots [H, n, Dh]
    handoffs: dict[str, np.ndarray]  # the prefill's handoff outputs at the block's last slot
    nbytes: int = 0
    pins: int = 0

    def __post_init__(self):
        self.nbytes = sum(a.nbytes for a in self.entries.values()) + sum(a.nbytes for a in self.handoffs.values())


@dataclass
class PrefixCacheStats:
    hit_tokens: int = 0  # prompt tokens restored from blocks
    miss_tokens: int = 0  # prompt tokens prefilled
    evictions: int = 0
    blocks: int = 0  # resident
    bytes: int = 0  # resident
    capacity_bytes: int = 0
    block_tokens: int = 0
    inserted: int = field(default=0)

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
    """Blocks by key, least recently used first; `capacity` bytes at most."""

    def __init__(self, identity: str, block_tokens: int, capacity: int):
        self.identity = identity.encode()
        self.block_tokens = block_tokens
        self.capacity = capacity
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()
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
        self._evict()

    def insert(self, key: bytes, entries: dict[str, np.ndarray], handoffs: dict[str, np.ndarray]) -> Block | None:
        """Keep a block just computed (copies of its entries), unless one is there already;
        returns it pinned (the caller releases it with its chain), or None if it cannot fit."""
        block = self.blocks.get(key)
        if block is None:
            block = Block(key, {k: v.copy() for k, v in entries.items()}, {k: v.copy() for k, v in handoffs.items()})
            if block.nbytes > self.capacity:
                return None
            self.blocks[key] = block
            self.stats.inserted += 1
            self.stats.bytes += block.nbytes
        self.blocks.move_to_end(key)
        block.pins += 1
        self._evict()
        self.stats.blocks = len(self.blocks)
        return block

    def _evict(self) -> None:
        """Drop least recently used unpinned blocks while over the bound. A pinned block is
        never dropped: the bound may be exceeded while requests read more than it holds."""
        if self.stats.bytes <= self.capacity:
            return
        for key in list(self.blocks):  # oldest first
            if self.stats.bytes <= self.capacity:
                break
            if self.blocks[key].pins:
                continue
            block = self.blocks.pop(key)
            self.stats.bytes -= block.nbytes
            self.stats.evictions += 1
        self.stats.blocks = len(self.blocks)

    def clear(self) -> None:
        self.blocks.clear()
        self.stats.blocks = self.stats.bytes = 0
