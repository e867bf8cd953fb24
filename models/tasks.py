"""The L-step function-composition task (docs/design.md §1, Chen, Peng and Wu).

L lookup tables f_1..f_L over [n], each written as its n values, then a query x; the
answer is f_L(...f_1(x)). With `chain_of_thought` the target spells out the whole
chain x, f_1(x), f_2(f_1(x)), ...: every decoded token is then ONE lookup keyed by the
token just read (the first only copies the query), which is what lets tiny models learn
it in minutes on a CPU. Without the leading x, the first token needs two hops (find x at
the end of the source, then index table 1 by it) and training stalls on a plateau where
every later lookup is learned and that first one is not. Deterministic for a given seed: train and held-out splits use
different seeds.

Token ids: 0 pad, 1 bos, 2 eos, 3 table separator, 4 query marker, 5.. the values 0..n-1.
"""

from dataclasses import dataclass

import numpy as np

PAD, BOS, EOS, SEP, QUERY = 0, 1, 2, 3, 4
FIRST_VALUE = 5


@dataclass(frozen=True)
class CompositionTask:
    n_functions: int = 2  # L
    n_values: int = 8  # n
    chain_of_thought: bool = True

    @property
    def vocab_size(self) -> int:
        return FIRST_VALUE + self.n_values

    @property
    def source_length(self) -> int:
        return self.n_functions * (self.n_values + 1) + 2

    @property
    def target_length(self) -> int:
        """Answer tokens plus eos."""
        return (self.n_functions + 1 if self.chain_of_thought else 1) + 1

    def sample(self, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """source [B, S] and target [B, T] int64 arrays, the target ending in eos."""
        rng = np.random.default_rng(seed)
        tables = rng.integers(0, self.n_values, size=(batch, self.n_functions, self.n_values))
        x = rng.integers(0, self.n_values, size=batch)
        source = np.full((batch, self.source_length), SEP, dtype=np.int64)
        chain = np.zeros((batch, self.n_functions), dtype=np.int64)
        value = x
        for k in range(self.n_functions):
            start = k * (self.n_values + 1)
            source[:, start : start + self.n_values] = FIRST_VALUE + tables[:, k]
            value = tables[np.arange(batch), k, value]
            chain[:, k] = value
        source[:, -2] = QUERY
        source[:, -1] = FIRST_VALUE + x
        answer = np.concatenate([x[:, None], chain], axis=1) if self.chain_of_thought else chain[:, -1:]
        target = np.concatenate([FIRST_VALUE + answer, np.full((batch, 1), EOS)], axis=1)
        return source, target.astype(np.int64)


def exact_match(predicted: list[list[int]], target: np.ndarray) -> float:
    """Fraction of rows whose prediction (up to and including eos) equals the target."""
    hits = 0
    for row, want in zip(predicted, target.tolist()):
        hits += row[: len(want)] == want
    return hits / len(target)


# PASTA's multi-query composition task lives in pasta_task.py; its entry points are here too
from .pasta_task import PastaExample, PastaTask, pasta_check, pasta_examples  # noqa: E402

__all__ = ["CompositionTask", "PastaExample", "PastaTask", "exact_match", "pasta_check", "pasta_examples"]
