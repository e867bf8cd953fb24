"""Engine benchmarks: continuous batching against one-at-a-time calls, and step time by position.

`concurrency_report`: N client threads call `generate` at once with prompts of different
lengths and different max_new_tokens (greedy); the same calls are then made one at a time
by one client. Both run on the same loaded model in every round, the order alternating
between rounds; each figure is the median over rounds.

`step_ms_by_position`: the time of one decode step at batch 1 with the cache filled to a
position, beside what that step must read (every weight once, plus the whole cache
capacity the step attends over) and the bandwidth roofline for those bytes.
"""

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgeseq.runtimes import load, read_artifact
from edgeseq.runtimes.backend import make_backend
from edgeseq.runtimes.engine import Engine
from edgeseq.runtimes.requests import Row

POSITIONS = (32, 256, 1024)


def client_requests(config: dict[str, Any], clients: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt, max_new_tokens) per client: prompts of 4..48 tokens, 16..64 new tokens."""
    rng = np.random.default_rng(seed)
    room = config["max_positions"]
    out = []
    for _ in range(clients):
        length = int(rng.integers(4, min(48, room // 2)))
        new = int(rng.integers(16, min(64, room - length) + 1))
        out.append((rng.integers(3, config["vocab_size"], size=length).tolist(), new))
    return out


def concurrency_report(path: str | Path, clients: int = 16, threads: int | None = None, rounds: int = 3,
                       on_progress=None) -> dict[str, Any]:
    say = on_progress or (lambda _: None)
    with load(path, threads=threads, max_batch=clients) as model:
        reqs = client_requests(model.config, clients)
        tokens = sum(n for _, n in reqs)
        call = lambda r: model.generate([r[0]], r[1], stop_tokens=[])  # noqa: E731

        def one_at_a_time() -> float:
            start = time.perf_counter()
            for r in reqs:
                call(r)
            return time.perf_counter() - start

        def together() -> float:
            barrier = threading.Barrier(clients + 1)

            def client(r):
                barrier.wait()
                call(r)

            with ThreadPoolExecutor(clients) as pool:
                futures = [pool.submit(client, r) for r in reqs]
                barrier.wait()
                start = time.perf_counter()
                for f in futures:
                    f.result()
                return time.perf_counter() - start

        together()  # warm-up: the cache grows to the batch once
        samples: dict[str, list[float]] = {"together": [], "alone": []}
        steps = rows = 0  # batched steps of the concurrent runs, and the rows they carried
        for r in range(rounds):
            say(f"concurrency round {r + 1}/{rounds}")
            order = (("together", together), ("alone", one_at_a_time))
            for name, fn in order if r % 2 == 0 else order[::-1]:
                steps0, rows0 = model.scheduler.steps, model.scheduler.rows_stepped
                samples[name].append(tokens / fn())
                if name == "together":
                    steps += model.scheduler.steps - steps0
                    rows += model.scheduler.rows_stepped - rows0
    tok_s, alone = statistics.median(samples["together"]), statistics.median(samples["alone"])
    return {
        "clients": clients,
        "requests": [{"prompt_tokens": len(p), "max_new_tokens": n} for p, n in reqs],
        "tokens": tokens,
        "rounds": rounds,
        "tokens_per_s": tok_s,
        "one_at_a_time_tokens_per_s": alone,
        "speedup": tok_s / alone,
        "mean_batch_size": rows / max(steps, 1),
        "samples": samples,
    }


def cache_bytes_per_step(engine: Engine) -> int:
    """Bytes of per-row state one step at batch 1 reads: every cache and encoder output it is
    fed, at its allocated capacity (the step attends over all of it, masked)."""
    fed = {t["name"] for g in engine.step_graphs for t in engine.graph_inputs[g]}
    return int(sum(b[0].nbytes for name, b in engine.cache.buffers.items() if name in fed))


def step_ms_by_position(path: str | Path, bandwidth_gb_s: float, threads: int | None = None,
                        positions: tuple[int, ...] = POSITIONS, repeats: int = 20) -> list[dict[str, Any]]:
    """Decode step time at batch 1 with `position` tokens before the new one (prompt or source),
    the bytes that step reads and the bandwidth roofline; positions past max_positions are skipped."""
    artifact = read_artifact(path)
    config = artifact.config
    weights = artifact.manifest["stats"]["weight_bytes_per_token"]
    backend = make_backend(artifact, threads=threads or 1, spin=True)
    engine = Engine(artifact, backend, max_rows=1)
    rng = np.random.default_rng(0)
    rows = []
    try:
        for position in positions:
            # the measured steps must stay inside one cache capacity and max_positions
            length = position - repeats - 1
            if position > config["max_positions"] or length < 1:
                continue
            seq = Row(rng.integers(3, config["vocab_size"], size=length).tolist())
            first = engine.admit([seq])[0]
            seq.next_token = int(first.argmax()) if first is not None else seq.next_token
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                engine.step([seq])
                times.append(time.perf_counter() - start)
            state = cache_bytes_per_step(engine)
            engine.release(seq)
            step_s = min(times)
            roofline_s = (weights + state) / (bandwidth_gb_s * 1e9)
            rows.append({"position": position, "step_ms": 1e3 * step_s, "weight_bytes": weights, "cache_bytes": state,
                         "roofline_ms": 1e3 * roofline_s, "roofline_fraction": roofline_s / step_s})
    finally:
        engine.close()
        backend.close()
    return rows
