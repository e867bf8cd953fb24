"""What `edgeseq.runtimes.load` returns for a PASTA artifact: a model that writes its own
parallelism, decoded by the PASTA scheduler (runtimes/pasta.py).

    with edgeseq.runtimes.load("artifacts/pasta-lm") as model:          # schedule="parallel"
        result = model.generate(prompt_ids)
        result.tokens, result.threads, result.outcome

The manifest's "pasta" section names the tag ids (and the vocabulary `inspect` shows);
budgets are per call. One call decodes at a time (the scheduler owns the engine while it
runs); concurrent callers wait for the lock, so the model is safe to share.
"""

import threading
from typing import Any

from edgeseq.errors import GenerateError

from .artifact import Artifact
from .backend import Backend
from .decoding import normalize_input
from .engine import Engine
from .model import OPEN_MODELS
from .pasta import SCHEDULES, PastaResult, PastaScheduler
from .pasta_lang import Budgets, PastaTags
from .sampling import SamplingOptions
from .text import TextCodec, TextMethods, text_codec


class PastaModel(TextMethods):
    def __init__(self, artifact: Artifact, backend: Backend, engine: Engine, schedule: str):
        if schedule not in SCHEDULES:
            raise GenerateError(f"unknown PASTA schedule {schedule!r}", f"choose one of: {', '.join(SCHEDULES)}")
        self.artifact, self.backend, self.engine, self.schedule = artifact, backend, engine, schedule
        self.config: dict[str, Any] = artifact.config
        section = artifact.manifest["pasta"]
        self.tags = PastaTags.from_dict(section["tags"])
        self.vocabulary: dict[str, int] = section.get("vocabulary", {})
        self.codec: TextCodec | None = text_codec(artifact)
        self._lock = threading.Lock()
        self._closed = False
        OPEN_MODELS.add(self)

    def generate(self, input_ids, budgets: Budgets | None = None, sampling: SamplingOptions | None = None,
                 schedule: str | None = None, forced: list[list[int]] | None = None,
                 record_logits: bool = False) -> list[PastaResult]:
        """Decode a PASTA answer per prompt (one prompt, or a list): the spliced tokens, a
        timeline per thread, and the outcome. `schedule` overrides the loaded one for this
        call; `forced` feeds given answers instead of choosing (teacher forcing)."""
        budgets = budgets or Budgets()
        budgets.validate()
        sampling = sampling or SamplingOptions()
        sampling.validate()
        rows = normalize_input(input_ids, self.config["vocab_size"])
        limit = self.config.get("max_positions")
        for b, row in enumerate(rows):
            if limit is not None and len(row) >= limit:
                raise GenerateError(f"prompt {b} has {len(row)} tokens; the model's positions end at {limit}",
                                    f"shorten it to at most {limit - 1} tokens")
        if forced is not None:
            if len(forced) != len(rows):
                raise GenerateError(f"{len(forced)} forced answers for {len(rows)} prompts", "give one forced answer per prompt")
            forced = [normalize_input(answer, self.config["vocab_size"])[0] if len(answer) else [] for answer in forced]
        with self._lock:
            if self._closed:
                raise GenerateError("the model is closed", "load the artifact again")
            scheduler = PastaScheduler(self.engine, self.tags, self.config, budgets, schedule or self.schedule)
            return scheduler.run(rows, sampling, forced, record_logits)

    def close(self) -> None:
        with self._lock:
            OPEN_MODELS.discard(self)
            if not self._closed:
                self._closed = True
                self.engine.close()
                self.backend.close()

    def __enter__(self) -> "PastaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
