"""A fake decoder-only model on a numpy backend: the real engine, scheduler and policies over
graphs that cost microseconds, so policy tests need no compile.

The cache holds the token id fed at each slot. A step's logits peak at
(7 * sum of every token the row has seen + 3 * position) mod V, so a row's output depends
on its whole cache (a wrong fork, splice or reorder shows) and rows differ from each other.
The prefill's last logits equal the step's on the same history. `fail_next` makes the next
step raise, as a failing ONNX Runtime session would.
"""

from pathlib import Path

import numpy as np
from edgeseq.runtimes.artifact import Artifact
from edgeseq.runtimes.engine import Engine
from edgeseq.runtimes.model import LoadedModel
from edgeseq.runtimes.policies import decoding_for
from edgeseq.runtimes.scheduler import Scheduler


def _ids(name, role, dims):
    return {"name": name, "role": role, "dtype": "int64", "dims": dims}


def fake_manifest(vocab: int = 32, extra: dict | None = None) -> dict:
    return {
        "format_version": 1, "family": "fake",
        "model_config": {"vocab_size": vocab, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "max_positions": 1 << 22},
        "decode": {"shape": "decoder_only", "once": "prefill", "step": ["step"]},
        "graphs": {
            "prefill": {"role": "prefill", "inputs": [_ids("ids", "token_ids", ["batch", "seq"]), _ids("mask", "mask", ["batch", "seq"]),
                                                      _ids("pos", "positions", ["batch", "seq"])],
                        "outputs": [{"name": "logits", "role": "logits"}, {"name": "k_init", "role": "cache"}]},
            "step": {"role": "step", "inputs": [_ids("ids", "token_ids", ["batch", 1]), _ids("pos", "positions", ["batch", 1]),
                                                _ids("len", "cache_length", ["batch"]),
                                                {"name": "past", "role": "cache", "dtype": "float32", "dims": ["batch", 1, "cache", 1],
                                                 "source": "new_k", "init": "k_init"}],
                     "outputs": [{"name": "logits", "role": "logits"}, {"name": "new_k", "role": "new_cache"}]},
        },
        **(extra or {}),
    }


class FakeBackend:
    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.vocab = artifact.config["vocab_size"]
        self.fail_next = False
        self.steps = 0

    def _logits(self, seen: np.ndarray, position: np.ndarray) -> np.ndarray:
        peak = (7 * seen.astype(np.int64) + 3 * position) % self.vocab  # [B, T]
        return -0.5 * np.abs(np.arange(self.vocab) - peak[..., None]).astype(np.float32)

    def run(self, graph: str, feeds: dict) -> dict:
        if graph == "prefill":
            ids, mask = feeds["ids"], feeds["mask"]
            seen = np.cumsum(ids * mask, axis=1)
            return {"logits": self._logits(seen, feeds["pos"]), "k_init": (ids * mask).astype(np.float32)[:, None, :, None]}
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected fault")
        self.steps += 1
        past, lengths, ids = feeds["past"], feeds["len"], feeds["ids"]
        visible = np.arange(past.shape[2])[None, :] < lengths[:, None]
        seen = (past[:, 0, :, 0] * visible).sum(axis=1).astype(np.int64)[:, None] + ids
        return {"logits": self._logits(seen, feeds["pos"]), "new_k": ids.astype(np.float32)[:, None, :, None]}

    def tensor(self, array):
        return array

    def numpy(self, value):
        return value

    def close(self) -> None:
        pass


def fake_model(max_batch: int = 8, max_queue: int = 64, vocab: int = 32, extra: dict | None = None) -> LoadedModel:
    artifact = Artifact(Path("fake"), fake_manifest(vocab, extra))
    backend = FakeBackend(artifact)
    decoding = decoding_for(artifact)
    rows = max(max_batch, decoding.min_rows)
    engine = Engine(artifact, backend, rows)
    return LoadedModel(artifact, backend, engine, Scheduler(engine, rows, max_queue), decoding)
