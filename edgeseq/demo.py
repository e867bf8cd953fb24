"""`just demo` / `bash scripts/demo.sh`: train (or reuse) a tiny RED on the composition task,
compile it, and answer held-out queries with PyTorch and with ONNX Runtime side by side.

    python -m edgeseq.demo [--workdir .cache/demo] [--steps 2000] [--retrain]
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from edgeseq.models.checkpoint import load_checkpoint, make_config, save_checkpoint
from edgeseq.models.red import RedModel
from edgeseq.models.tasks import CompositionTask, exact_match
from edgeseq.models.training import train_until_accurate
from edgeseq.pipeline import compile_checkpoint
from edgeseq.runtimes import load

HELD_OUT_SEED = 123_456  # never produced by the training sampler's seeds
console = Console()


def train_or_reuse(ckpt: Path, task: CompositionTask, steps: int, retrain: bool):
    """Reuse the checkpoint, or train until the validation split is >= 95% right (3 seeds at most)."""
    if ckpt.exists() and not retrain:
        console.print(f"reusing trained checkpoint {ckpt} (pass --retrain to train again)")
        return load_checkpoint(ckpt)[1]
    # d_model 128: at 64 far fewer seeds leave the loss plateau within the step budget
    config = make_config("red", "tiny", {
        "vocab_size": task.vocab_size, "max_positions": 64, "source_autoencoder_weight": 0.1,
        "d_model": 128, "d_ff": 512,
    })
    with Progress(TextColumn("training tiny RED {task.fields[seed]}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeRemainingColumn(), console=console) as progress:

        def on_attempt(attempt):
            bar = progress.add_task("train", total=steps, loss="", seed=f"(seed {attempt})")
            return lambda step, loss: progress.update(bar, advance=1, loss=f"loss {loss:.3f}")

        def on_result(attempt, accuracy):
            progress.console.print(f"seed {attempt}: validation accuracy {accuracy:.1%}"
                                   + ("" if accuracy >= 0.95 else " (still on the loss plateau)"))

        model, _ = train_until_accurate(lambda: RedModel(config), task, steps, on_attempt=on_attempt, on_result=on_result)
    save_checkpoint(model, "red", ckpt, force=True)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cache/demo"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args(argv)
    task = CompositionTask(n_functions=2, n_values=8)
    ckpt, art = args.workdir / "red-composition", args.workdir / "red-composition.artifact"

    model = train_or_reuse(ckpt, task, args.steps, args.retrain)
    torch.set_num_threads(1)  # the timed comparison below: one thread each
    with console.status("compiling (export -> passes -> artifact -> parity check)"):
        manifest = compile_checkpoint(ckpt, art, force=True)
    p = manifest["parity"]
    console.print(f"compiled to {art}: parity max |logit diff| {p['max_abs_logit_diff']:.1e}, "
                  f"greedy agreement {p['greedy_token_agreement']:.3f}")

    source, target = task.sample(args.queries, HELD_OUT_SEED)
    runtime = load(art, threads=1)
    src = torch.from_numpy(source)
    run_ort = lambda: runtime.generate(source.tolist(), max_new_tokens=task.target_length).tokens  # noqa: E731
    run_torch = lambda: model.generate_greedy(src, torch.ones_like(src), task.target_length)[0]  # noqa: E731
    run_ort(), run_torch()  # warm-up: first calls size the memory arenas
    start = time.perf_counter()
    ort_tokens = run_ort()
    ort_seconds = time.perf_counter() - start
    start = time.perf_counter()
    torch_tokens = run_torch()
    torch_seconds = time.perf_counter() - start

    ort_acc = exact_match(ort_tokens, target)
    torch_acc = exact_match(torch_tokens.tolist(), target)
    same = sum(o == t[: len(o)] for o, t in zip(ort_tokens, torch_tokens.tolist()))
    generated = sum(len(t) for t in ort_tokens)
    console.print("\nheld-out examples (tables f1, f2 and query x -> f1(x), f2(f1(x)), eos):")
    for i in range(3):
        console.print(f"  source {source[i].tolist()}\n  answer {ort_tokens[i]}  (expected {target[i].tolist()})")
    console.print(f"\naccuracy on {args.queries} held-out queries: PyTorch {torch_acc:.1%}, ONNX Runtime {ort_acc:.1%} "
                  f"(identical outputs on {same}/{len(ort_tokens)})")
    console.print(f"batch-{args.queries} generation: ONNX Runtime {generated / ort_seconds:,.0f} tok/s, "
                  f"PyTorch eager {generated / torch_seconds:,.0f} tok/s (1 thread each)")
    if same != len(ort_tokens) or abs(ort_acc - torch_acc) > 1e-9:
        console.print("[red]ONNX Runtime and PyTorch disagree[/]")
        return 1
    # the console script sits beside this interpreter (e.g. .venv/bin), maybe not on PATH
    script = Path(sys.executable).parent / "edgeseq"
    cli = str(script) if script.exists() and not shutil.which("edgeseq") else "edgeseq"
    console.print("\ntry it yourself:")
    console.print(f"  {cli} generate {art} --input-ids \"{' '.join(map(str, source[0]))}\"")
    console.print(f"  {cli} inspect {art}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
