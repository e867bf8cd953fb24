"""The bandwidth a decode step can read its working set at: the roofline that is a limit.

DRAM copy bandwidth is no limit for a step whose weights and cache fit in the last-level
cache: such a step beat it (RED `small`, 13.7 MB of weights, at 125% of it). So the
roofline is measured at the step's own working-set size, warm, the way a step reads it: a
float32 matrix-vector product over a matrix of that size (numpy's BLAS, every core),
already read once, best of N. A working set under the last-level cache gets that cache's
bandwidth, a larger one memory's; `memory_level` says which size class it fell in.
"""

import time
from functools import cache
from pathlib import Path

import numpy as np

COLUMNS = 1024


@cache
def last_level_cache_bytes() -> int | None:
    """The largest CPU cache's size (Linux sysfs), or None where it is not reported."""
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * scale
        best = max(best or 0, size)
    return best


def memory_level(nbytes: int) -> str:
    llc = last_level_cache_bytes()
    if llc is None:
        return "unknown"
    return "last-level cache" if nbytes <= llc else "DRAM"


def read_bandwidth_gb_s(nbytes: int, repeats: int = 7) -> float:
    """GB/s at which a matrix-vector product reads an `nbytes` float32 matrix, warm, best of N."""
    rows = max(1, int(nbytes) // (4 * COLUMNS))
    matrix = np.ones((rows, COLUMNS), dtype=np.float32)
    vector = np.ones(COLUMNS, dtype=np.float32)
    matrix @ vector  # warm: a working set that fits stays in the cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - start)
    return matrix.nbytes / best / 1e9


def roofline_at(nbytes: int) -> dict:
    """The read bandwidth for a working set of `nbytes` and the level that served it."""
    return {"working_set_bytes": int(nbytes), "bandwidth_gb_s": read_bandwidth_gb_s(nbytes),
            "memory_level": memory_level(nbytes)}
