"""Prefix-cache benchmark: time to first token of 16 concurrent requests that share a
512-token prefix, prefix cache on against off, and of 16 that share nothing (what the cache
costs when it never hits), for StagFormer `edge` and RED `small` (causal encoder), both
initialised with max_positions=1024 (random weights: timing only).

One load per artifact, its cache attached and detached between runs, order alternating;
best of 2 repetitions within a round, median over rounds (edgeseq/bench_engine.py).

    python benchmarks/prefix_cache.py [--workdir .cache/bench] [--rounds 3] [--threads 2]
"""

import argparse
import json
import platform
from pathlib import Path

from engine import build  # benchmarks/engine.py: init a preset, compile it once into the workdir

from edgeseq.bench_engine import shared_prefix_report

RESULTS = Path(__file__).parent / "results" / "prefix-cache.json"
MODELS = (("stagformer-edge-1024", "stagformer", "edge"), ("red-small-1024", "red", "small"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--prefix", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    report = {"clients": args.clients, "prefix_tokens": args.prefix, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "models": {}}
    for name, fam, preset in MODELS:
        print(f"building {name} ...", flush=True)
        art = build(args.workdir, name, fam, preset, ["max_positions=1024"])
        print(f"timing {name} ...", flush=True)
        report["models"][name] = shared_prefix_report(art, args.prefix, args.clients, threads=args.threads,
                                                      rounds=args.rounds, on_progress=lambda m: print(" ", m, flush=True))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nTime to first token, {args.clients} concurrent requests, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds\n")
    print(f"| model | {args.prefix}-token shared prefix: cache on ms | off ms | speedup | no shared prefix: on ms | off ms | on / off |")
    print("|---|---|---|---|---|---|---|")
    for name, r in report["models"].items():
        ms = r["first_token_ms"]
        print(f"| {name} | {ms['shared_on']:.1f} | {ms['shared_off']:.1f} | **{r['shared_speedup']:.2f}x** "
              f"| {ms['distinct_on']:.1f} | {ms['distinct_off']:.1f} | **{r['distinct_slowdown']:.3f}** |")


if __name__ == "__main__":
    main()
