"""int8 quality (`compile --precision int8`), every family: the compile's own parity figures
against the fp32 PyTorch model, and task accuracy of the trained checkpoints at fp32 and int8.

- Random-init models of each family (RED `small`, StagFormer `edge` split, NASH T5 and
  BART `small` with half the encoder pruned, PASTA `tiny` p = 2): max and mean abs logit
  error, teacher-forced top-1 agreement, greedy agreement (reported, not bounded).
- The demo's trained RED (checkpoints/demo-red): held-out exact match on 2048 queries.
- The trained PASTA checkpoints: held-out well-formed and query rates on 20 prompts per k,
  decoded by the runtime's parallel schedule.
Writes benchmarks/results/int8-quality.json and prints the tables docs/int8.md quotes.

    python benchmarks/int8_quality.py [--workdir .cache/bench/int8-quality]
"""

import argparse
import json
from pathlib import Path

from edgeseq.models.pasta import outputs_report
from edgeseq.models.pasta_task import pasta_examples_per_k
from edgeseq.models.tasks import CompositionTask, exact_match
from edgeseq.runtimes import load

from edgeseq.demo import HELD_OUT_SEED
from edgeseq.families import FAMILIES
from edgeseq.pipeline import compile_checkpoint

RESULTS = Path(__file__).parent / "results" / "int8-quality.json"
ROOT = Path(__file__).parents[1]
RANDOM = {  # name -> (family, preset, --set overrides)
    "RED small": ("red", "small", ()),
    "StagFormer edge (split)": ("stagformer", "edge", ()),
    "NASH T5 small, encoder half pruned": ("nash", "small", ("variant=t5-v1", "sparsity=0.5")),
    "NASH BART small, encoder half pruned": ("nash", "small", ("variant=bart", "sparsity=0.5")),
    "PASTA tiny p = 2": ("pasta", "tiny", ("n_stacks=2",)),
}
FIGURES = ("max_abs_logit_diff", "mean_abs_logit_diff", "top1_agreement", "greedy_token_agreement")
PASTA_SEED = 123_456  # scripts/train_pasta.py's held-out seed (benchmarks/pasta.py's): training never samples it


def compiled(checkpoint: Path, out: Path, precision: str) -> dict:
    return compile_checkpoint(checkpoint, out, precision=precision, force=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench/int8-quality"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = {"random_init": {}, "demo_red": {}, "pasta": {}}
    for name, (family, preset, sets) in RANDOM.items():
        print(f"{name} ...", flush=True)
        ckpt = FAMILIES[family].init(args.workdir / family / preset / "-".join(sets), preset, sets, seed=0, force=True)
        parity = compiled(ckpt, args.workdir / f"{family}-{preset}-{'-'.join(sets)}.int8", "int8")["parity"]
        report["random_init"][name] = {k: parity[k] for k in FIGURES}
    report["bounds"] = parity["bounds"]

    print("demo RED, held-out accuracy ...", flush=True)
    task = CompositionTask(2, 8)
    source, target = task.sample(2048, HELD_OUT_SEED)
    for precision in ("fp32", "int8"):
        out = args.workdir / f"demo-red.{precision}"
        parity = compiled(ROOT / "checkpoints" / "demo-red", out, precision)["parity"]
        with load(out, max_batch=256, max_queue=4096) as runtime:
            tokens = runtime.generate(source.tolist(), max_new_tokens=task.target_length).tokens
        report["demo_red"][precision] = {"accuracy": exact_match(tokens, target), **{k: parity[k] for k in FIGURES}}

    examples = pasta_examples_per_k(20, PASTA_SEED)
    for name in ("pasta-lm", "pasta-stag2"):
        for precision in ("fp32", "int8"):
            print(f"{name} {precision}, held-out rates ...", flush=True)
            out = args.workdir / f"{name}.{precision}"
            parity = compiled(ROOT / "checkpoints" / name, out, precision)["parity"]
            with load(out) as runtime:
                outputs = [r.tokens for r in runtime.generate([e.prompt for e in examples])]
            rates = outputs_report(examples, outputs)
            report["pasta"][f"{name} {precision}"] = {"well_formed": rates["well_formed"], "queries": rates["queries"],
                                                     "per_k_queries": {k: v["queries"] for k, v in rates["per_k"].items()},
                                                     **{k: parity[k] for k in FIGURES}}
    RESULTS.write_text(json.dumps(report, indent=2))

    print("\n| model (random init) | max abs logit error | mean abs logit error | teacher-forced top-1 | greedy agreement |")
    print("|---|---|---|---|---|")
    for name, r in report["random_init"].items():
        print(f"| {name} | {r['max_abs_logit_diff']:.3f} | {r['mean_abs_logit_diff']:.4f} | {r['top1_agreement']:.3f} "
              f"| {r['greedy_token_agreement']:.3f} |")
    print("\n| trained model | precision | task figure | max abs logit error | mean abs logit error | teacher-forced top-1 |")
    print("|---|---|---|---|---|---|")
    for precision, r in report["demo_red"].items():
        print(f"| demo RED | {precision} | held-out exact match {r['accuracy']:.1%} (2048) | {r['max_abs_logit_diff']:.3f} "
              f"| {r['mean_abs_logit_diff']:.4f} | {r['top1_agreement']:.3f} |")
    for name, r in report["pasta"].items():
        model, precision = name.split()
        print(f"| {model} | {precision} | queries right {r['queries']:.1%}, well-formed {r['well_formed']:.0%} (80) "
              f"| {r['max_abs_logit_diff']:.3f} | {r['mean_abs_logit_diff']:.4f} | {r['top1_agreement']:.3f} |")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
