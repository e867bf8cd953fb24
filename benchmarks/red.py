"""RED benchmarks (`just bench`): ONNX Runtime vs PyTorch eager at fp32 and int8, and share_parameters on/off.

Engines, side by side in one run (edgeseq/bench.py `side_by_side`: each round starts from
the next engine, best of --repeats within a round, median over rounds): edgeseq fp32,
edgeseq int8 (`compile --precision int8`), PyTorch eager fp32, and PyTorch eager with
dynamic int8 Linear layers (torch.ao.quantization.quantize_dynamic: the same kind of
kernel, the fair peer of the int8 row). Also `edgeseq bench`'s own report of the fp32
artifact (step time by position, roofline). Writes benchmarks/results/red-small.json and
prints the markdown table docs/benchmarks.md quotes; ratios are between rows of this one run.

    python benchmarks/red.py [--workdir .cache/bench] [--rounds 7] [--repeats 3] [--threads 1]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from edgeseq.models.checkpoint import init_checkpoint

from edgeseq.bench import (
    OrtEngine,
    TorchEngine,
    bench_artifact,
    measure_bandwidth,
    sharing_report,
    sharing_table,
    side_by_side,
)
from edgeseq.pipeline import compile_checkpoint
from edgeseq.working_set import roofline_at

RESULTS = Path(__file__).parent / "results" / "red-small.json"


def build(workdir: Path, name: str, sets: list[str], precision: str = "fp32") -> tuple[Path, Path]:
    ckpt, art = workdir / name, workdir / f"{name}{'' if precision == 'fp32' else '-' + precision}.artifact"
    init_checkpoint("red", ckpt, "small", sets, seed=0, force=True)
    compile_checkpoint(ckpt, art, precision=precision, force=True)
    return ckpt, art


def engines(ckpt: Path, art: Path, art_int8: Path, threads: int) -> list:
    import torch

    fp32, int8 = OrtEngine(art, threads), OrtEngine(art_int8, threads)
    fp32.name, int8.name = "edgeseq fp32", "edgeseq int8"
    torch_fp32, torch_int8 = TorchEngine(ckpt, threads), TorchEngine(ckpt, threads)
    torch_int8.name = "PyTorch eager, dynamic int8 Linear"
    torch_int8.model = torch.ao.quantization.quantize_dynamic(torch_int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    return [fp32, int8, torch_fp32, torch_int8]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    print("building the small preset at fp32 and int8, with and without share_parameters ...", flush=True)
    ckpt, art = build(args.workdir, "red-small", [])
    _, art_int8 = build(args.workdir, "red-small", [], precision="int8")
    _, art_sep = build(args.workdir, "red-small-separate", ["share_parameters=false", "layerwise_coordination=false"])
    _, art_shared_lw = build(args.workdir, "red-small-shared", ["layerwise_coordination=false"])

    print("timing edgeseq fp32 and int8 vs PyTorch eager fp32 and dynamic int8 ...", flush=True)
    rng = np.random.default_rng(0)
    rows = {b: rng.integers(3, 1024, size=(b, 32)).tolist() for b in (1, 8)}
    timed = engines(ckpt, art, art_int8, args.threads)
    table = side_by_side(timed, rows, 64, args.rounds, args.repeats, on_round=lambda r: print(f"round {r + 1}/{args.rounds}", flush=True))
    bandwidth = measure_bandwidth()
    weight_bytes = {e.name: e.model.artifact.manifest["stats"]["weight_bytes_per_token"] for e in timed[:2]}
    weight_bytes["PyTorch eager"] = weight_bytes["edgeseq fp32"]
    weight_bytes["PyTorch eager, dynamic int8 Linear"] = weight_bytes["edgeseq int8"]
    for e in timed[:2]:
        e.model.close()
    for name, row in table.items():  # each roofline at its own working set (edgeseq/working_set.py)
        limit = roofline_at(weight_bytes[name])
        row["weight_bytes_per_token"] = weight_bytes[name]
        row["roofline_bandwidth_gb_s"], row["memory_level"] = limit["bandwidth_gb_s"], limit["memory_level"]
        row["roofline_tok_s_b1"] = limit["bandwidth_gb_s"] * 1e9 / weight_bytes[name]
        row["roofline_fraction_b1"] = row["decode_tok_s_b1"] / row["roofline_tok_s_b1"]
    eager = table["PyTorch eager"]
    ratios = {f"{name} / PyTorch eager": {k: table[name][k] / eager[k] for k in ("decode_tok_s_b1", "decode_tok_s_b8")}
              for name in ("edgeseq fp32", "edgeseq int8")}
    ratios["edgeseq int8 / edgeseq fp32"] = {k: table["edgeseq int8"][k] / table["edgeseq fp32"][k]
                                             for k in ("decode_tok_s_b1", "decode_tok_s_b8")}
    ratios["edgeseq int8 / PyTorch dynamic int8"] = {
        k: table["edgeseq int8"][k] / table["PyTorch eager, dynamic int8 Linear"][k] for k in ("decode_tok_s_b1", "decode_tok_s_b8")}
    print("edgeseq bench on the fp32 artifact (step time by position) ...", flush=True)
    speed = bench_artifact(art, rounds=3, threads=args.threads)
    sharing = sharing_report(shared=art_shared_lw, separate=art_sep)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
                                   "bandwidth_gb_s": bandwidth, "engines": table, "ratios": ratios,
                                   "edgeseq_bench_fp32": speed, "share_parameters": sharing}, indent=2))

    print(f"\nRED `small` preset, batch 1 and 8, {args.threads} thread(s), source 32, 64 new tokens, "
          f"median of {args.rounds} rounds, each starting from the next engine (best of {args.repeats} in each)\n")
    print("| engine | prefill ms | decode tok/s b1 | decode tok/s b8 | weight MB / token | roofline fraction b1 |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['prefill_ms']:.2f} | {r['decode_tok_s_b1']:.0f} | {r['decode_tok_s_b8']:.0f} "
              f"| {r['weight_bytes_per_token'] / 1e6:.2f} | {r['roofline_fraction_b1']:.0%} |")
    print()
    for name, r in ratios.items():
        print(f"{name}: decode b1 **{r['decode_tok_s_b1']:.2f}x**, b8 {r['decode_tok_s_b8']:.2f}x")
    levels = ", ".join(f"{n}: {r['roofline_bandwidth_gb_s']:.0f} GB/s ({r['memory_level']})" for n, r in table.items())
    print(f"\nrooflines: each engine's weight bytes read at the bandwidth a warm matrix-vector product reads "
          f"that many bytes at: {levels}; DRAM copy bandwidth {bandwidth:.1f} GB/s")
    print("\n" + sharing_table(sharing, "share_parameters"))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
