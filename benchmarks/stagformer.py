"""StagFormer benchmarks (`just bench`): staggered stages run concurrently vs the same model as
one graph, vs a plain p = 1 LM of equal depth; and shared vs separate weights.

Edge-size preset (d_model 256, 8 layers, 2 stacks), random weights; batch 1 and 8; every
configuration measured in this one run, alternating round by round, medians reported.
Also the time of each stage alone: the last stack carries the LM head, so the stages are
not perfectly balanced. Writes benchmarks/results/stagformer-edge.json.

    python benchmarks/stagformer.py [--workdir .cache/bench] [--rounds 5] [--threads 2]
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
from edgeseq.runtimes.sequence import Sequence

from edgeseq.bench import decode_tok_s, measure_bandwidth, sharing_report, sharing_table
from edgeseq.pipeline import compile_checkpoint

RESULTS = Path(__file__).parent / "results" / "stagformer-edge.json"


def build(workdir: Path, name: str, sets: list[str], split: bool = True) -> Path:
    ckpt, art = workdir / name, workdir / f"{name}.artifact"
    init_checkpoint("stagformer", ckpt, "edge", sets, seed=0, force=True)
    compile_checkpoint(ckpt, art, force=True, split=split)
    return art


def stage_times_ms(model, prompt: list[int], repeats: int = 50) -> dict[str, float]:
    """Median time of each stage graph alone on a real decode-step state (batch 1)."""
    engine = Engine(model.artifact, model.backend, max_rows=1)
    seq = Sequence(prompt, 2, frozenset())
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
    parser.add_argument("--threads", type=int, default=2, help="total intra-op threads of every configuration")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    t = args.threads

    print("building the edge preset: split, unsplit, p = 1, shared weights ...", flush=True)
    split = build(args.workdir, "stag-edge", [])
    unsplit = build(args.workdir, "stag-edge-unsplit", [], split=False)
    baseline = build(args.workdir, "stag-edge-p1", ["n_stacks=1"])
    shared = build(args.workdir, "stag-edge-shared", ["shared_weights=true"])

    configs = {
        f"split, stages concurrent ({t} threads: {max(1, t // 2)} per stage)": load(split, threads=t, schedule="concurrent"),
        f"split, stages sequential ({t} threads each)": load(split, threads=t, schedule="sequential"),
        f"unsplit, one graph ({t} threads)": load(unsplit, threads=t),
        "unsplit, one graph (1 thread)": load(unsplit, threads=1),
        f"p = 1 LM, equal depth ({t} threads)": load(baseline, threads=t),
        "p = 1 LM, equal depth (1 thread)": load(baseline, threads=1),
    }
    rng = np.random.default_rng(0)
    rows = {b: rng.integers(3, 512, size=(b, 32)).tolist() for b in (1, 8)}
    samples = {name: {1: [], 8: []} for name in configs}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for name, model in configs.items():
            for b in (1, 8):
                gen = lambda rs, n, m=model: m.generate(rs, n, stop_tokens=[])  # noqa: E731
                samples[name][b].append(decode_tok_s(gen, rows[b], args.new_tokens))
    table = {name: {f"decode_tok_s_b{b}": statistics.median(v) for b, v in s.items()} for name, s in samples.items()}
    names = list(configs)
    concurrent, unsplit_same, unsplit_1, p1_same, p1_1 = names[0], names[2], names[3], names[4], names[5]
    ratios = {
        f"b{b}": {
            "vs_unsplit_same_threads": table[concurrent][f"decode_tok_s_b{b}"] / table[unsplit_same][f"decode_tok_s_b{b}"],
            "vs_best_unsplit": table[concurrent][f"decode_tok_s_b{b}"]
            / max(table[unsplit_same][f"decode_tok_s_b{b}"], table[unsplit_1][f"decode_tok_s_b{b}"]),
            "vs_best_p1": table[concurrent][f"decode_tok_s_b{b}"]
            / max(table[p1_same][f"decode_tok_s_b{b}"], table[p1_1][f"decode_tok_s_b{b}"]),
        }
        for b in (1, 8)
    }
    with load(split, threads=t, schedule="sequential") as sequential:
        stages = stage_times_ms(sequential, rows[1][0])
    for model in configs.values():
        model.close()
    manifest = read_artifact(split).manifest
    per_stage_bytes = manifest["stats"]["weight_bytes_per_token_per_graph"]
    sharing = sharing_report(shared=shared, separate=split)
    bandwidth = measure_bandwidth()
    report = {"threads": t, "rounds": args.rounds, "new_tokens": args.new_tokens, "decode": table, "ratios": ratios,
              "stage_ms_b1": stages, "stage_weight_bytes_per_token": per_stage_bytes, "bandwidth_gb_s": bandwidth,
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
              f"vs the best unsplit {r['vs_best_unsplit']:.2f}x, vs the best p = 1 {r['vs_best_p1']:.2f}x")
    print("\n| stage | ms alone (b1) | weight MB read per token |")
    print("|---|---|---|")
    for g, ms in stages.items():
        print(f"| {g} | {ms:.3f} | {per_stage_bytes[g] / 1e6:.2f} |")
    print("\n" + sharing_table(sharing, "weights"))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
