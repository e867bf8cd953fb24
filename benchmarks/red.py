"""RED benchmarks (`just bench`): ONNX Runtime vs PyTorch eager, and share_parameters on/off.

Writes benchmarks/results/red-small.json and prints the markdown table the README quotes.
Everything is measured in this one run; ratios are taken between rows of the same run.

    python benchmarks/red.py [--workdir .cache/bench] [--rounds 5] [--threads 1]
"""

import argparse
import json
from pathlib import Path

from edgeseq.models.checkpoint import init_checkpoint

from edgeseq.bench import bench_artifact, sharing_report, sharing_table
from edgeseq.pipeline import compile_checkpoint

RESULTS = Path(__file__).parent / "results" / "red-small.json"

def build(workdir: Path, name: str, sets: list[str]) -> tuple[Path, Path]:
    ckpt, art = workdir / name, workdir / f"{name}.artifact"
    init_checkpoint("red", ckpt, "small", sets, seed=0, force=True)
    compile_checkpoint(ckpt, art, force=True)
    return ckpt, art


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    print("building the small preset with and without share_parameters ...", flush=True)
    ckpt, art = build(args.workdir, "red-small", [])
    _, art_sep = build(args.workdir, "red-small-separate", ["share_parameters=false", "layerwise_coordination=false"])
    _, art_shared_lw = build(args.workdir, "red-small-shared", ["layerwise_coordination=false"])

    print("timing ONNX Runtime vs PyTorch eager ...", flush=True)
    speed = bench_artifact(art, vs_torch=ckpt, rounds=args.rounds, threads=args.threads)
    sharing = sharing_report(shared=art_shared_lw, separate=art_sep)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"speed": speed, "share_parameters": sharing}, indent=2))

    ort_row, torch_row = speed["results"]
    s = speed["speedup_vs_torch"]
    print(f"\nRED `small` preset, batch 1 and 8, {speed['threads']} thread(s), source {speed['source_len']}, "
          f"{speed['new_tokens']} new tokens, median of {speed['rounds']} alternating rounds\n")
    print("| engine | prefill ms | decode tok/s b1 | decode tok/s b8 | roofline fraction b1 |")
    print("|---|---|---|---|---|")
    for r in (ort_row, torch_row):
        print(f"| {r['engine']} | {r['prefill_ms']:.2f} | {r['decode_tok_s_b1']:.0f} | {r['decode_tok_s_b8']:.0f} "
              f"| {r['roofline_fraction_b1']:.0%} |")
    print(f"| **ratio** | {s['prefill']:.2f}x | **{s['decode_tok_s_b1']:.2f}x** | {s['decode_tok_s_b8']:.2f}x | |")
    print(f"\nbandwidth {speed['bandwidth_gb_s']:.1f} GB/s (copy, read+write), "
          f"{speed['weight_bytes_per_token'] / 1e6:.2f} MB of weights per token, "
          f"roofline {speed['roofline_tok_s_b1']:.0f} tok/s at batch 1")
    print("\n" + sharing_table(sharing, "share_parameters"))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
