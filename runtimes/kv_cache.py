"""The KV cache manager: every per-row buffer of a loaded model, owned in one place.

One preallocated numpy buffer per state input of the step graphs (graph_spec roles
`cache`, `encoder_output`, `handoff`), [rows, ...] with the row axis first. Active rows
are always slots 0 .. n-1, so a step is fed `buffer[:n]`: a contiguous view, wrapped
once as a backend tensor and not copied. A step only reads the caches; the new keys and
values it returns are written here, at each row's own slot, so rows of different ages
share a step. Buffers grow in blocks (positions and source length by half again, rows
double, when full): a copy per growth, never per step. A step attends over every slot of
the positions and source axes, so they grow by half, not double, to keep the padding a
step reads small (PASTA at batch 1, k = 4: the parallel schedule 1.62x the sequential one
against 1.47x with doubling, measured in alternation), and shrink again (halve at least)
once every row has fitted in a quarter of them for a while: one long request does not
leave every later step attending over its width.

Rows are forked (a new row gets a copy of another's cache prefix: no recomputed prefix),
copied in place (a beam reorder: row b becomes row a),
spliced (a cache segment of one row, or one copied aside earlier, appended to another's
and made visible), swapped (so the rows a step runs come first) and released (the last
row moves into the freed slot so the active rows stay contiguous).
"""

from dataclasses import dataclass

import numpy as np

from edgeseq.errors import GenerateError

# cache and source slots are allocated in multiples of this: a step attends over every slot,
# so a small block keeps short rows' steps short (the demo's batch-256 step, 20-token
# sources and 4 new tokens, ran over 64 x 64 slots with a block of 64; over 32 x 16 now)
BLOCK = 16
# an axis shrinks only after this many steps in a row could have shrunk it, and not below
# SHRINK_FLOOR: a shrink is a reallocation, and one per request (PASTA's documents at batch
# 1 shrank at each start and grew again at their splices) costs more than the narrower
# steps save; a server whose long request has left pays it once
SHRINK_PATIENCE = 32
SHRINK_FLOOR = 4 * BLOCK
FIRST_ROWS = 4


@dataclass
class BufferSpec:
    name: str
    role: str  # cache, encoder_output or handoff
    dtype: np.dtype
    dims: list  # as in the manifest, "batch" first
    lag: int = 0  # a cache's valid slots are cache_length - lag
    pad: float = 0.0  # what unused encoder_output slots hold
    axis: int | None = None  # the growing axis ("cache" or "source"), None for none


