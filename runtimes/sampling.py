"""Next-token choice from logits: greedy, or seeded sampling with temperature, top-k and top-p."""

from dataclasses import dataclass

import numpy as np

from edgeseq.errors import GenerateError


@dataclass(frozen=True)
class SamplingOptions:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1.0 = no nucleus cut
    seed: int | None = None

    def validate(self) -> None:
        if self.temperature <= 0:
            raise GenerateError(f"temperature={self.temperature} must be > 0", "use a temperature such as 0.7, or greedy decoding")
        if self.top_k < 0:
            raise GenerateError(f"top_k={self.top_k} must be >= 0", "use 0 to disable top-k")
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top_p={self.top_p} must be in (0, 1]", "use 1.0 to disable nucleus sampling")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise GenerateError(f"seed={self.seed} must be a non-negative integer", "use e.g. seed=0, or none")


def choose_next(logits: np.ndarray, options: SamplingOptions, rng: np.random.Generator) -> np.ndarray:
    """logits: [B, V] -> next token ids [B] (int64)."""
    if not options.do_sample:
        return logits.argmax(axis=-1).astype(np.int64, copy=False)
    probs = sampling_distribution(logits, options)
    cumulative = probs.cumsum(axis=-1)
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((cumulative < draws).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)


def sampling_distribution(logits: np.ndarray, options: SamplingOptions) -> np.ndarray:
    """The distribution [B, V] (float64) sampling draws from: temperature, then the top-k and
    top-p cuts, renormalised (transformers' warpers, in their order)."""
    scores = logits.astype(np.float64) / options.temperature
    if options.top_k and options.top_k < scores.shape[-1]:
        kth = np.partition(scores, -options.top_k, axis=-1)[:, -options.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if options.top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < options.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs
