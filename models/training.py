"""A small CPU training loop for the composition task: RED (with its source auto-encoder
loss) as an encoder-decoder, StagFormer as a decoder-only LM with its stacks run in turn.

Gets a tiny model to high held-out accuracy in a minute or two on two cores, so that
demos and tests run on weights whose outputs mean something.
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


def train(
    model,
    task: CompositionTask,
    steps: int = 3000,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """AdamW with warmup and cosine decay; returns the loss curve."""
    loss_fn = red_loss if hasattr(model, "encode") else decoder_only_loss
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
            on_step(step, losses[-1])
    model.eval()
    return losses


VALIDATION_SEED = 77_777  # chooses between attempts; held-out test seeds are elsewhere


def train_until_accurate(
    make_model: Callable[[], torch.nn.Module],
    task: CompositionTask,
    steps: int = 2000,
    attempts: int = 3,
    threshold: float = 0.95,
    on_attempt: Callable[[int], Callable[[int, float], None] | None] | None = None,
    on_result: Callable[[int, float], None] | None = None,
):
    """Train fresh models (seed 0, 1, ...) until one is >= `threshold` right on a validation
    split, at most `attempts` times; returns the last model and its validation accuracy.

    The composition lookup is learned after a loss plateau whose length depends on the
    seed (most seeds leave it within 2000 steps, some do not): checking and retrying makes
    training dependable without hiding that.
    """
    model, accuracy = None, 0.0
    for attempt in range(attempts):
        torch.manual_seed(attempt)
        model = make_model()
        train(model, task, steps=steps, seed=attempt, on_step=on_attempt(attempt) if on_attempt else None)
        accuracy = greedy_accuracy(model, task, seed=VALIDATION_SEED)
        if on_result:
            on_result(attempt, accuracy)
        if accuracy >= threshold:
            break
    return model, accuracy
