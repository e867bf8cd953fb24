"""What `edgeseq.runtimes.load` returns: a loaded model that many threads can use at once.

`generate` (a batch of independent rows) and `stream` (one row, token by token) both turn
their input into sequences and hand them to the model's one scheduler, which batches them
with everyone else's. Checks on the input happen here, in the caller's thread, so a bad
request fails at once with a GenerateError naming the problem and the fix.
"""

import queue
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeseq.errors import GenerateError, ModelClosedError

from .artifact import Artifact
from .backend import Backend
from .decoding import GenerateResult, normalize_input
from .engine import Engine
from .sampling import SamplingOptions
from .scheduler import Scheduler
from .sequence import FINISHED, Sequence, row_rng
from .text import TextCodec, TextMethods, text_codec

POLL_S = 1.0  # how often a waiting caller checks that the scheduler is still alive
OPEN_MODELS: "weakref.WeakSet[LoadedModel]" = weakref.WeakSet()  # not yet closed (tests close leftovers)


class TokenStream:
    """One request's tokens as an iterator. `close()` may be called from any thread, also
    while another thread waits in `next()` (a server whose client went away): the row is
    dropped at the next step and the waiting `next()` ends the iteration."""

    def __init__(self, seq: Sequence, events: Iterator[int]):
        self.seq = seq
        self._events = events

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> int:
        try:
            return next(self._events)
        except BaseException:
            self.seq.cancel()
            raise

    @property
    def tokens(self) -> list[int]:
        return self.seq.tokens

    def close(self) -> None:
        self.seq.cancel()

    def __del__(self) -> None:
        self.seq.cancel()


class LoadedModel(TextMethods):
    def __init__(self, artifact: Artifact, backend: Backend, engine: Engine, scheduler: Scheduler):
        self.artifact = artifact
        self.backend = backend
        self.engine = engine
        self.scheduler = scheduler
        self.config: dict[str, Any] = artifact.config
        self.codec: TextCodec | None = text_codec(artifact)
        OPEN_MODELS.add(self)

    # ----- requests -----------------------------------------------------------------------------
    def _sequences(self, input_ids, max_new_tokens: int, stop_tokens, sampling: SamplingOptions | None,
                   return_logits: bool, timeout: float | None, streamed: bool = False) -> list[Sequence]:
        sampling = sampling or SamplingOptions()
        sampling.validate()
        if max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens={max_new_tokens} must be >= 1", "ask for at least one new token")
        rows = normalize_input(input_ids, self.config["vocab_size"])
        self._check_lengths(max(len(r) for r in rows), max_new_tokens)
        stops = frozenset([self.config["eos_token_id"]] if stop_tokens is None else (int(t) for t in stop_tokens))
        deadline = time.monotonic() + timeout if timeout is not None else None
        return [Sequence(row, max_new_tokens, stops, sampling, row_rng(sampling, b), deadline, return_logits, streamed)
                for b, row in enumerate(rows)]

    def _check_lengths(self, longest: int, max_new_tokens: int) -> None:
        limit = self.config.get("max_positions")
        if limit is None:
            return
        word = "prompt" if self.engine.shape == "decoder_only" else "source"
        if longest > limit:
            raise GenerateError(f"{word} of {longest} tokens is longer than max_positions={limit}",
                                f"shorten the input to at most {limit} tokens")
        counted = self.engine.shape == "decoder_only" or self.config.get("consecutive_positions")
        needed = (longest if counted else 0) + max_new_tokens
        if needed > limit:
            raise GenerateError(
                f"{word} ({longest}) + max_new_tokens ({max_new_tokens}) exceeds max_positions={limit}",
                f"lower --max-new-tokens to {max(limit - (longest if counted else 0), 0)} or shorten the input",
            )

    def _events(self, seq: Sequence) -> Iterator[Any]:
        """A sequence's tokens as the scheduler chooses them; raises its error, if any."""
        while True:
            try:
                item = seq.events.get(timeout=POLL_S)
            except queue.Empty:
                if not self.scheduler.thread.is_alive():
                    raise ModelClosedError("the model's scheduler is not running", "load the model again") from None
                continue
            if item is FINISHED:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def generate(self, input_ids, max_new_tokens: int = 32, stop_tokens: list[int] | None = None,
                 sampling: SamplingOptions | None = None, return_logits: bool = False,
                 timeout: float | None = None) -> GenerateResult:
        """Decode up to `max_new_tokens` per row; rows stop independently at a stop token.

        `stop_tokens=None` uses the model's eos; pass [] to always run max_new_tokens.
        Safe from many threads: concurrent calls share the scheduler's batched steps.
        `timeout` (seconds) is the request's deadline.
        """
        seqs = self._sequences(input_ids, max_new_tokens, stop_tokens, sampling, return_logits, timeout)
        self.scheduler.submit(seqs)
        error = None
        for seq in seqs:
            try:
                for _ in self._events(seq):
                    pass
            except GenerateError as e:
                error = error or e
        if error:
            raise error
        result = GenerateResult([s.tokens for s in seqs])
        if return_logits:
            steps = max(len(s.logits) for s in seqs)
            vocab = self.config["vocab_size"]
            result.logits = [np.stack([s.logits[i] if i < len(s.logits) else np.full(vocab, np.nan, np.float32)
                                       for s in seqs]) for i in range(steps)]
        return result

    def stream(self, input_ids, max_new_tokens: int = 32, stop_tokens: list[int] | None = None,
               sampling: SamplingOptions | None = None, timeout: float | None = None) -> "TokenStream":
        """Yield one prompt's token ids as soon as each is chosen. Closing the stream early
        (`close()`, from any thread, or dropping it) cancels the request; its cache row is
        freed at the next step."""
        seqs = self._sequences(input_ids, max_new_tokens, stop_tokens, sampling, False, timeout, streamed=True)
        if len(seqs) != 1:
            raise GenerateError(f"stream takes one prompt, not {len(seqs)}", "call stream once per prompt, or generate for a batch")
        (seq,) = seqs
        self.scheduler.submit([seq])
        return TokenStream(seq, self._events(seq))

    # ----- the once-per-request graph alone (bench, parity) -------------------------------------
    def encode(self, rows: list[list[int]]):
        """Run the encoder (or the prefill) on rows; returns its outputs by name."""
        return self.engine.run_once(rows)[1]

    prefill = encode

    # ----- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the scheduler and every stage worker; queued and running requests fail."""
        OPEN_MODELS.discard(self)
        self.scheduler.close()
        self.engine.close()
        self.backend.close()

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
