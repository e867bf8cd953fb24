"""The one CPU training loop every trained model here goes through: RED (with its source
auto-encoder loss) as an encoder-decoder, StagFormer (p = 1 is the plain LM) as a
decoder-only LM with its stacks run in turn, and any model that brings its own loss.

On the composition task (models/tasks.py) a tiny model reaches 100% held-out accuracy in
a few hundred steps, well under a minute on two cores. What used to make that fragile
was the task, not the optimiser: when the target started at f_1(x), the first token
needed two hops and training sat on a plateau for a seed-dependent (and CPU-dependent)
time; the chain now starts by copying x, so every token is one lookup.
`train_until_accurate` still validates every model, stops as soon as it is right, and
retries a failed seed, so no plateaued model is ever presented as trained.
"""

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import BOS, PAD, CompositionTask, exact_match


def decoder_inputs(target: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: [bos, t_0, ..., t_{T-2}]."""
    bos = torch.full((target.shape[0], 1), BOS, dtype=target.dtype)
    return torch.cat([bos, target[:, :-1]], dim=1)


def red_loss(model, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = (source != PAD).long()
    logits, source_logits = model(source, mask, decoder_inputs(target))
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    weight = model.config.source_autoencoder_weight
    if weight > 0:
        # the source LM loss: predict source token j+1 from the encoder's state at j
        loss = loss + weight * F.cross_entropy(source_logits[:, :-1].flatten(0, 1), source[:, 1:].flatten())
    return loss


def decoder_only_loss(model, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A decoder-only LM (StagFormer) reads [source ; bos ; target] and is scored on the target."""
    seq = torch.cat([source, torch.full((source.shape[0], 1), BOS), target[:, :-1]], dim=1)
    n = seq.shape[1]
    logits, *_ = model(seq, torch.arange(n).expand(seq.shape[0], -1), torch.ones_like(seq))
    answer = logits[:, source.shape[1] :]  # positions from bos on predict the target
    return F.cross_entropy(answer.flatten(0, 1), target.flatten())


def decoder_only_prompt(source) -> list[list[int]]:
    """The prompt a trained decoder-only model continues: the source, then bos."""
    return [list(row) + [BOS] for row in source.tolist()]


def greedy_accuracy(model, task: CompositionTask, n: int = 256, seed: int = 10_000) -> float:
    source, target = task.sample(n, seed)
    src = torch.from_numpy(source)
    if hasattr(model, "encode"):  # encoder-decoder (RED)
        tokens, _ = model.generate_greedy(src, torch.ones_like(src), task.target_length)
    else:
        prompt = torch.tensor(decoder_only_prompt(source))
        tokens, _ = model.generate_greedy(prompt, task.target_length)
    return exact_match(tokens.tolist(), target)


class Converged(Exception):
    """Raised from an `on_step` callback to end training early."""


def default_loss(model) -> Callable:
    return red_loss if hasattr(model, "encode") else decoder_only_loss


def train(
    model,
    task,
    steps: int = 3000,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    loss_fn: Callable | None = None,
) -> list[float]:
    """AdamW with warmup and cosine decay; returns the loss curve (shorter when `on_step`
    raised Converged). `task.sample(batch, seed)` gives (source, target) arrays; `loss_fn
    (model, source, target)` defaults to the model's kind (encoder-decoder or decoder-only)."""
    loss_fn = loss_fn or default_loss(model)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    for step in range(steps):
        # fresh samples every step: the train seeds never reach the held-out seed range
        source, target = task.sample(batch, seed * 1_000_003 + step)
        loss = loss_fn(model, torch.from_numpy(source), torch.from_numpy(target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            try:
                on_step(step, losses[-1])
            except Converged:
                break
    model.eval()
    return losses


# The recipes every trained composition model here uses (the demo's RED, the StagFormer
# stacks and the p = 1 LM they are compared with): family and config overrides at the
# `tiny` preset, for a task's vocabulary.
RECIPES: dict[str, tuple[str, dict]] = {
    "red": ("red", {"max_positions": 64, "source_autoencoder_weight": 0.1, "d_model": 128, "d_ff": 512}),
    "stagformer-p2": ("stagformer", {"max_positions": 64, "d_model": 128, "d_ff": 512, "n_layers": 4, "n_stacks": 2}),
    "stagformer-p1": ("stagformer", {"max_positions": 64, "d_model": 128, "d_ff": 512, "n_layers": 4, "n_stacks": 1}),
}


def recipe_model(name: str, task) -> Callable[[], torch.nn.Module]:
    """A maker of fresh models of a named recipe for `task` (call it after seeding)."""
    from .checkpoint import make_config, native_record

    family, overrides = RECIPES[name]
    config = make_config(family, "tiny", {"vocab_size": task.vocab_size, **overrides})
    return lambda: native_record(family).model_class(config)


VALIDATION_SEED = 77_777  # chooses between attempts; held-out test seeds are elsewhere
CHECK_EVERY = 250  # steps between validation checks
DONE_AT = 0.99  # validation accuracy at which training stops early


def train_until_accurate(
    make_model: Callable[[], torch.nn.Module],
    task,
    steps: int = 2000,
    attempts: int = 3,
    threshold: float = 0.95,
    on_attempt: Callable[[int], Callable[[int, float], None] | None] | None = None,
    on_result: Callable[[int, float], None] | None = None,
    evaluate: Callable[[torch.nn.Module], float] | None = None,
    loss_fn: Callable | None = None,
    first_seed: int = 0,
):
    """Train fresh models (seed first_seed, first_seed + 1, ...) until one is >= `threshold`
    right on a validation split, at most `attempts` times; returns the last model and its
    validation accuracy. Each attempt checks the validation split every CHECK_EVERY steps
    and stops once it reaches DONE_AT; `evaluate(model)` defaults to greedy exact match
    on the composition task.
    """
    evaluate = evaluate or (lambda m: greedy_accuracy(m, task, seed=VALIDATION_SEED))
    model, accuracy = None, 0.0
    for attempt in range(first_seed, first_seed + attempts):
        torch.manual_seed(attempt)
        model = make_model()
        report = on_attempt(attempt) if on_attempt else None

        def on_step(step: int, loss: float, model=model, report=report) -> None:
            if report:
                report(step, loss)
            if (step + 1) % CHECK_EVERY == 0:
                model.eval()
                done = evaluate(model) >= DONE_AT
                model.train()
                if done:
                    raise Converged

        train(model, task, steps=steps, seed=attempt, on_step=on_step, loss_fn=loss_fn)
        accuracy = evaluate(model)
        if on_result:
            on_result(attempt, accuracy)
        if accuracy >= threshold:
            break
    return model, accuracy
