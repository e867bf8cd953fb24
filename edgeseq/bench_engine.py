"""Engine benchmarks: continuous batching against one-at-a-time calls, and step time by position.

`concurrency_report`: N client threads call `generate` at once with prompts of different
lengths and different max_new_tokens (greedy); the same calls are then made one at a time
by one client. Both run on the same loaded model in every round, the order alternating
between rounds; each figure is the median over rounds.

`shared_prefix_report`: time to first token of N concurrent requests that share a long
prompt prefix, with the prefix cache on against off (one load, the cache attached and
detached, order alternating), and the same for N requests that share nothing (what the
cache costs).

`step_ms_by_position`: the time of one decode step at batch 1 with the cache filled to a
position, beside what that step must read (every weight once, plus the whole cache
capacity the step attends over) and the bandwidth roofline for those bytes.
"""

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgeseq.errors import GenerateError
from edgeseq.runtimes import SamplingOptions, load, read_artifact
from edgeseq.runtimes.backend import make_backend
from edgeseq.runtimes.engine import Engine
from edgeseq.runtimes.requests import Row
from edgeseq.working_set import roofline_at

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


def together_vs_alone(model, calls: list[Callable[[], Any]], tokens: int, rounds: int, on_progress=None) -> dict[str, Any]:
    """Every call from its own thread at once against the same calls one after another, on the
    same loaded model (order alternating round by round, median over rounds): tokens/s of
    each, their ratio, and the mean rows per step of the concurrent runs."""
    say = on_progress or (lambda _: None)

    def one_at_a_time() -> float:
        start = time.perf_counter()
        for call in calls:
            call()
        return time.perf_counter() - start

    def together() -> float:
        barrier = threading.Barrier(len(calls) + 1)

        def client(call):
            barrier.wait()
            call()

        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(client, call) for call in calls]
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
    return {"tokens": tokens, "rounds": rounds, "tokens_per_s": tok_s, "one_at_a_time_tokens_per_s": alone,
            "speedup": tok_s / alone, "mean_batch_size": rows / max(steps, 1), "samples": samples}


def concurrency_report(path: str | Path, clients: int = 16, threads: int | None = None, rounds: int = 3,
                       on_progress=None) -> dict[str, Any]:
    with load(path, threads=threads, max_batch=clients) as model:
        reqs = client_requests(model.config, clients)
        calls = [lambda r=r: model.generate([r[0]], r[1], stop_tokens=[], use_generation_defaults=False) for r in reqs]
        report = together_vs_alone(model, calls, sum(n for _, n in reqs), rounds, on_progress)
    return {"clients": clients, "requests": [{"prompt_tokens": len(p), "max_new_tokens": n} for p, n in reqs], **report}


def samples_first_token_report(path: str | Path, n: int = 4, threads: int | None = None, rounds: int = 5,
                               repetitions: int = 5, prompt_length: int = 32) -> dict[str, Any]:
    """Time to the first token of an n-sample request against an n = 1 request (streamed, seeded
    sampling), alternating which goes first: best of `repetitions` within a round, median over
    rounds. n samples share one prefill; the forks copy its cache rows."""
    with load(path, threads=threads) as model:
        prompt = np.random.default_rng(0).integers(3, model.config["vocab_size"], size=prompt_length).tolist()
        sampling = SamplingOptions(do_sample=True, temperature=1.0, seed=0)

        def first_token_s(count: int) -> float:
            start = time.perf_counter()
            stream = model.stream(prompt, 8, stop_tokens=[], sampling=sampling, n=count)
            stream.next_event()
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed

        for count in (1, n):
            first_token_s(count)  # warm-up
        samples: dict[int, list[float]] = {1: [], n: []}
        for r in range(rounds):
            for count in (1, n) if r % 2 == 0 else (n, 1):
                samples[count].append(min(first_token_s(count) for _ in range(repetitions)))
    one, many = statistics.median(samples[1]), statistics.median(samples[n])
    return {"n": n, "prompt_tokens": prompt_length, "rounds": rounds, "first_token_ms_n1": 1e3 * one,
            f"first_token_ms_n{n}": 1e3 * many, "ratio": many / one}