def _round_up(n: int, block: int = BLOCK) -> int:
    return max(block, -(-n // block) * block)


class CacheManager:
    """Buffers for up to `max_rows` rows; slot i of every buffer belongs to `owners[i]`."""

    def __init__(self, specs: list[BufferSpec], max_rows: int):
        self.specs = {s.name: s for s in specs}
        self.max_rows = max_rows
        self.row_capacity = min(FIRST_ROWS, max_rows)
        self.capacity = {"cache": BLOCK, "source": BLOCK}  # slots per symbolic axis
        self.owners: list = []  # the sequence in each active slot
        self.lengths = np.zeros(self.row_capacity, dtype=np.int64)  # valid self-cache slots per row
        self.source_lengths = np.zeros(self.row_capacity, dtype=np.int64)  # encoder-output slots written per row
        self.buffers = {s.name: self._fresh(s, self.row_capacity) for s in specs}
        self.generation = 0  # bumped on every reallocation: wrapped views must be remade
        self.narrow_steps = 0  # consecutive steps after which an axis could have shrunk

    # ----- shapes ----------------------------------------------------------------------------
    def _shape(self, spec: BufferSpec, rows: int) -> tuple[int, ...]:
        out = []
        for d in spec.dims:
            if d == "batch":
                out.append(rows)
            elif isinstance(d, str):
                out.append(self.capacity[d] if d in self.capacity else 1)
            else:
                out.append(int(d))
        return tuple(out)

    def _fresh(self, spec: BufferSpec, rows: int) -> np.ndarray:
        if spec.pad == 0:  # calloc'd: the OS zeroes pages as they are touched, not all up front
            return np.zeros(self._shape(spec, rows), dtype=spec.dtype)
        return np.full(self._shape(spec, rows), spec.pad, dtype=spec.dtype)

    def _reallocate(self, rows: int) -> None:
        """New buffers at the current capacities; the active rows' contents copied over."""
        n = len(self.owners)
        for name, old in self.buffers.items():
            new = self._fresh(self.specs[name], rows)
            region = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, new.shape))
            region = (slice(0, n), *region[1:])
            new[region] = old[region]
            self.buffers[name] = new
        for name in ("lengths", "source_lengths"):
            lengths = np.zeros(rows, dtype=np.int64)
            lengths[:n] = getattr(self, name)[:n]
            setattr(self, name, lengths)
        self.row_capacity = rows
        self.generation += 1

    def reserve(self, axis: str, slots: int) -> None:
        """Make room for `slots` positions along a symbolic axis ("cache" or "source")."""
        if slots > self.capacity[axis]:
            self.capacity[axis] = max(_round_up(slots), _round_up(self.capacity[axis] * 3 // 2))
            self._reallocate(self.row_capacity)

    def fit(self, cache_slots: int) -> None:
        """Before a step: room for `cache_slots` positions, and each axis shrunk where every
        active row has fitted in a quarter of it for SHRINK_PATIENCE steps (to twice what they
        use, so a row growing again does not reallocate at once, and not below SHRINK_FLOOR)."""
        self.reserve("cache", cache_slots)
        narrow = {}
        for axis, lengths, extra in (("cache", self.lengths, 1), ("source", self.source_lengths, 0)):
            if self.capacity[axis] <= SHRINK_FLOOR:  # the common case: nothing to shrink, nothing to compute
                continue
            used = int(lengths[:self.rows].max(initial=0)) + extra  # every row's, not only the stepped ones
            target = max(_round_up(2 * used), SHRINK_FLOOR)
            if 4 * used <= self.capacity[axis] and target < self.capacity[axis]:
                narrow[axis] = target
        self.narrow_steps = self.narrow_steps + 1 if narrow else 0
        if self.narrow_steps >= SHRINK_PATIENCE:
            self.capacity.update(narrow)
            self.narrow_steps = 0
            self._reallocate(self.row_capacity)

    # ----- rows ------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.owners)

    def add_row(self, owner) -> int:
        """A fresh slot for `owner` (empty caches, encoder outputs at their pad value)."""
        if self.rows >= self.max_rows:
            raise GenerateError(f"all {self.max_rows} cache rows are in use", "raise max_batch or wait for rows to finish")
        if self.rows == self.row_capacity:
            self._reallocate(min(2 * self.row_capacity, self.max_rows))
        slot = self.rows
        self.owners.append(owner)
        self.lengths[slot] = self.source_lengths[slot] = 0
        for name, spec in self.specs.items():
            if spec.role == "encoder_output":
                self.buffers[name][slot] = spec.pad
        owner.slot = slot
        return slot

    def _filled(self, name: str, slot: int) -> tuple:
        """Index of what a row holds in one buffer: a cache's written slots (the rest is
        masked by the row's length, so a move need not copy it), anything else whole (an
        encoder output's unused slots must keep their pad: the source mask reads them)."""
        spec = self.specs[name]
        if spec.role != "cache":
            return (slot,)
        return (slot, slice(None), slice(0, max(int(self.lengths[slot]) - spec.lag, 0)))

    def release(self, slot: int) -> None:
        """Free a slot; the last active row moves into it (one row copied) so rows stay 0..n-1."""
        last = self.rows - 1
        if slot != last:
            for name, buffer in self.buffers.items():
                held = self._filled(name, last)
                buffer[(slot, *held[1:])] = buffer[held]
            self.lengths[slot] = self.lengths[last]
            self.source_lengths[slot] = self.source_lengths[last]
            self.owners[slot] = self.owners[last]
            self.owners[slot].slot = slot
        self.owners.pop()
        self.generation += 1  # the active views are one row shorter

    def swap(self, a: int, b: int) -> None:
        """Exchange two active rows (what each holds of every buffer, length and owner): how a
        scheduler puts the rows it steps first, since a step runs slots 0..n-1."""
        if a == b:
            return
        for name, buffer in self.buffers.items():
            held_a, held_b = self._filled(name, a), self._filled(name, b)
            kept = buffer[held_a].copy()
            buffer[(a, *held_b[1:])] = buffer[held_b]
            buffer[(b, *held_a[1:])] = kept
        self.lengths[[a, b]] = self.lengths[[b, a]]
        self.source_lengths[[a, b]] = self.source_lengths[[b, a]]
        self.owners[a], self.owners[b] = self.owners[b], self.owners[a]
        self.owners[a].slot, self.owners[b].slot = a, b

    def row_state(self, slot: int) -> dict[str, np.ndarray]:
        """A copy of a row's non-cache state (handoffs, encoder outputs): what a later fork
        from this point needs besides the cache prefix."""
        return {name: self.buffers[name][slot].copy() for name, spec in self.specs.items() if spec.role != "cache"}

    def fork(self, slot: int, owner, length: int | None = None, state: dict[str, np.ndarray] | None = None) -> int:
        """A new row whose caches copy row `slot`'s first `length` slots (default: all; its
        prefix, not recomputed) and whose other state is `state` (default: row `slot`'s)."""
        new = self.add_row(owner)
        length = int(self.lengths[slot]) if length is None else length
        for name, spec in self.specs.items():
            buffer = self.buffers[name]
            if spec.role == "cache":
                buffer[new, :, : length - spec.lag] = buffer[slot, :, : length - spec.lag]
            else:
                buffer[new] = buffer[slot] if state is None else state[name]
        self.lengths[new] = length
        self.source_lengths[new] = self.source_lengths[slot]
        return new

    def copy_row(self, source: int, target: int) -> None:
        """Row `target` becomes a copy of row `source` in place (its caches up to its length,
        its handoffs and length): a beam reorder. Both rows must be one request's, whose
        encoder outputs are the same and so are not copied."""
        length = int(self.lengths[source])
        for name, spec in self.specs.items():
            buffer = self.buffers[name]
            if spec.role == "cache":
                buffer[target, :, : length - spec.lag] = buffer[source, :, : length - spec.lag]
            elif spec.role != "encoder_output":
                buffer[target] = buffer[source]
        self.lengths[target] = length

    def segment(self, slot: int, start: int, end: int) -> dict[str, np.ndarray]:
        """A copy of row `slot`'s cache slots start..end-1, every cache buffer. A lagging
        cache's entries for those slots must all be written (a finished chunk's last
        entry needs one more step: runtimes/policies/pasta.py flushes it)."""
        return {name: self.buffers[name][slot, :, start:end].copy()
                for name, spec in self.specs.items() if spec.role == "cache"}

    def append(self, into: int, segment: dict[str, np.ndarray]) -> None:
        """Append a segment to row `into`'s caches, visible from its next step. A lagging
        cache holds `lag` fewer entries than the row's length (the rest are pending in the
        row's handoff), so the segment goes right after the entries it has: the pending
        ones land after it, and attention does not care about slot order."""
        count = next(iter(segment.values())).shape[1] if segment else 0
        if count <= 0:
            return
        length = int(self.lengths[into])
        self.reserve("cache", length + count)
        for name, values in segment.items():
            at = length - self.specs[name].lag
            self.buffers[name][into, :, at : at + count] = values
        self.lengths[into] = length + count

    def splice(self, into: int, source: int, start: int, end: int) -> None:
        """Append row `source`'s cache slots start..end-1 to row `into`'s (see `append`)."""
        if end > start:
            self.append(into, self.segment(source, start, end))

    # ----- writes ----------------------------------------------------------------------------
    def write_step(self, new: list[tuple[str, np.ndarray]], n: int) -> None:
        """One step's new keys/values, (cache name, [n, H, 1, Dh]) each, into rows 0..n-1 at
        each row's slot length - lag: one loop for every cache (about twenty at batch 1,
        where this bookkeeping is a measurable part of a ~0.6 ms step)."""
        if n <= 4:  # a plain slice per row costs a fraction of fancy indexing (PASTA's few threads)
            for i, at in enumerate(self.lengths[:n].tolist()):
                for name, values in new:
                    self.buffers[name][i, :, at - self.specs[name].lag] = values[i, :, 0]
            return
        # wider: each (row, head)'s new Dh-vector is one row of the buffer seen as [R*H*C, Dh],
        # so one fancy index over that first axis writes them all (computed once per layout)
        where: dict[tuple, np.ndarray] = {}
        for name, values in new:
            buffer, lag = self.buffers[name], self.specs[name].lag
            rows, heads, slots = buffer.shape[:3]
            key = (heads, slots, lag)
            if key not in where:
                at = (np.arange(n)[:, None] * heads + np.arange(heads)[None]) * slots
                where[key] = (at + (self.lengths[:n] - lag)[:, None]).reshape(-1)
            buffer.reshape(rows * heads * slots, -1)[where[key]] = values.reshape(n * heads, -1)

    def write_prefix(self, name: str, slot: int, values: np.ndarray) -> None:
        """A prefill's entries [H, L, Dh] into a row's first L slots."""
        self.buffers[name][slot, :, : values.shape[1]] = values

    def write_row(self, name: str, slot: int, value: np.ndarray) -> None:
        """Per-request state (an encoder output, a handoff) into one row; an encoder output
        shorter than the buffer fills its leading part along the source axis."""
        self.write_rows(name, slot, value[None])

    def write_rows(self, name: str, first: int, values: np.ndarray) -> None:
        """`write_row` for the consecutive rows first, first + 1, ... at once (a batch just admitted)."""
        spec, buffer, rows = self.specs[name], self.buffers[name], slice(first, first + values.shape[0])
        if spec.axis is None:
            buffer[rows] = values
            return
        width = values.shape[spec.axis]
        index = [rows] + [slice(None)] * (buffer.ndim - 1)
        index[spec.axis] = slice(0, width)
        buffer[tuple(index)] = values
        self.source_lengths[rows] = np.maximum(self.source_lengths[rows], width)

    def view(self, name: str, n: int) -> np.ndarray:
        return self.buffers[name][:n]
