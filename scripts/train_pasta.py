"""Train PASTA's checkpoints on this CPU: a p = 1 LM and a p = 2 StagFormer under PASTA's
masks (models/pasta.py), on the multi-query composition task (models/pasta_task.py).

Each trains until the sequential interpreter answers >= 98% of a validation split
(checked every 500 steps) or the step budget ends, then reports well-formed and correct
rates per k on 200 held-out prompts and writes CHECKPOINT/config.json (family
"stagformer" until the PASTA family is registered) + model.safetensors.

    .venv/bin/python scripts/train_pasta.py --stacks 1 -o checkpoints/pasta-lm
    .venv/bin/python scripts/train_pasta.py --stacks 2 -o checkpoints/pasta-stag2
"""

import argparse
import json
import time
from pathlib import Path

import torch
from edgeseq.models.checkpoint import make_config, save_checkpoint
from edgeseq.models.pasta import PastaCorpus, held_out_report, pasta_loss
from edgeseq.models.pasta_task import pasta_examples
from edgeseq.models.registry import family_spec
from edgeseq.models.training import Converged, train

RECIPE = {"max_positions": 128, "d_model": 128, "d_ff": 512, "n_layers": 4}
VALIDATION_SEED, HELD_OUT_SEED = 77_777, 123_456


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stacks", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    corpus = PastaCorpus()
    config = make_config("stagformer", "tiny", {"vocab_size": corpus.vocab_size, "n_stacks": args.stacks, **RECIPE})
    torch.manual_seed(args.seed)
    model = family_spec("stagformer").model_class(config)
    validation = pasta_examples(40, VALIDATION_SEED)
    start = time.time()

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % 500:
            return
        model.eval()
        report = held_out_report(model, validation)
        model.train()
        print(f"step {step + 1}: loss {loss:.4f}, validation well-formed {report['well_formed']:.3f} "
              f"correct {report['correct']:.3f} ({time.time() - start:.0f} s)", flush=True)
        if report["correct"] >= 0.98:
            raise Converged

    train(model, corpus, steps=args.steps, batch=32, lr=3e-3, seed=args.seed, on_step=on_step, loss_fn=pasta_loss)
    report = held_out_report(model, pasta_examples(200, HELD_OUT_SEED))
    print(json.dumps({"held_out": report}, default=float, indent=2))
    save_checkpoint(model, "stagformer", args.output, force=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
