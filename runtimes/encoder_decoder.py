"""The encoder-decoder decode loop (RED): encode once, then one decoder step per token.

Every call keeps its own state (caches, RNG), and ONNX Runtime sessions may be run from
many threads at once, so `generate` is safe to call concurrently. Caches stay OrtValues
from one step to the next: only the logits cross into numpy.
"""

from dataclasses import dataclass, field

import numpy as np

from edgeseq.errors import GenerateError

from .artifact import Artifact
from .ort_backend import OrtBackend
from .sampling import SamplingOptions, choose_next


@dataclass
class GenerateResult:
    tokens: list[list[int]]  # per row, generated ids (a stop token, if hit, is the last)
    logits: list[np.ndarray] = field(default_factory=list)  # per step [B, V], when asked for


def normalize_input(input_ids, vocab_size: int) -> list[list[int]]:
    """Accept one sequence or a batch of them; reject empty or out-of-vocabulary ids."""
    if isinstance(input_ids, np.ndarray):
        input_ids = input_ids.tolist()
    if not isinstance(input_ids, (list, tuple)) or len(input_ids) == 0:
        raise GenerateError("input is empty", "pass at least one token id, e.g. --input-ids \"5 17 3\"")
    rows = [list(input_ids)] if not isinstance(input_ids[0], (list, tuple, np.ndarray)) else [list(r) for r in input_ids]
    for b, row in enumerate(rows):
        if not row:
            raise GenerateError(f"input row {b} is empty", "every sequence needs at least one token id")
        for t in row:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise GenerateError(f"input row {b} holds {t!r}, not a token id", "pass integer token ids")
            if not 0 <= t < vocab_size:
                raise GenerateError(
                    f"token id {t} in row {b} is outside the vocabulary [0, {vocab_size})",
                    f"use ids from 0 to {vocab_size - 1}",
                )
    return rows


class EncoderDecoderModel:
    """A loaded RED artifact: `generate` turns source ids into target ids."""

    def __init__(self, artifact: Artifact, backend: OrtBackend):
        self.artifact = artifact
        self.backend = backend
        c = artifact.config
        self.config = c
        self.n_layers = c["n_layers"]
        self.kv_shape = (c["n_heads"], c["d_model"] // c["n_heads"])
        self.encoder = artifact.graph("encoder")["name"]
        self.decoder = artifact.graph("decoder_step")["name"]

    # ----- the two halves, usable on their own (bench, parity) -----------------------------
    def encode(self, rows: list[list[int]]):
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        source = np.full((len(rows), lengths.max()), self.config["pad_token_id"], dtype=np.int64)
        mask = np.zeros_like(source)
        for b, r in enumerate(rows):
            source[b, : len(r)] = r
            mask[b, : len(r)] = 1
        outputs = self.backend.run(self.encoder, {"source_ids": source, "source_mask": mask})
        return outputs, mask, lengths

    def _check_lengths(self, lengths: np.ndarray, max_new_tokens: int) -> None:
        limit = self.config["max_positions"]
        longest = int(lengths.max())
        if longest > limit:
            raise GenerateError(
                f"source of {longest} tokens is longer than max_positions={limit}",
                f"shorten the input to at most {limit} tokens",
            )
        needed = (longest if self.config["consecutive_positions"] else 0) + max_new_tokens
        if needed > limit:
            raise GenerateError(
                f"source ({longest}) + max_new_tokens ({max_new_tokens}) exceeds max_positions={limit}",
                f"lower --max-new-tokens to {max(limit - longest, 0)} or shorten the input",
            )

    def generate(
        self,
        input_ids,
        max_new_tokens: int = 32,
        stop_tokens: list[int] | None = None,
        sampling: SamplingOptions | None = None,
        return_logits: bool = False,
    ) -> GenerateResult:
        """Decode up to `max_new_tokens` per row; rows stop independently at a stop token.

        `stop_tokens=None` uses the model's eos; pass [] to always run max_new_tokens.
        """
        sampling = sampling or SamplingOptions()
        sampling.validate()
        if max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens={max_new_tokens} must be >= 1", "ask for at least one new token")
        c = self.config
        rows = normalize_input(input_ids, c["vocab_size"])
        stops = np.array([c["eos_token_id"]] if stop_tokens is None else list(stop_tokens), dtype=np.int64)
        source_lengths = np.array([len(r) for r in rows])
        self._check_lengths(source_lengths, max_new_tokens)
        source_kv, mask, lengths = self.encode(rows)
        batch = len(rows)
        feeds = {"source_mask": mask}
        for i in range(self.n_layers):
            feeds[f"source_key.{i}"], feeds[f"source_value.{i}"] = source_kv[2 * i], source_kv[2 * i + 1]
            empty = np.zeros((batch, *self.kv_shape[:1], 0, self.kv_shape[1]), dtype=np.float32)
            feeds[f"past_key.{i}"] = feeds[f"past_value.{i}"] = empty
        start = lengths[:, None] if c["consecutive_positions"] else np.zeros((batch, 1), dtype=np.int64)
        token = np.full((batch, 1), c["bos_token_id"], dtype=np.int64)
        rng = np.random.default_rng(sampling.seed)
        done = np.zeros(batch, dtype=bool)
        generated: list[list[int]] = [[] for _ in range(batch)]
        step_logits = []
        for step in range(max_new_tokens):
            feeds["input_ids"] = token
            feeds["positions"] = start + step
            outputs = self.backend.run(self.decoder, feeds)
            logits = outputs[0].numpy()[:, -1]  # logits: [B, V]
            if return_logits:
                step_logits.append(logits)
            next_ids = choose_next(logits, sampling, rng)
            for b in np.flatnonzero(~done):
                generated[b].append(int(next_ids[b]))
            done |= np.isin(next_ids, stops)
            if done.all():
                break
            for i in range(self.n_layers):
                feeds[f"past_key.{i}"], feeds[f"past_value.{i}"] = outputs[1 + 2 * i], outputs[2 + 2 * i]
            token = next_ids[:, None]
        return GenerateResult(generated, step_logits)
