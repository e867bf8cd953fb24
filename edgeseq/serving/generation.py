"""What both protocols share: checking a request, submitting its rows, collecting results.

Submission happens on the event loop (it only validates and queues, so a full queue is a
429 at once); waiting for tokens happens in worker threads. Every request's outcome and
timings go to the server's metrics. A collected request is its output rows (RowResult:
tokens, finish reason, and what only its decoding reports, e.g. PASTA's threads), the same
shape for every family; prompt b's n completions are rows b*n .. b*n+n-1.
"""

import time
from dataclasses import dataclass, field

from edgeseq.errors import EdgeseqError, GenerateError
from edgeseq.runtimes import RowResult, SamplingOptions, TokenEvent
from edgeseq.runtimes.text import no_tokenizer_error

from .http_errors import HTTPProblem, from_edgeseq
from .limits import ServeLimits
from .metrics import ServerMetrics

OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "bad_request", 413: "bad_request", 422: "bad_request", 429: "queue_full",
            500: "error", 503: "unavailable", 504: "deadline"}


@dataclass
class Request:
    rows: list[list[int]]
    max_tokens: int | None  # None: the artifact's default length
    stop: list[int] | None  # None: the model's eos
    sampling: SamplingOptions | None  # None: the artifact's default decoding
    started: float  # time.perf_counter() at arrival
    n: int = 1  # completions per prompt
    decoding: dict = field(default_factory=dict)  # beam search and processor options, by generate()'s names

    def stops(self, eos: int) -> set[int]:
        return {eos} if self.stop is None else set(self.stop)


class Generation:
    def __init__(self, model, limits: ServeLimits, metrics: ServerMetrics):
        self.model, self.limits, self.metrics = model, limits, metrics

    def ready(self) -> bool:
        """Whether the model's scheduler is running and takes requests."""
        return self.model.scheduler.thread.is_alive() and not self.model.scheduler.closed

    # ----- checks ---------------------------------------------------------------------------------
    def rows(self, prompt) -> list[list[int]]:
        """A prompt (text, ids, or a list of either) as id rows."""
        items = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]
        if not items or (isinstance(prompt, list) and not prompt):
            raise HTTPProblem(400, "the prompt is empty", "send text, or a list of token ids")
        if len(items) > self.limits.max_rows:
            raise HTTPProblem(400, f"{len(items)} prompts in one request; this server takes at most {self.limits.max_rows}",
                              "split the prompts over several requests")
        is_text = isinstance(items[0], str)
        if any(isinstance(item, str) != is_text for item in items):
            raise HTTPProblem(400, "the prompts mix text and token ids", "send all prompts as text or all as ids")
        if is_text:
            if not self.model.has_tokenizer:
                raise from_edgeseq(no_tokenizer_error(self.model.artifact.path.name))
            return [self.model.encode_text(item) for item in items]
        return [list(item) for item in items]

    def check_rows(self, prompts: int, n: int) -> None:
        if n < 1:
            raise HTTPProblem(400, f"n={n} must be >= 1", "ask for n=1 or more completions per prompt")
        if prompts * n > self.limits.max_rows:
            raise HTTPProblem(400, f"{prompts} prompts x n={n} is {prompts * n} completions; this server takes at most "
                              f"{self.limits.max_rows} per request", "ask for fewer completions, or split the request")

    def max_tokens(self, asked: int | None) -> int | None:
        """The client's max_tokens; unset, the artifact's default length (None) where its
        generation config sets one, else OpenAI's 16."""
        if asked is not None:
            return asked
        defaults = self.model.decoding.defaults
        return None if "max_length" in defaults or "max_new_tokens" in defaults else 16

    def options(self, max_tokens: int | None, temperature: float | None, top_p: float, top_k: int,
                seed: int | None) -> SamplingOptions | None:
        """Sampling options from OpenAI's fields; None (the artifact's default decoding) when the
        client set no temperature and the artifact has defaults, else OpenAI's 1.0."""
        if max_tokens is not None and max_tokens < 1:
            raise HTTPProblem(400, f"max_tokens={max_tokens} must be >= 1", "ask for at least one token")
        if max_tokens is not None and max_tokens > self.limits.max_tokens:
            raise HTTPProblem(400, f"max_tokens={max_tokens} is over this server's cap of {self.limits.max_tokens}",
                              f"ask for at most {self.limits.max_tokens} tokens")
        if temperature is None:
            if self.model.decoding.defaults:
                return None
            temperature = 1.0
        if temperature < 0:
            raise HTTPProblem(400, f"temperature={temperature} must be >= 0", "use 0 for greedy decoding")
        sampling = SamplingOptions(temperature > 0, temperature if temperature > 0 else 1.0, top_k, top_p, seed)
        try:
            sampling.validate()
        except GenerateError as e:
            raise from_edgeseq(e) from None
        return sampling

    # ----- running ----------------------------------------------------------------------------------
    def start(self, request: Request) -> list:
        """Submit every prompt (a stream per request it makes); on a failure none stays queued."""
        self.check_rows(len(request.rows), request.n)
        streams = []
        try:
            for row in request.rows:
                streams += self.model.streams(row, request.max_tokens, request.stop, request.sampling, n=request.n,
                                              timeout=self.limits.timeout_s, **request.decoding)
        except EdgeseqError as e:
            for stream in streams:
                stream.close()
            raise from_edgeseq(e) from None
        self.metrics.prompt_tokens.inc(sum(len(r) for r in request.rows))
        return streams

    def collect(self, request: Request, streams: list) -> list[RowResult]:
        """Block until every request is done (a worker thread); records token timings."""
        try:
            for stream in streams:
                self.consume(request, stream)
        except EdgeseqError as e:
            for stream in streams:
                stream.close()
            raise from_edgeseq(e) from None
        return [row for stream in streams for row in stream.result.rows]

    def consume(self, request: Request, stream) -> None:
        """Every token of one row, timed."""
        at = None
        while True:
            token, at = self.next_token(request, stream, at)
            if token is None:
                return

    def next_token(self, request: Request, stream, previous_at: float | None) -> tuple[TokenEvent | None, float | None]:
        """Wait for the request's next token and time it against the previous one (or, for the
        first, against the request's arrival): (event, when), event None when it is done."""
        token = next(stream.events(), None)
        if token is None:
            return None, previous_at
        now = time.perf_counter()
        if previous_at is None:
            self.metrics.time_to_first_token.observe(now - request.started)
        else:
            self.metrics.time_per_output_token.observe(now - previous_at)
        self.metrics.generated_tokens.inc()
        return token, now

    def record(self, request_started: float, outcome: str) -> None:
        """Count a request the routes answered themselves (errors are counted by the app)."""
        self.metrics.requests.labels(outcome).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - request_started)
