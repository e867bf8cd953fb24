"""PASTA-LANG over token ids: the tag ids, the budgets, and a streaming parser per thread.

Training (runtimes/pasta_layout.py, models/pasta.py), the torch sequential interpreter and
the runtime's PASTA policy (runtimes/policies/pasta.py) all read a stream through these rules, so
they agree on every malformed case too. Torch-free.

The main thread (`MainParser`), token by token after the prompt:
- `<promise` opens a promise; inside it `topic=` takes the next token as the topic and
  `tokens=` takes the next token as N, which must be a number token 1..max_number; `/>`
  closes it: a FORK of chunk j with N. A promise without `tokens=` is malformed.
- `<sync/>`: SYNC (wait for every open chunk, then see them all); `eos`: END (the same
  wait, implicitly, then the output ends).
- anything else outside a promise is TEXT, except the tags that only make sense elsewhere.

Defined outcomes of malformed main-thread streams (each is MALFORMED with a reason; the
token is kept in the output and the main thread stops right after it; chunks already
forked still finish, since they come before it in the spliced document):
- `<async>`, `</async>`, `/>`, `topic=`, `tokens=` outside a promise (an unknown tag here);
- `<promise` inside a promise (nested), `<sync/>` or any plain token inside a promise,
  eos inside a promise (unclosed tag), a promise closed without `tokens=`;
- `tokens=` followed by anything but a number 1..max_number (0 has no token; 17 is none);
- a token id outside the vocabulary (only a caller's stream can hold one).

A chunk (`chunk_token`): its first token is always `<async>` (forced, never predicted);
then every token is content until `</async>` closes it. Tags inside a chunk are content:
chunks do not nest, so a promise or `<async>` there forks nothing. A chunk is at most
`max_chunk_tokens` long, tags included: when the next token would be the last allowed,
it is `</async>` whatever was predicted. A promised N larger than that budget still
sets the positions (the main thread resumes at p + N + 1).

Budgets the whole answer shares (`Budgets`), schedule-independent by construction: the
spliced answer is cut at `max_tokens` tokens, and no token is placed at a position
>= max_positions; both cut the spliced document at a fixed index, so the parallel
schedule (which may have decoded past it) truncates its output to exactly what the
sequential interpreter writes. `max_live_threads` only bounds how many chunks decode at
once: a promise beyond it waits for a free row (forked from the promise's snapshot later)
and the output does not change.
"""

from dataclasses import dataclass
from enum import Enum

from edgeseq.errors import GenerateError


@dataclass(frozen=True)
class PastaTags:
    """The token ids PASTA-LANG needs (models/pasta_task.py, or an artifact's manifest)."""

    promise: int
    topic: int
    tokens: int
    close: int
    async_: int
    end_async: int
    sync: int
    eos: int
    number_base: int  # the id of the number 1
    max_number: int

    def as_dict(self) -> dict[str, int]:
        return {k.rstrip("_"): v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PastaTags":
        return cls(**{("async_" if k == "async" else k): int(v) for k, v in d.items()})


@dataclass
class Budgets:
    max_live_threads: int = 4  # chunks decoding at once; later promises wait for a row
    max_chunk_tokens: int = 24  # a chunk's length, tags included
    max_tokens: int = 160  # the spliced answer's length

    def validate(self) -> None:
        for name, least in (("max_live_threads", 1), ("max_chunk_tokens", 2), ("max_tokens", 1)):
            if getattr(self, name) < least:
                raise GenerateError(f"{name}={getattr(self, name)} must be at least {least}", f"set {name} >= {least}")


class Kind(Enum):
    TEXT = "text"  # an ordinary main-thread token (a promise's parts included)
    FORK = "fork"  # a promise closed: fork chunk j
    SYNC = "sync"
    END = "end"  # eos
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Event:
    kind: Kind
    promised: int = 0  # N, for FORK
    reason: str = ""  # for MALFORMED


TEXT = Event(Kind.TEXT)


class MainParser:
    """Reads the main thread's tokens one at a time and says what each one means."""

    def __init__(self, tags: PastaTags, vocab_size: int | None = None):
        self.tags, self.vocab_size = tags, vocab_size
        self.in_promise = False
        self.expect: str | None = None  # "topic" or "tokens": the next token is that value
        self.promised: int | None = None
        self.stopped = False  # after END or MALFORMED nothing more is read

    def _malformed(self, reason: str) -> Event:
        self.stopped = True
        return Event(Kind.MALFORMED, reason=reason)

    def feed(self, token: int) -> Event:
        t = self.tags
        if self.stopped:
            return self._malformed("the main thread already ended")
        if self.vocab_size is not None and not 0 <= token < self.vocab_size:
            return self._malformed(f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.expect == "topic":
            self.expect = None
            if token in self._tag_ids() or token == t.eos:
                return self._malformed("topic= is not followed by a topic")
            return TEXT
        if self.expect == "tokens":
            self.expect = None
            n = token - t.number_base + 1
            if not 1 <= n <= t.max_number:
                return self._malformed(f"tokens= is not followed by a number 1..{t.max_number}")
            self.promised = n
            return TEXT
        if self.in_promise:
            return self._in_promise(token)
        if token == t.promise:
            self.in_promise, self.promised = True, None
            return TEXT
        if token == t.sync:
            return Event(Kind.SYNC)
        if token == t.eos:
            self.stopped = True
            return Event(Kind.END)
        if token in self._tag_ids():
            return self._malformed(f"tag token {token} outside a promise")
        return TEXT

    def _in_promise(self, token: int) -> Event:
        t = self.tags
        if token == t.topic:
            self.expect = "topic"
            return TEXT
        if token == t.tokens:
            self.expect = "tokens"
            return TEXT
        if token == t.close:
            self.in_promise = False
            if self.promised is None:
                return self._malformed("a promise closed without tokens=")
            return Event(Kind.FORK, promised=self.promised)
        if token == t.promise:
            return self._malformed("a promise inside a promise")
        if token == t.eos:
            return self._malformed("eos inside an unclosed promise")
        return self._malformed(f"token {token} inside a promise (expected topic=, tokens= or />)")

    def _tag_ids(self) -> set[int]:
        t = self.tags
        return {t.promise, t.topic, t.tokens, t.close, t.async_, t.end_async, t.sync}


def chunk_token(tags: PastaTags, length: int, predicted: int, budget: int) -> int:
    """The token a chunk of `length` tokens so far (its `<async>` included) appends, given
    the predicted one: `</async>` when predicted, or when it is the last the budget allows."""
    return tags.end_async if predicted == tags.end_async or length + 1 >= budget else predicted
