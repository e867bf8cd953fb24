"""PASTA benchmark (`just bench-pasta`): the trained checkpoints, compiled, in one run.

For checkpoints/pasta-lm (p = 1) and checkpoints/pasta-stag2 (p = 2, stages concurrent):
1. quality and agreement on 200 held-out prompts (50 for each k = 1..4): the torch
   sequential interpreter, the runtime's sequential schedule and its parallel schedule
   decode every prompt greedily; the tokens must agree exactly, and the parallel output's
   well-formed and correct rates are reported per k (`queries`: queries answered right);
2. speed at batch 1, k = 4 (the artifact's bench prompts): the parallel schedule against
   the sequential one on the same artifact, alternating order round by round, best of 3
   within a round, median over rounds (edgeseq/families/pasta/bench.py), and the theoretical
   speedup (tokens / longest sequential path).
Writes benchmarks/results/pasta.json.

    python benchmarks/pasta.py [--workdir .cache/bench] [--rounds 5] [--threads 1]
"""

import argparse
import json
import time
from pathlib import Path

from edgeseq.models.checkpoint import load_checkpoint
from edgeseq.models.pasta import generate_sequential, outputs_report
from edgeseq.models.pasta_task import pasta_examples_per_k
from edgeseq.runtimes import load

from edgeseq.bench_engine import together_vs_alone
from edgeseq.families.pasta.bench import pasta_bench
from edgeseq.pipeline import compile_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "pasta.json"
CONCURRENCY = Path(__file__).parent / "results" / "pasta-concurrency.json"
CHECKPOINTS = {"pasta-lm": ROOT / "checkpoints" / "pasta-lm", "pasta-stag2": ROOT / "checkpoints" / "pasta-stag2"}
HELD_OUT_SEED = 123_456  # scripts/train_pasta.py's held-out seed; training never samples it


def held_out(per_k: int = 50) -> list:
    return pasta_examples_per_k(per_k, HELD_OUT_SEED)


def agreement_report(artifact: Path, checkpoint: Path, examples: list, threads: int) -> dict:
    """Greedy tokens of the torch interpreter and both runtime schedules, and the rates per k."""
    _, model = load_checkpoint(checkpoint)
    prompts = [e.prompt for e in examples]
    start = time.time()
    reference = [generate_sequential(model, p) for p in prompts]
    with load(artifact, threads=threads) as runtime:
        runs = {s: [r.tokens for r in runtime.generate(prompts, schedule=s).rows] for s in ("parallel", "sequential")}
    return {
        "prompts": len(prompts),
        "parallel_equals_interpreter": sum(a == b for a, b in zip(runs["parallel"], reference)),
        "sequential_equals_interpreter": sum(a == b for a, b in zip(runs["sequential"], reference)),
        "held_out": outputs_report(examples, runs["parallel"]),
        "seconds": time.time() - start,
    }


def concurrency(artifact: Path, examples: list, threads: int, rounds: int, callers: int = 8) -> dict:
    """`callers` threads at once, each decoding its own held-out prompts one after another,
    against the same calls one at a time: aggregate spliced tokens/s (edgeseq/bench_engine.py)."""
    with load(artifact, threads=threads) as runtime:
        mine = [[e.prompt for e in examples[i::callers]] for i in range(callers)]
        tokens = sum(len(t) for prompts in mine for t in runtime.generate(prompts).tokens)
        calls = [lambda prompts=prompts: [runtime.generate([p]) for p in prompts] for prompts in mine]
        return {"callers": callers, "prompts": sum(map(len, mine)), **together_vs_alone(runtime, calls, tokens, rounds)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-k", type=int, default=50, help="held-out prompts per k")
    parser.add_argument("--only", choices=["concurrency"], default=None,
                        help="only the 8-caller measurement (its JSON: results/pasta-concurrency.json)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    examples = held_out(args.per_k)
    report = {"threads": args.threads, "rounds": args.rounds, "models": {}}
    for name, checkpoint in CHECKPOINTS.items():
        artifact = args.workdir / f"{name}.artifact"
        print(f"{name}: compiling", flush=True)
        manifest = compile_checkpoint(checkpoint, artifact, force=True)
        print(f"{name}: 8 callers at once vs one at a time", flush=True)
        together = concurrency(artifact, held_out(16), args.threads, args.rounds)
        print(json.dumps({k: v for k, v in together.items() if k != "samples"}, indent=2), flush=True)
        if args.only == "concurrency":
            report["models"][name] = {"concurrency": together}
            continue
        print(f"{name}: {len(examples)} held-out prompts through the interpreter and both schedules", flush=True)
        quality = agreement_report(artifact, checkpoint, examples, args.threads)
        print(f"{name}: timing parallel vs sequential", flush=True)
        speed = pasta_bench(artifact, args.rounds, args.threads, on_progress=lambda m: print(f"  {m}", flush=True))
        report["models"][name] = {"n_stacks": manifest["model_config"]["n_stacks"],
                                  "parity": {k: manifest["parity"][k] for k in ("max_abs_logit_diff", "greedy_token_agreement")},
                                  **quality, "pasta": speed["pasta"], "concurrency": together}
        print(json.dumps(report["models"][name], indent=2, default=float), flush=True)
    out = CONCURRENCY if args.only == "concurrency" else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