def first_tokens_s(model, prompts: list[list[int]], salt: str | None = None) -> float:
    """Every prompt streamed from its own thread at once; the mean seconds from the common
    start to each request's first token."""
    barrier = threading.Barrier(len(prompts) + 1)
    waits: list[float] = [0.0] * len(prompts)
    options = {"cache_salt": salt} if salt is not None else {}

    def client(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        stream = model.stream(prompts[i], 2, stop_tokens=[], **options)
        stream.next_event()
        waits[i] = time.perf_counter() - start
        stream.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(timeout=600)
    return sum(waits) / len(waits)


def shared_prefix_report(path: str | Path, prefix_tokens: int = 512, clients: int = 16, suffix_tokens: int = 16,
                         threads: int | None = None, rounds: int = 3, repetitions: int = 2,
                         on_progress=None) -> dict[str, Any]:
    """Mean time to first token of `clients` concurrent requests, prefix cache on against off:
    `shared` prompts are one `prefix_tokens` prefix (cached by an earlier request, as in a
    service whose instruction every request repeats) plus a fresh suffix each; `distinct`
    prompts of the same length share nothing. One loaded model, its cache attached and
    detached between runs (two loads of one artifact differ by more than the cache does:
    the first loaded ran up to 30% slower here, whichever had the cache). Best of
    `repetitions` per round, order alternating, median over rounds; every repetition draws
    new suffixes and new prompts, so nothing but the shared prefix is ever found in the
    cache. Timed with the cache full; `first_fill_slowdown` is the one run before it was
    (its memory touched the first time)."""
    say = on_progress or (lambda _: None)
    rng = np.random.default_rng(0)
    with load(path, threads=threads, max_batch=clients) as model:
        cache = model.engine.prefix_cache
        if cache is None:
            raise GenerateError(f"{path} has no prefix cache to measure",
                                "bench an artifact whose `edgeseq inspect` says it supports one")
        vocab, limit = model.config["vocab_size"], model.config["max_positions"]
        if prefix_tokens + suffix_tokens + 2 > limit:
            raise GenerateError(f"a {prefix_tokens}-token prefix and {suffix_tokens}-token suffixes do not fit "
                                f"max_positions={limit}", f"pass --shared-prefix of at most {limit - suffix_tokens - 2}")
        prefix = rng.integers(3, vocab, size=prefix_tokens).tolist()

        def prompts(shared: bool) -> list[list[int]]:
            head = (lambda: prefix) if shared else (lambda: rng.integers(3, vocab, size=prefix_tokens).tolist())
            return [head() + rng.integers(3, vocab, size=suffix_tokens).tolist() for _ in range(clients)]

        def timed(state: str, shared: bool) -> float:
            model.engine.prefix_cache = cache if state == "on" else None  # between runs: the scheduler is idle
            return first_tokens_s(model, prompts(shared))

        timed("off", False)  # warm-up
        first_fill = {"on": timed("on", False), "off": timed("off", False)}
        for _ in range(64):  # run the cache full (every slot used), as in a service that has run a while
            if cache.stats.evictions:
                break
            say("filling the prefix cache")
            timed("on", False)
        model.engine.prefix_cache = cache
        model.generate([prefix + [3]], 2, stop_tokens=[])  # the prefix seen once, as a service would
        hits0 = cache.stats.hit_tokens
        samples: dict[str, list[float]] = {f"{case}_{state}": [] for case in ("shared", "distinct") for state in ("on", "off")}
        for r in range(rounds):
            say(f"shared prefix round {r + 1}/{rounds}")
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for case in ("shared", "distinct"):
                for state in order:
                    samples[f"{case}_{state}"].append(min(timed(state, case == "shared") for _ in range(repetitions)))
        model.engine.prefix_cache = cache
        stats = cache.stats.to_json()
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    return {"prefix_tokens": prefix_tokens, "suffix_tokens": suffix_tokens, "clients": clients, "rounds": rounds,
            "first_token_ms": ms, "shared_speedup": ms["shared_off"] / ms["shared_on"],
            "distinct_slowdown": ms["distinct_on"] / ms["distinct_off"],
            "first_fill_slowdown": first_fill["on"] / first_fill["off"],
            "hit_tokens": stats["hit_tokens"] - hits0, "cache": stats,
            "samples_ms": {k: [1e3 * x for x in v] for k, v in samples.items()}}


def cache_bytes_per_step(engine: Engine) -> int:
    """Bytes of per-row state one step at batch 1 reads: every cache and encoder output it is
    fed, at its allocated capacity (the step attends over all of it, masked)."""
    fed = {t["name"] for g in engine.step_graphs for t in engine.graph_inputs[g]}
    return int(sum(b[0].nbytes for name, b in engine.cache.buffers.items() if name in fed))


def step_ms_by_position(path: str | Path, threads: int | None = None,
                        positions: tuple[int, ...] = POSITIONS, repeats: int = 20) -> list[dict[str, Any]]:
    """Decode step time at batch 1 with `position` tokens before the new one (prompt or source),
    the bytes that step reads and the roofline at that working set's own read bandwidth
    (edgeseq/working_set.py: the last-level cache's where it fits, memory's where it does not);
    positions past max_positions are skipped."""
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
            limit = roofline_at(weights + state)
            roofline_s = (weights + state) / (limit["bandwidth_gb_s"] * 1e9)
            rows.append({"position": position, "step_ms": 1e3 * step_s, "weight_bytes": weights, "cache_bytes": state,
                         "roofline_ms": 1e3 * roofline_s, "roofline_fraction": roofline_s / step_s,
                         "roofline_bandwidth_gb_s": limit["bandwidth_gb_s"], "memory_level": limit["memory_level"]})
    finally:
        engine.close()
        backend.close()
    return rows
