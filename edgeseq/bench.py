"""`edgeseq bench`: prefill latency, decode tokens/s, memory, and the memory-bandwidth roofline.

Every figure is measured side by side in one run: the engines alternate round by round
(so a noisy neighbour hurts both alike) and each figure is the median over rounds.
Decode time per step is (T(N tokens) - T(1 token)) / (N - 1), which removes prefill and
first-step costs. Both engines use the same thread count (default 1: at batch 1 a
small model's step is too short for a thread pool to pay off on a 2-core box). At batch 1 a decode step reads every weight once, so tokens/s can
never exceed bandwidth / weight bytes per token; each row reports its fraction of that.
"""

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseq.bench_engine import concurrency_report, step_ms_by_position
from edgeseq.errors import BuildError
from edgeseq.families import FAMILIES
from edgeseq.runtimes import load, read_artifact
from edgeseq.runtimes.cpu_features import describe as describe_cpu
from edgeseq.working_set import roofline_at


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s from a large copy (bytes read + bytes written), best of N."""
    src = np.ones(megabytes * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def resident_mb() -> float:
    """Current resident set size of this process in MiB (Linux), else peak RSS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RESIDENT_PROBE = """
import sys
from edgeseq.bench import resident_mb
from edgeseq.bench_engine import concurrency_report, step_ms_by_position
from edgeseq.errors import BuildError
from edgeseq.families import FAMILIES
from edgeseq.runtimes import load
import onnxruntime  # noqa: F401  (the library itself counts as "before")
before = resident_mb()
model = load(sys.argv[1], threads=1, low_memory=sys.argv[2] == "low")
model.generate([[5, 6, 7]], max_new_tokens=2, stop_tokens=[])
print(resident_mb() - before)
"""


