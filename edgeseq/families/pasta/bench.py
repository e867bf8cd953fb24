"""`edgeseq bench` on a PASTA artifact: the parallel schedule against the sequential one.

Both schedules decode the same prompts (batch 1: one prompt per call, as a single user
waits for one answer) on the same loaded model, alternating which goes first round by
round; a round's figure is the best of a few repetitions and the reported one the
median over rounds. The theoretical speedup is tokens / longest sequential path (a
promise's chunk can start right after it; `<sync/>` waits for the open chunks), summed
over the prompts. The prompts are the artifact's own (the manifest's `pasta.bench_prompts`,
k = 4 queries each, written at compile), so the bench needs no torch.
"""

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseq.errors import BuildError
from edgeseq.runtimes import PASTA_SCHEDULES, load

REPETITIONS = 3


def pasta_bench(path: str | Path, rounds: int = 5, threads: int | None = None,
                on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = on_progress or (lambda _: None)
    threads = threads or 1
    with load(path, threads=threads) as model:
        prompts = model.artifact.manifest["pasta"].get("bench_prompts") or []
        if not prompts:
            raise BuildError(f"{path} has no bench prompts (its vocabulary is not the PASTA task's)",
                             "time it with your own prompts through edgeseq.runtimes.load(...).generate")
        outputs = {s: [model.generate([p], schedule=s).rows[0] for p in prompts] for s in PASTA_SCHEDULES}  # warm-up too
        samples: dict[str, list[float]] = {s: [] for s in PASTA_SCHEDULES}
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}")
            order = PASTA_SCHEDULES if r % 2 == 0 else tuple(reversed(PASTA_SCHEDULES))
            for schedule in order:
                samples[schedule].append(min(_timed(model, prompts, schedule) for _ in range(REPETITIONS)))
    parallel, sequential = (statistics.median(samples[s]) for s in ("parallel", "sequential"))
    results = outputs["parallel"]
    tokens = sum(len(r.tokens) for r in results)
    theoretical = tokens / sum(r.longest_path for r in results)
    wall = sequential / parallel
    return {
        "artifact": str(path),
        "family": "pasta",
        "threads": threads,
        "rounds": rounds,
        "pasta": {
            "prompts": len(prompts),
            "batch": 1,
            "queries_per_prompt": sorted({r.threads[-1]["thread"] + 1 for r in results if len(r.threads) > 1}),
            "tokens": tokens,
            "parallel_s": parallel,
            "sequential_s": sequential,
            "wall_speedup": wall,
            "theoretical_speedup": theoretical,
            "fraction_of_theoretical": wall / theoretical,
            "steps": {s: sum(r.steps for r in outputs[s]) for s in PASTA_SCHEDULES},
            "identical_outputs": all(a.tokens == b.tokens for a, b in zip(outputs["parallel"], outputs["sequential"])),
        },
    }


def _timed(model, prompts: list[list[int]], schedule: str) -> float:
    start = time.perf_counter()
    for p in prompts:
        model.generate([p], schedule=schedule)
    return time.perf_counter() - start
