"""The composition task and the training loop."""

import time

import numpy as np
import pytest
import torch
from edgeseq.models.checkpoint import make_config
from edgeseq.models.red import RedModel
from edgeseq.models.stagformer import StagFormerModel
from edgeseq.models.tasks import EOS, FIRST_VALUE, CompositionTask
from edgeseq.models.training import greedy_accuracy, recipe_model, train, train_until_accurate


def test_task_is_deterministic_and_answers_are_compositions():
    task = CompositionTask(n_functions=3, n_values=5)
    a_src, a_tgt = task.sample(16, seed=1)
    b_src, b_tgt = task.sample(16, seed=1)
    assert np.array_equal(a_src, b_src) and np.array_equal(a_tgt, b_tgt)
    assert not np.array_equal(a_src, task.sample(16, seed=2)[0])
    for src, tgt in zip(a_src, a_tgt):
        tables = [src[k * 6 : k * 6 + 5] - FIRST_VALUE for k in range(3)]
        x = src[-1] - FIRST_VALUE
        chain = []
        for table in tables:
            x = table[x]
            chain.append(x)
        assert list(tgt) == [FIRST_VALUE + v for v in [src[-1] - FIRST_VALUE, *chain]] + [EOS]
    assert a_src.shape == (16, task.source_length) and a_tgt.shape == (16, task.target_length)


def test_training_reduces_the_loss():
    task = CompositionTask(2, 6)
    config = make_config("red", "tiny", {"vocab_size": task.vocab_size, "d_model": 32, "n_layers": 2, "source_autoencoder_weight": 0.1})
    torch.manual_seed(0)
    model = RedModel(config)
    losses = train(model, task, steps=60, batch=32, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


def test_stagformer_trains_as_a_decoder_only_lm():
    task = CompositionTask(2, 6)
    config = make_config("stagformer", "tiny", {"vocab_size": task.vocab_size, "d_model": 32})
    torch.manual_seed(0)
    model = StagFormerModel(config)
    losses = train(model, task, steps=60, batch=32, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


HELD_OUT = 123_456  # the demo's held-out seed; training and validation never sample it
DEMO_STEPS = 2000  # the demo's step budget


def train_recipe(name: str, seed: int, attempts: int = 1):
    """The demo's recipe for `name` (models/training.py RECIPES) from `seed`: (validation,
    held-out accuracy, steps run, seconds)."""
    task = CompositionTask(2, 8)
    steps, start = [], time.perf_counter()
    model, validation = train_until_accurate(recipe_model(name, task), task, steps=DEMO_STEPS, attempts=attempts,
                                             first_seed=seed, on_attempt=lambda a: lambda s, loss: steps.append(s))
    held_out = greedy_accuracy(model, task, seed=HELD_OUT)
    print(f"{name} seed {seed}: validation {validation:.1%}, held-out {held_out:.1%}, "
          f"{len(steps)} steps, {time.perf_counter() - start:.0f} s")
    return validation, held_out


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_demo_red_reaches_95_percent_from_every_seed(seed):
    """No retry: each of 5 seeds alone reaches the bar within the demo's step budget."""
    validation, held_out = train_recipe("red", seed)
    assert validation >= 0.95 and held_out >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stagformer-p2", "stagformer-p1"])
def test_decoder_only_models_reach_95_percent(name):
    """StagFormer p = 2 and the p = 1 LM on the decoder-only form of the task: at least 4 of 5
    seeds alone, and every seed with the demo's retry."""
    alone = [train_recipe(name, seed) for seed in range(5)]
    assert sum(v >= 0.95 and h >= 0.95 for v, h in alone) >= 4
    for seed, (v, h) in enumerate(alone):
        if not (v >= 0.95 and h >= 0.95):
            v, h = train_recipe(name, seed, attempts=3)
            assert v >= 0.95 and h >= 0.95