def resident_after_load_mb(artifact: str | Path, low_memory: bool = False) -> float:
    """Resident memory a freshly loaded runtime adds (weights, sessions), in its own process."""
    import subprocess
    import sys

    mode = "low" if low_memory else "default"
    out = subprocess.run(
        [sys.executable, "-c", RESIDENT_PROBE, str(artifact), mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def sharing_report(shared: str | Path, separate: str | Path) -> dict[str, Any]:
    """Weight bytes and resident memory (default and low-memory) of two artifacts of one model
    with and without weight sharing, each runtime measured in a fresh process."""
    from edgeseq.runtimes import read_artifact

    report: dict[str, Any] = {
        name: {
            "weight_bytes": read_artifact(art).manifest["stats"]["weight_bytes"],
            "resident_mb": resident_after_load_mb(art),
            "resident_mb_low_memory": resident_after_load_mb(art, low_memory=True),
        }
        for name, art in (("shared", shared), ("separate", separate))
    }
    for key, ratio in (("weight_bytes", "weight_bytes_ratio"), ("resident_mb", "resident_ratio"),
                       ("resident_mb_low_memory", "resident_ratio_low_memory")):
        report[ratio] = report["shared"][key] / report["separate"][key]
    return report


def sharing_table(report: dict[str, Any], label: str) -> str:
    """The markdown table docs/benchmarks.md quotes for a sharing_report."""
    lines = [f"| {label} | weight bytes | resident MB after load | resident MB, --low-memory |", "|---|---|---|---|"]
    for name in ("shared", "separate"):
        r = report[name]
        lines.append(f"| {name} | {r['weight_bytes'] / 1e6:.2f} MB | {r['resident_mb']:.1f} | {r['resident_mb_low_memory']:.1f} |")
    lines.append(f"| **ratio** | **{report['weight_bytes_ratio']:.2f}** | {report['resident_ratio']:.2f} "
                 f"| {report['resident_ratio_low_memory']:.2f} |")
    return "\n".join(lines)


def decode_tok_s(generate: Callable, rows: list[list[int]], new_tokens: int, repeats: int = 1) -> float:
    """Decode tokens/s of `generate(rows, n)`: (T(n) - T(1)) removes prefill and first-step
    costs; with `repeats`, each of the two times is the best of that many runs."""
    t_one = best_time(repeats, generate, rows, 1)
    t_all = best_time(repeats, generate, rows, new_tokens)
    return len(rows) * (new_tokens - 1) / max(t_all - t_one, 1e-9)


def best_time(repeats: int, fn: Callable, *args) -> float:
    """The shortest of `repeats` back-to-back timings: on a shared machine noise only ever
    adds time, so the minimum is the steadiest estimate of what the code itself costs."""
    return min(_timed(fn, *args) for _ in range(repeats))


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Engine:
    """One thing to time: `encode(rows)` and `generate(rows, n)` over the same inputs."""

    name: str
    encode: Callable
    generate: Callable


class OrtEngine(Engine):
    def __init__(self, path: Path, threads: int, schedule: str = "concurrent"):
        self.name = "edgeseq (onnxruntime)"
        self.model = load(path, threads=threads, schedule=schedule)
        # prefill: RED's encoder, or a decoder-only model's prompt pass
        self.encode = self.model.encode
        self.generate = lambda rows, n: self.model.generate(rows, max_new_tokens=n, stop_tokens=[],
                                                                  use_generation_defaults=False)


class TorchEngine(Engine):
    def __init__(self, checkpoint: Path, threads: int):
        import torch

        from edgeseq.models.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        self.torch = torch
        self.name = "PyTorch eager"
        _, self.model = load_checkpoint(checkpoint)

    def _tensors(self, rows):
        ids = self.torch.tensor(rows)
        return ids, self.torch.ones_like(ids)

    def encode(self, rows):
        with self.torch.inference_mode():
            return self.model.encode(*self._tensors(rows))

    def generate(self, rows, n):
        return self.model.generate_greedy(*self._tensors(rows), n)


def side_by_side(engines: list, rows: dict[int, list[list[int]]], new_tokens: int, rounds: int, repeats: int = 3,
                 on_round: Callable[[int], None] | None = None) -> dict[str, dict[str, float]]:
    """Prefill ms and decode tokens/s per batch size of every engine (anything with `name`,
    `encode(rows)` and `generate(rows, n)`), measured the way every committed benchmark is:
    each round starts from the next engine, each timing within a round is the best of
    `repeats`, and each figure is the median over rounds. Samples are kept under "samples"."""
    samples: dict[str, dict[str, list[float]]] = {e.name: {} for e in engines}
    for r in range(rounds):
        if on_round:
            on_round(r)
        for engine in engines[r % len(engines):] + engines[: r % len(engines)]:
            time.sleep(0.2)  # the previous engine's pool threads stop spinning
            s = samples[engine.name]
            s.setdefault("prefill_ms", []).append(1000 * best_time(repeats, engine.encode, rows[1]))
            for b, batch in rows.items():
                s.setdefault(f"decode_tok_s_b{b}", []).append(decode_tok_s(engine.generate, batch, new_tokens, repeats))
    return {name: {**{k: statistics.median(v) for k, v in s.items()}, "samples": s} for name, s in samples.items()}


def _timed(fn: Callable, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_artifact(
    path: str | Path,
    vs_torch: str | Path | None = None,
    source_len: int = 32,
    new_tokens: int = 64,
    batches: tuple[int, ...] = (1, 8),
    rounds: int = 5,
    threads: int | None = None,
    on_progress: Callable[[str], None] | None = None,
    schedule: str = "concurrent",
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Prefill and decode figures (optionally against PyTorch eager), step time by position
    and, with `concurrency` clients, continuous batching against one-at-a-time calls."""
    from edgeseq.families import family as family_record

    record = family_record(read_artifact(path, verify=False).family)
    if record.bench is not None:  # a family that times itself its own way
        return record.bench(path, rounds, threads, on_progress)
    say = on_progress or (lambda _: None)
    threads = threads or 1
    rss_before = resident_mb()
    ort_engine = OrtEngine(Path(path), threads, schedule)
    family = ort_engine.model.artifact.family
    if vs_torch and not FAMILIES[family].torch_baseline:
        ort_engine.model.close()
        raise BuildError(
            f"--vs-torch is available for {', '.join(n for n, f in FAMILIES.items() if f.torch_baseline)} artifacts, not {family}",
            "for StagFormer run benchmarks/stagformer.py (split vs unsplit vs p = 1 in one run); for NASH benchmarks/nash.py",
        )
    config = ort_engine.model.config
    new_tokens = max(2, min(new_tokens, config["max_positions"] - source_len))
    engines: list[Engine] = [ort_engine]
    rng = np.random.default_rng(0)
    rows = {b: rng.integers(3, config["vocab_size"], size=(b, source_len)).tolist() for b in batches}
    # warm up (first runs allocate arenas), then measure the runtime's resident memory
    ort_engine.generate(rows[max(batches)], 4)
    ort_resident = resident_mb() - rss_before
    resident = {ort_engine.name: ort_resident}
    if vs_torch:
        say("loading PyTorch reference")
        before = resident_mb()
        torch_engine = TorchEngine(Path(vs_torch), threads)
        torch_engine.generate(rows[max(batches)], 4)
        resident[torch_engine.name] = resident_mb() - before
        engines.append(torch_engine)
    medians = side_by_side(engines, rows, new_tokens, rounds, repeats=1, on_round=lambda r: say(f"round {r + 1}/{rounds}"))
    ort_engine.model.close()
    say("measuring memory bandwidth")
    bandwidth = measure_bandwidth()  # DRAM copy bandwidth, recorded beside the roofline's own
    bytes_per_token = ort_engine.model.artifact.manifest["stats"]["weight_bytes_per_token"]
    limit = roofline_at(bytes_per_token)  # read bandwidth at the batch-1 step's working set
    roofline = limit["bandwidth_gb_s"] * 1e9 / bytes_per_token
    results = []
    for engine in engines:
        row = {k: v for k, v in medians[engine.name].items() if k != "samples"}
        row["engine"] = engine.name
        row["resident_mb"] = resident[engine.name]
        row["roofline_fraction_b1"] = row["decode_tok_s_b1"] / roofline
        results.append(row)
    report = {
        "artifact": str(path),
        "family": ort_engine.model.artifact.family,
        "precision": ort_engine.model.artifact.manifest["precision"],
        "cpu": describe_cpu(),  # the features that decided the kernels (runtimes/cpu_features.py)
        "int8_weights": getattr(ort_engine.model.backend, "int8", None),  # int8: stored bits, bits run at, why
        "threads": threads,
        "source_len": source_len,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "bandwidth_gb_s": bandwidth,
        "weight_bytes_per_token": bytes_per_token,
        "roofline_tok_s_b1": roofline,
        "roofline_bandwidth_gb_s": limit["bandwidth_gb_s"],
        "memory_level": limit["memory_level"],  # which level the roofline's working set fits
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
    }
    say("step time by position")
    report["step_ms_by_position"] = step_ms_by_position(path, threads)
    if concurrency:
        report["concurrency"] = concurrency_report(path, concurrency, threads, on_progress=say)
    if vs_torch:
        ort_row, torch_row = results
        report["speedup_vs_torch"] = {
            k: ort_row[k] / torch_row[k] for k in ort_row if k.startswith("decode_tok_s")
        } | {"prefill": torch_row["prefill_ms"] / ort_row["prefill_ms"]}
    return report
