"""The encoder-decoder decode loop (RED, NASH T5/BART): encode once, then one decoder step per token.

The graphs' signatures in the manifest drive it: every encoder output feeds the decoder
input of the same name (the source mask too, where the decoder takes it), every
`present_*` output becomes next step's `past_*`, and each past starts empty with its
own head count (pruned layers differ).

Every call keeps its own state (caches, RNG), and ONNX Runtime sessions may be run from
many threads at once, so `generate` is safe to call concurrently. Caches stay OrtValues
from one step to the next: only the logits cross into numpy.
"""

import numpy as np
import onnxruntime as ort

from edgeseq.errors import GenerateError

from .artifact import Artifact
from .decoding import Decoding, GenerateResult
from .ort_backend import OrtBackend
from .sampling import SamplingOptions


class EncoderDecoderModel:
    """A loaded encoder-decoder artifact: `generate` turns source ids into target ids."""

    def __init__(self, artifact: Artifact, backend: OrtBackend):
        self.artifact = artifact
        self.backend = backend
        self.config = artifact.config
        encoder, decoder = artifact.graph("encoder"), artifact.graph("decoder_step")
        self.encoder, self.decoder = encoder["name"], decoder["name"]
        self.source_names = [t["name"] for t in encoder["outputs"]]
        self.decoder_inputs = {t["name"] for t in decoder["inputs"]}
        # past_* input -> (heads, head_dim) of its empty first-step value
        self.past_shapes = {t["name"]: (t["dims"][1], t["dims"][3]) for t in decoder["inputs"]
                            if t["name"].startswith("past_")}
        outputs = [t["name"] for t in decoder["outputs"]]
        self.carry = [(i, "past_" + name[len("present_"):]) for i, name in enumerate(outputs)
                      if name.startswith("present_")]

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
        limit = self.config.get("max_positions")
        if limit is None:
            return
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
        d = Decoding(input_ids, self.config, max_new_tokens, stop_tokens, sampling, return_logits)
        c = self.config
        self._check_lengths(np.array([len(r) for r in d.rows]), max_new_tokens)
        source_kv, mask, lengths = self.encode(d.rows)
        batch = len(d.rows)
        # every feed an OrtValue, the read-only ones wrapped once: a step streams all the
        # weights through the caches, so the Python between two steps runs cold; keep it short
        wrap = ort.OrtValue.ortvalue_from_numpy
        feeds = {name: value for name, value in zip(self.source_names, source_kv) if name in self.decoder_inputs}
        if "source_mask" in self.decoder_inputs:  # RED; NASH's encoder returns a bias instead
            feeds["source_mask"] = wrap(mask)
        for name, (heads, head_dim) in self.past_shapes.items():
            feeds[name] = wrap(np.zeros((batch, heads, 0, head_dim), dtype=np.float32))
        start = lengths[:, None] if c["consecutive_positions"] else np.zeros((batch, 1), dtype=np.int64)
        token = np.full((batch, 1), c["bos_token_id"], dtype=np.int64)
        for step in range(max_new_tokens):
            feeds["input_ids"] = wrap(token)
            feeds["positions"] = wrap(start + step)
            outputs = self.backend.run_values(self.decoder, feeds)
            next_ids = d.choose(outputs[0].numpy()[:, -1])  # logits: [B, V]
            if d.finished:
                break
            for index, name in self.carry:
                feeds[name] = outputs[index]
            token = next_ids[:, None]
        return d.result
