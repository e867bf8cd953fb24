"""Train PASTA's checkpoints on this CPU: a p = 1 LM and a p = 2 StagFormer under PASTA's
masks (models/pasta.py), on the multi-query composition task (models/pasta_task.py).

Every 250 steps the sequential interpreter answers a validation split of 20 prompts per
k; training stops once every k has >= 99% of its outputs well-formed and >= 98% of its
queries right (or when the step budget ends). Then it reports the rates per k on 200
held-out prompts and writes CHECKPOINT/config.json ("family": "pasta") +
model.safetensors, through a temporary folder.

    .venv/bin/python scripts/train_pasta.py --stacks 1 -o checkpoints/pasta-lm
    .venv/bin/python scripts/train_pasta.py --stacks 2 -o checkpoints/pasta-stag2
"""

import argparse
import json
import time
from pathlib import Path

import torch
from edgeseq.models.checkpoint import make_config, native_record, save_checkpoint
from edgeseq.models.pasta import PastaCorpus, held_out_report, pasta_loss
from edgeseq.models.pasta_task import pasta_examples, pasta_examples_per_k
from edgeseq.models.training import Converged, train

VALIDATION_SEED, HELD_OUT_SEED = 77_777, 123_456
CHECK_EVERY = 250


def validation_split() -> list:
    return pasta_examples_per_k(20, VALIDATION_SEED)


def good_enough(report: dict) -> bool:
    return all(r["well_formed"] >= 0.99 and r["queries"] >= 0.98 for r in report["per_k"].values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stacks", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6000, help="the step budget (the lr schedule's length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = PastaCorpus()
    config = make_config("pasta", "tiny", {"vocab_size": corpus.vocab_size, "n_stacks": args.stacks})
    torch.manual_seed(args.seed)
    model = native_record("pasta").model_class(config)
    validation = validation_split()
    start = time.time()

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % CHECK_EVERY:
            return
        model.eval()
        report = held_out_report(model, validation)
        model.train()
        worst = min(r["queries"] for r in report["per_k"].values())
        print(f"step {step + 1}: loss {loss:.4f}, validation well-formed {report['well_formed']:.3f} "
              f"queries {report['queries']:.3f} (worst k {worst:.3f}) ({time.time() - start:.0f} s)", flush=True)
        if good_enough(report):
            raise Converged

    train(model, corpus, steps=args.steps, batch=32, lr=3e-3, seed=args.seed, on_step=on_step, loss_fn=pasta_loss)
    save_checkpoint(model, "pasta", args.output, force=True)
    print(f"wrote {args.output} after {time.time() - start:.0f} s")
    report = held_out_report(model, pasta_examples(200, HELD_OUT_SEED))
    print(json.dumps({"held_out": report}, default=float, indent=2))


if __name__ == "__main__":
    main()
