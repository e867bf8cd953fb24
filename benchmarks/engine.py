"""Runtime-engine benchmarks (`just bench`): continuous batching and step time by position.

- Continuous batching: 16 client threads call `generate` at once (prompts of 4..48 tokens,
  16..64 new tokens, greedy) against the same calls made one at a time, on the same loaded
  model in every round (order alternating), for RED `small` and the t5-small-shaped NASH
  checkpoint (random weights).
- n samples: time to the first token of an n = 4 request (one prefill, three forked rows)
  against an n = 1 request, RED `small`, streamed, alternating order.
- Step time by position: one decode step at batch 1 with 32, 256 and 1024 tokens before it,
  for RED `small` and StagFormer `edge` initialised with max_positions=1024, beside the bytes
  the step reads (weights + the cache capacity it attends over) and the bandwidth roofline.

    python benchmarks/engine.py [--workdir .cache/bench] [--rounds 3]
"""

import argparse
import json
from pathlib import Path

from edgeseq.bench import measure_bandwidth
from edgeseq.bench_engine import concurrency_report, samples_first_token_report, step_ms_by_position
from edgeseq.families import family
from edgeseq.pipeline import compile_checkpoint

RESULTS = Path(__file__).parent / "results" / "engine.json"
SAMPLES = Path(__file__).parent / "results" / "engine-samples.json"


def build(workdir: Path, name: str, fam: str, preset: str, sets: list[str]) -> Path:
    ckpt, art = workdir / name, workdir / f"{name}.artifact"
    if not art.exists():
        family(fam).init(ckpt, preset, sets, seed=0, force=True)
        compile_checkpoint(ckpt, art, force=True)
    return art


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["samples"], default=None, help="run one part (its JSON: results/engine-samples.json)")
    args = parser.parse_args()
    if args.only == "samples":
        red = build(args.workdir, "red-small-1024", "red", "small", ["max_positions=1024"])
        samples = samples_first_token_report(red, 4, args.threads, max(args.rounds, 5))
        SAMPLES.parent.mkdir(parents=True, exist_ok=True)
        SAMPLES.write_text(json.dumps(samples, indent=2))
        print(json.dumps(samples, indent=2))
        return

    print("building RED small, StagFormer edge (max_positions 1024) and the t5-small NASH checkpoint ...", flush=True)
    red = build(args.workdir, "red-small-1024", "red", "small", ["max_positions=1024"])
    stag = build(args.workdir, "stag-edge-1024", "stagformer", "edge", ["max_positions=1024"])
    nash = build(args.workdir, "nash-t5-small", "nash", "t5-small", [])

    report: dict = {"clients": args.clients, "threads": args.threads, "concurrency": {}, "step_ms_by_position": {}}
    for name, art in (("red-small", red), ("nash-t5-small", nash)):
        print(f"concurrency: {name}", flush=True)
        report["concurrency"][name] = concurrency_report(art, args.clients, args.threads, args.rounds)
    print("n samples: first token, n = 4 vs n = 1 (RED small)", flush=True)
    report["samples_first_token"] = samples_first_token_report(red, 4, args.threads, max(args.rounds, 5))
    bandwidth = measure_bandwidth()
    report["bandwidth_gb_s"] = bandwidth
    for name, art in (("red-small-1024", red), ("stagformer-edge-1024", stag)):
        print(f"step time by position: {name}", flush=True)
        report["step_ms_by_position"][name] = step_ms_by_position(art, threads=1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))

    print(f"\nContinuous batching: {args.clients} clients at once vs one at a time, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds\n")
    print("| model | clients at once tok/s | one at a time tok/s | speedup | mean batch |")
    print("|---|---|---|---|---|")
    for name, c in report["concurrency"].items():
        print(f"| {name} | {c['tokens_per_s']:.0f} | {c['one_at_a_time_tokens_per_s']:.0f} | **{c['speedup']:.2f}x** "
              f"| {c['mean_batch_size']:.1f} |")
    f = report["samples_first_token"]
    print(f"\nn = 4 samples: first token {f['first_token_ms_n4']:.2f} ms vs n = 1 {f['first_token_ms_n1']:.2f} ms "
          f"(**{f['ratio']:.2f}x**)")
    print(f"\nStep time by position, batch 1, 1 thread; bandwidth {bandwidth:.1f} GB/s (copy, read + write)\n")
    print("| model | position | step ms | weights MB | cache MB | roofline ms | roofline fraction |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in report["step_ms_by_position"].items():
        for r in rows:
            print(f"| {name} | {r['position']} | {r['step_ms']:.3f} | {r['weight_bytes'] / 1e6:.2f} | "
                  f"{r['cache_bytes'] / 1e6:.2f} | {r['roofline_ms']:.3f} | {100 * r['roofline_fraction']:.0f}% |")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
