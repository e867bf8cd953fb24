"""What `edgeseq.runtimes.load` returns for every artifact: a model many threads can use at once.

`generate` (a batch of independent prompts, `n` completions each) and `stream` (one prompt,
token by token) take the same arguments and return the same types for every family. The
artifact's decoding (runtimes/policies/) turns their input into requests, each with its
policy, and hands them to the model's one scheduler, which batches their rows with
everyone else's. Checks on the input happen here, in the caller's thread, so a bad
request fails at once with a GenerateError naming the problem and the fix; what only one
decoding takes (PASTA: `budgets`, `schedule`, `forced`) is a keyword option it validates.
"""

import queue
import weakref
from collections.abc import Iterator
from typing import Any

from edgeseq.errors import GenerateError, ModelClosedError

from .artifact import Artifact
from .backend import Backend
from .decoding import GenerateResult, normalize_input
from .engine import Engine
from .policies import Decoding
from .requests import FINISHED, Request, TokenEvent
from .sampling import SamplingOptions
from .scheduler import Scheduler
from .text import TextCodec, TextMethods, text_codec

POLL_S = 1.0  # how often a waiting caller checks that the scheduler is still alive
OPEN_MODELS: "weakref.WeakSet[LoadedModel]" = weakref.WeakSet()  # not yet closed (tests close leftovers)


class TokenStream:
    """One request's tokens as an iterator of ids, in the order they are chosen (`events()`
    gives each with its row, thread and position). `close()` may be called from any
    thread, also while another thread waits in `next()` (a server whose client went
    away): every row of the request is dropped at the next step and the waiting `next()`
    ends the iteration. `result` is the request's GenerateResult once it has ended."""

    def __init__(self, model: "LoadedModel", request: Request):
        self.model = model
        self.request = request
        self._events = model._events(request)

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> int:
        return self.next_event().token

    def next_event(self) -> TokenEvent:
        try:
            return next(self._events)
        except BaseException:
            self.request.cancel()
            raise

    def events(self) -> Iterator[TokenEvent]:
        while True:
            try:
                yield self.next_event()
            except StopIteration:
                return

    @property
    def result(self) -> GenerateResult | None:
        if self.request.result is None:
            return None
        return GenerateResult.from_rows(self.request.result, self.model.config["vocab_size"])

    @property
    def tokens(self) -> list[int]:
        """The first output row's tokens: so far, or (once ended) its result's."""
        if self.request.result is not None:
            return self.request.result[0].tokens
        return self.request.rows[0].tokens if self.request.rows else []

    def close(self) -> None:
        self.request.cancel()

    def __del__(self) -> None:
        self.request.cancel()


class LoadedModel(TextMethods):
    def __init__(self, artifact: Artifact, backend: Backend, engine: Engine, scheduler: Scheduler, decoding: Decoding):
        self.artifact = artifact
        self.backend = backend
        self.engine = engine
        self.scheduler = scheduler
        self.decoding = decoding
        self.config: dict[str, Any] = artifact.config
        self.codec: TextCodec | None = text_codec(artifact)
        decoding.codec = self.codec
        OPEN_MODELS.add(self)

    # ----- requests -----------------------------------------------------------------------------
    def _requests(self, input_ids, max_new_tokens: int | None, stop_tokens, sampling: SamplingOptions | None, n: int,
                  return_logits: bool, timeout: float | None, streamed: bool, options: dict) -> list[Request]:
        if sampling is not None:
            sampling.validate()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise GenerateError(f"n={n!r} must be a whole number >= 1", "ask for n=1 or more completions per prompt")
        rows = normalize_input(input_ids, self.config["vocab_size"])
        return self.decoding.requests(rows, max_new_tokens, stop_tokens, sampling, n, return_logits, timeout,
                                      streamed, options)

    def _events(self, request: Request) -> Iterator[TokenEvent]:
        """A request's token events as the scheduler chooses them; raises its error, if any."""
        while True:
            try:
                item = request.events.get(timeout=POLL_S)
            except queue.Empty:
                if not self.scheduler.thread.is_alive():
                    raise ModelClosedError("the model's scheduler is not running", "load the model again") from None
                continue
            if item is FINISHED:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def generate(self, input_ids, max_new_tokens: int | None = None, stop_tokens: list[int] | None = None,
                 sampling: SamplingOptions | None = None, n: int = 1, return_logits: bool = False,
                 timeout: float | None = None, **options) -> GenerateResult:
        """Decode up to `max_new_tokens` per row (default 32; PASTA: the spliced answer's
        budget, 160); rows stop independently at a stop token. `n` completions per prompt
        (one prefill each, rows forked from it; row i of prompt b draws from RNG stream
        (seed, b*n + i)).

        `stop_tokens=None` uses the model's eos; pass [] to always run max_new_tokens.
        Safe from many threads: concurrent calls share the scheduler's batched steps.
        `timeout` (seconds) is the request's deadline. `options`: what only this
        artifact's decoding takes (`model.decoding.options`), e.g. `stop_strings=["\n"]`
        (a row ends when its text holds one; `rows[i].text` is the text cut before it, or
        after it with `include_stop_str_in_output=True`; needs the artifact's tokenizer).
        """
        requests = self._requests(input_ids, max_new_tokens, stop_tokens, sampling, n, return_logits, timeout,
                                  False, options)
        self.scheduler.submit(requests)
        error = None
        for request in requests:
            try:
                for _ in self._events(request):
                    pass
            except GenerateError as e:
                error = error or e
        if error:
            raise error
        return GenerateResult.from_rows([row for r in requests for row in r.result], self.config["vocab_size"])

    def stream(self, input_ids, max_new_tokens: int | None = None, stop_tokens: list[int] | None = None,
               sampling: SamplingOptions | None = None, n: int = 1, timeout: float | None = None,
               **options) -> TokenStream:
        """Yield one prompt's token ids as soon as each is chosen (with n > 1, or PASTA's
        threads, interleaved: `events()` says whose each is). Closing the stream early
        (`close()`, from any thread, or dropping it) cancels the request; its rows are freed
        at the next step."""
        requests = self._requests(input_ids, max_new_tokens, stop_tokens, sampling, n, False, timeout, True, options)
        if len(requests) != 1:
            prompts = len(normalize_input(input_ids, self.config["vocab_size"]))
            what = f"{prompts} prompts" if prompts != 1 else f"n={n} completions as {len(requests)} requests"
            raise GenerateError(f"stream takes one prompt (one request), not {what}",
                                "call stream once per prompt (PASTA: once per completion), or generate for a batch")
        self.scheduler.submit(requests)
        return TokenStream(self, requests[0])

    def streams(self, input_ids, max_new_tokens: int | None = None, stop_tokens: list[int] | None = None,
                sampling: SamplingOptions | None = None, n: int = 1, timeout: float | None = None,
                **options) -> list[TokenStream]:
        """One TokenStream per request the input makes (a prompt; PASTA: each of its n
        documents), all submitted at once: what a server reads when it must be able to
        cancel a request whose client went away."""
        requests = self._requests(input_ids, max_new_tokens, stop_tokens, sampling, n, False, timeout, True, options)
        self.scheduler.submit(requests)
        return [TokenStream(self, r) for r in requests]

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
