"""StagFormer benchmarks (`just bench`): staggered stages run concurrently vs the same model as
one graph, vs a plain p = 1 LM of equal depth; and shared vs separate weights.

Edge-size preset (d_model 256, 8 layers, 2 stacks), random weights; batch 1 and 8; every
configuration measured in this one run (edgeseq/bench.py `side_by_side`: each round
starts from the next configuration, best of --repeats within a round, median over
rounds), at fp32 and at int8 (`compile --precision int8`); every artifact carries the
same kernel fusions (passes/pipeline.py `compile_pipeline`).
Also the time of each stage alone: the last stack carries the LM head, so the stages are
not perfectly balanced. Writes benchmarks/results/stagformer-edge.json.

    python benchmarks/stagformer.py [--workdir .cache/bench] [--rounds 5] [--repeats 3] [--threads 2]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from edgeseq.models.checkpoint import init_checkpoint
from edgeseq.runtimes import load, read_artifact
from edgeseq.runtimes.engine import Engine
from edgeseq.runtimes.requests import Row

from edgeseq.bench import OrtEngine, measure_bandwidth, sharing_report, sharing_table, side_by_side
from edgeseq.pipeline import compile_checkpoint

RESULTS = Path(__file__).parent / "results" / "stagformer-edge.json"
UNEVEN = "5,3"  # layers of the first and the last stack


def build(workdir: Path, name: str, sets: list[str], split: bool = True, precision: str = "fp32") -> Path:
    ckpt, art = workdir / name, workdir / f"{name}{'' if precision == 'fp32' else '-' + precision}.artifact"
    init_checkpoint("stagformer", ckpt, "edge", sets, seed=0, force=True)
    compile_checkpoint(ckpt, art, force=True, split=split, precision=precision)
    return art


def engine(name: str, artifact: Path, threads: int, schedule: str = "concurrent") -> OrtEngine:
    e = OrtEngine(artifact, threads, schedule)
    e.name = name
    return e


def stage_times_ms(model, prompt: list[int], repeats: int = 50) -> dict[str, float]:
    """Median time of each stage graph alone on a real decode-step state (batch 1)."""
    engine = Engine(model.artifact, model.backend, max_rows=1)
    seq = Row(prompt)
    seq.next_token = int(engine.admit([seq])[0].argmax())
    feeds = engine.feeds(1)
    times = {}
    for g in engine.step_graphs:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.backend.run(g, feeds[g])
            samples.append(time.perf_counter() - start)
        times[g] = 1000 * statistics.median(samples)
    engine.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="total intra-op threads of every configuration")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    t = args.threads

    print("building the edge preset: split, unsplit, p = 1 (fp32 and int8), shared weights ...", flush=True)
    split = build(args.workdir, "stag-edge", [])
    unsplit = build(args.workdir, "stag-edge-unsplit", [], split=False)
    baseline = build(args.workdir, "stag-edge-p1", ["n_stacks=1"])
    shared = build(args.workdir, "stag-edge-shared", ["shared_weights=true"])
    split_int8 = build(args.workdir, "stag-edge", [], precision="int8")
    baseline_int8 = build(args.workdir, "stag-edge-p1", ["n_stacks=1"], precision="int8")
    # the last stack runs a cross-attention per layer and the LM head: a deeper first stack
    # balances the concurrent stages (a model choice made at training time)
    uneven = build(args.workdir, "stag-edge-uneven", [f"stack_layers={UNEVEN}"])
    uneven_int8 = build(args.workdir, "stag-edge-uneven", [f"stack_layers={UNEVEN}"], precision="int8")

    concurrent = f"split, stages concurrent ({t} threads: {max(1, t // 2)} per stage)"
    configs = [
        engine(concurrent, split, t),
        engine(f"split, stages sequential ({t} threads each)", split, t, "sequential"),
        engine(f"unsplit, one graph ({t} threads)", unsplit, t),
        engine("unsplit, one graph (1 thread)", unsplit, 1),
        engine(f"p = 1 LM, equal depth ({t} threads)", baseline, t),
        engine("p = 1 LM, equal depth (1 thread)", baseline, 1),
        engine(f"int8: {concurrent}", split_int8, t),
        engine(f"int8: p = 1 LM, equal depth ({t} threads)", baseline_int8, t),
        engine("int8: p = 1 LM, equal depth (1 thread)", baseline_int8, 1),
        engine(f"uneven {UNEVEN}: {concurrent}", uneven, t),
        engine(f"int8, uneven {UNEVEN}: {concurrent}", uneven_int8, t),
    ]
    rng = np.random.default_rng(0)
    rows = {b: rng.integers(3, 512, size=(b, 32)).tolist() for b in (1, 8)}
    table = side_by_side(configs, rows, args.new_tokens, args.rounds, args.repeats,
                         on_round=lambda r: print(f"round {r + 1}/{args.rounds}", flush=True))
    names = [c.name for c in configs]
    unsplit_same, unsplit_1, p1_same, p1_1 = names[2], names[3], names[4], names[5]

    def rate(name: str, b: int) -> float:
        return table[name][f"decode_tok_s_b{b}"]

    ratios = {
        f"b{b}": {
            "vs_unsplit_same_threads": rate(concurrent, b) / rate(unsplit_same, b),
            "vs_best_unsplit": rate(concurrent, b) / max(rate(unsplit_same, b), rate(unsplit_1, b)),
            "vs_best_p1": rate(concurrent, b) / max(rate(p1_same, b), rate(p1_1, b)),
            "int8_vs_best_int8_p1": rate(names[6], b) / max(rate(names[7], b), rate(names[8], b)),
            "int8_vs_fp32_split": rate(names[6], b) / rate(concurrent, b),
            "int8_vs_fp32_p1": max(rate(names[7], b), rate(names[8], b)) / max(rate(p1_same, b), rate(p1_1, b)),
            "uneven_vs_best_p1": rate(names[9], b) / max(rate(p1_same, b), rate(p1_1, b)),
            "int8_uneven_vs_best_int8_p1": rate(names[10], b) / max(rate(names[7], b), rate(names[8], b)),
        }
        for b in (1, 8)
    }
    stages, stage_rates = {}, {}
    for label, artifact in (("even", split), ("even int8", split_int8), (f"uneven {UNEVEN}", uneven),
                            (f"uneven {UNEVEN} int8", uneven_int8)):
        with load(artifact, threads=t, schedule="sequential") as sequential:
            stages[label] = stage_times_ms(sequential, rows[1][0])
        per_graph = read_artifact(artifact).manifest["stats"]["weight_bytes_per_token_per_graph"]
        # weight bytes over time alone: near the machine's bandwidth, a stage leaves the other
        # nothing to overlap with (fp32 here); far below it, the stages can run side by side
        stage_rates[label] = {g: per_graph[g] / (ms * 1e6) for g, ms in stages[label].items()}
    for c in configs:
        c.model.close()
    manifest = read_artifact(split).manifest
    per_stage_bytes = manifest["stats"]["weight_bytes_per_token_per_graph"]
    sharing = sharing_report(shared=shared, separate=split)
    bandwidth = measure_bandwidth()
    report = {"threads": t, "rounds": args.rounds, "new_tokens": args.new_tokens, "decode": table, "ratios": ratios,
              "stage_ms_b1": stages, "stage_weight_gb_s_b1": stage_rates,
              "stage_weight_bytes_per_token": per_stage_bytes, "bandwidth_gb_s": bandwidth,
              "shared_weights": sharing}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))

    print(f"\nStagFormer `edge` preset (d_model 256, 8 layers, 2 stacks), source 32, {args.new_tokens} new tokens, "
          f"median of {args.rounds} alternating rounds\n")
    print("| configuration | decode tok/s b1 | decode tok/s b8 |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {table[name]['decode_tok_s_b1']:.0f} | {table[name]['decode_tok_s_b8']:.0f} |")
    for b in (1, 8):
        r = ratios[f"b{b}"]
        print(f"\nbatch {b}: concurrent vs unsplit at {t} threads **{r['vs_unsplit_same_threads']:.2f}x**, "
              f"vs the best unsplit {r['vs_best_unsplit']:.2f}x, vs the best p = 1 {r['vs_best_p1']:.2f}x; "
              f"int8: split vs the best int8 p = 1 **{r['int8_vs_best_int8_p1']:.2f}x**, split int8 / fp32 "
              f"{r['int8_vs_fp32_split']:.2f}x, p = 1 int8 / fp32 {r['int8_vs_fp32_p1']:.2f}x; uneven {UNEVEN} vs the "
              f"best p = 1 {r['uneven_vs_best_p1']:.2f}x (int8: {r['int8_uneven_vs_best_int8_p1']:.2f}x)")
    print(f"\n| split | stage.0 ms alone (b1) | stage.1 ms alone (b1) | weight GB/s alone (machine: {bandwidth:.0f}) |")
    print("|---|---|---|---|")
    for label, times in stages.items():
        rates = stage_rates[label]
        print(f"| {label} | {times['stage.0']:.3f} | {times['stage.1']:.3f} | "
              f"{rates['stage.0']:.1f}, {rates['stage.1']:.1f} |")
    print("\nweight MB read per token (even split, fp32): " + ", ".join(f"{g} {b / 1e6:.2f}" for g, b in per_stage_bytes.items()))
    print("\n" + sharing_table(sharing, "weights"))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
