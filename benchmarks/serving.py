"""Serving benchmarks (`just bench`): `edgeseq serve` under load, over HTTP on 127.0.0.1.

For RED `small` (random weights) and the tiny NASH T5 fixture (tests/fixtures/nash-t5-tiny):
- batching: 8 clients at once against one client sending the same 24 requests (8 prompt
  ids, 64 new tokens, greedy) one at a time; three rounds alternating the order, medians;
  the mean batch size from the server's /metrics;
- load: 32 clients x 20 requests (2..24 prompt ids, 8..48 new tokens, half greedy, half
  seeded sampling, a quarter streamed) after one warm-up request per client; every result
  compared with the same request made alone through the library; requests/s, p50/p99
  latency, mean batch size, and the server's resident memory after warm-up and at the end.

    python benchmarks/serving.py [--workdir .cache/bench]
"""

import argparse
import json
from pathlib import Path

from edgeseq.runtimes import SamplingOptions, load
from engine import build

from edgeseq.serving.load import batching_report, load_report, mixed_requests
from edgeseq.serving.process import resident_mb, serve_process

RESULTS = Path(__file__).parent / "results" / "serving.json"
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nash-t5-tiny"


def measure(artifact: Path, threads: int) -> dict:
    with load(artifact, threads=threads) as model:
        vocab = model.config["vocab_size"]

        def alone(r):
            sampling = SamplingOptions(r.temperature > 0, r.temperature or 1.0, r.top_k, 1.0, r.seed)
            return model.generate([r.prompt], r.max_tokens, [], sampling).tokens[0]

        requests = mixed_requests(32 * 20, vocab)
        expected = {id(r): alone(r) for r in requests}
    with serve_process(artifact, "--threads", str(threads), "--max-queue", "1024") as (url, process):
        batching = batching_report(url, clients=8, vocab=vocab)
        loaded = load_report(url, lambda r: expected[id(r)], requests, clients=32, rss=lambda: resident_mb(process.pid))
    return {"batching": batching, "load": loaded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    red = build(args.workdir, "red-small-1024", "red", "small", ["max_positions=1024"])
    report = {"threads": args.threads}
    for name, artifact in (("red-small", red), ("nash-t5-tiny", FIXTURE)):
        print(f"serving {name} ...", flush=True)
        report[name] = measure(artifact, args.threads)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("\n| model | 8 clients tok/s | 1 client tok/s | speedup | mean batch | load req/s | p50 s | p99 s | "
          "mismatches | RSS growth |\n|---|---|---|---|---|---|---|---|---|---|")
    for name in ("red-small", "nash-t5-tiny"):
        b, lo = report[name]["batching"], report[name]["load"]
        print(f"| {name} | {b['tokens_per_s']:.0f} | {b['one_client_tokens_per_s']:.0f} | {b['speedup']:.2f}x | "
              f"{b['mean_batch_size']:.1f} | {lo['requests_per_s']:.1f} | {lo['p50_latency_s']:.3f} | "
              f"{lo['p99_latency_s']:.3f} | {lo['mismatches']}/{lo['requests']} | {100 * lo['resident_growth']:.1f}% |")


if __name__ == "__main__":
    main()
