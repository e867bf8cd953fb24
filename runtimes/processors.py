"""Logits processors with transformers' semantics and order, numpy only, for greedy, sampling and beams.

What a processor sees is a row's *history*, as transformers' `input_ids` there: a
decoder-only row's prompt and generated tokens, an encoder-decoder row's decoder start
token and generated tokens. In transformers' order (`GenerationMixin._get_logits_processor`):
repetition_penalty, no_repeat_ngram_size, encoder_no_repeat_ngram_size, bad_words_ids,
min_length, min_new_tokens, forced_bos_token_id, forced_eos_token_id, suppress_tokens,
begin_suppress_tokens; the sampling warpers (temperature, top-k, top-p, min-p) follow in
runtimes/sampling.py. Greedy and sampling process the raw logits, beam search the
log-softmax of them, as transformers does.

Each row keeps its own state (`History`) and updates it by one token a step: the
n-grams it has completed (prefix -> the tokens that followed), the tokens it has seen.
A forked or reordered row copies its parent's. `apply` runs over the rows of a step at
once: one fancy-indexed write per processor, not a loop over the vocabulary.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseq.errors import GenerateError

NEG_INF = -np.inf

# the options this module takes, as transformers' GenerationConfig names them
OPTION_NAMES = ("repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
                "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                "begin_suppress_tokens")


@dataclass(frozen=True)
class ProcessorOptions:
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    encoder_no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    min_length: int = 0
    min_new_tokens: int = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()

    @classmethod
    def from_options(cls, options: dict[str, Any], vocab_size: int) -> "ProcessorOptions":
        """Checked options (GenerateErrors name the value and the fix); unset ones keep defaults."""
        values = {k: v for k, v in options.items() if k in OPTION_NAMES and v is not None}
        penalty = values.get("repetition_penalty", 1.0)
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not np.isfinite(penalty) or penalty <= 0:
            raise GenerateError(f"repetition_penalty={penalty!r} must be a finite number > 0",
                                "use 1.0 for none, or e.g. 1.2 to discourage repeats")
        values["repetition_penalty"] = float(penalty)
        for name in ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens"):
            value = values.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise GenerateError(f"{name}={value!r} must be a whole number >= 0", f"use 0 to turn {name} off")
            values[name] = int(value)

        def token(name: str, value) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
                raise GenerateError(f"{name} holds {value!r}, not a token id of this model's vocabulary [0, {vocab_size})",
                                    f"use ids from 0 to {vocab_size - 1}")
            return int(value)

        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            if name in values:
                values[name] = token(name, values[name])
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            if name in values:
                values[name] = tuple(token(name, t) for t in _as_list(name, values[name]))
        if "bad_words_ids" in values:
            words = _as_list("bad_words_ids", values["bad_words_ids"])
            if any(not isinstance(w, (list, tuple)) or not w for w in words):
                raise GenerateError("bad_words_ids must be a list of non-empty token id lists", "write e.g. [[5], [7, 9]]")
            values["bad_words_ids"] = tuple(tuple(token("bad_words_ids", t) for t in w) for w in words)
        return cls(**values)

    @property
    def active(self) -> bool:
        return self != ProcessorOptions()


def _as_list(name: str, value) -> list:
    if not isinstance(value, (list, tuple)):
        raise GenerateError(f"{name}={value!r} must be a list", f"write {name} as a list, e.g. [5, 7]")
    return list(value)


@dataclass
class History:
    """One row's history and what its processors remember of it, updated one token at a time."""

    tokens: list[int]
    ngrams: dict[tuple[int, ...], set[int]] = field(default_factory=dict)  # prefix -> banned followers
    seen: set[int] = field(default_factory=set)

    def copy(self) -> "History":
        return History(list(self.tokens), {k: set(v) for k, v in self.ngrams.items()}, set(self.seen))


class Processors:
    """The processors of one request: `start` a row's history, `advance` it by a token,
    `apply` them to the scores [rows, V] of a step's rows (in place)."""

    def __init__(self, options: ProcessorOptions, eos: frozenset[int], prompt_length: int, max_new_tokens: int,
                 encoder_ids: list[int] | None = None):
        self.options = options
        self.eos = np.array(sorted(eos), dtype=np.int64)
        self.prompt_length = prompt_length  # the history's length before the first generated token
        self.max_length = prompt_length + max_new_tokens  # transformers' max_length
        n = options.no_repeat_ngram_size
        self.ngram_size = n
        # transformers: suppression at the first generated token, or the second when bos is forced
        self.begin_index = prompt_length + (1 if prompt_length == 1 and options.forced_bos_token_id is not None else 0)
        self.encoder_ngrams: dict[tuple[int, ...], set[int]] = {}
        if options.encoder_no_repeat_ngram_size and encoder_ids is not None:
            self.encoder_ngrams = _ngram_table(encoder_ids, options.encoder_no_repeat_ngram_size)
        self.single_bad = np.array(sorted({w[0] for w in options.bad_words_ids if len(w) == 1} - set(eos)),
                                   dtype=np.int64)
        self.multi_bad = [w for w in options.bad_words_ids if len(w) > 1]
        self.suppress = np.array(options.suppress_tokens, dtype=np.int64)
        self.begin_suppress = np.array(options.begin_suppress_tokens, dtype=np.int64)

    def start(self, history: list[int]) -> History:
        state = History([])
        for t in history:
            self.advance(state, t)
        return state

    def advance(self, state: History, token: int) -> None:
        state.tokens.append(token)
        state.seen.add(token)
        n = self.ngram_size
        if n and len(state.tokens) >= n:
            state.ngrams.setdefault(tuple(state.tokens[-n:-1]), set()).add(token)

    def apply(self, scores: np.ndarray, states: list[History]) -> np.ndarray:
        """transformers' processors, in its order, over scores [rows, V] (float32, changed in place)."""
        o = self.options
        length = len(states[0].tokens)  # every row of a request's step has the same length
        if o.repetition_penalty != 1.0:
            rows = np.concatenate([np.full(len(s.seen), i) for i, s in enumerate(states)]).astype(np.int64)
            tokens = np.fromiter((t for s in states for t in s.seen), dtype=np.int64, count=len(rows))
            values = scores[rows, tokens]
            scores[rows, tokens] = np.where(values < 0, values * o.repetition_penalty, values / o.repetition_penalty)
        if self.ngram_size and length >= self.ngram_size:
            self._ban(scores, [s.ngrams.get(tuple(s.tokens[len(s.tokens) + 1 - self.ngram_size:]), ()) for s in states])
        if self.encoder_ngrams:
            n = o.encoder_no_repeat_ngram_size
            self._ban(scores, [self.encoder_ngrams.get(tuple(s.tokens[len(s.tokens) + 1 - n:]), ()) if len(s.tokens) + 1 >= n
                               else () for s in states])
        if len(self.single_bad) or self.multi_bad:
            scores[:, self.single_bad] = NEG_INF
            if self.multi_bad:
                self._ban(scores, [[w[-1] for w in self.multi_bad if len(w) - 1 <= len(s.tokens)
                                    and tuple(s.tokens[len(s.tokens) - len(w) + 1:]) == w[:-1]] for s in states])
        if length < o.min_length or length - self.prompt_length < o.min_new_tokens:
            scores[:, self.eos] = NEG_INF
        if o.forced_bos_token_id is not None and length == 1:
            scores[:] = NEG_INF
            scores[:, o.forced_bos_token_id] = 0
        if o.forced_eos_token_id is not None and length == self.max_length - 1:
            scores[:] = NEG_INF
            scores[:, o.forced_eos_token_id] = 0
        if len(self.suppress):
            scores[:, self.suppress] = NEG_INF
        if len(self.begin_suppress) and length == self.begin_index:
            scores[:, self.begin_suppress] = NEG_INF
        return scores

    @staticmethod
    def _ban(scores: np.ndarray, banned: list) -> None:
        rows = [i for i, tokens in enumerate(banned) for _ in tokens]
        if rows:
            scores[rows, [t for tokens in banned for t in tokens]] = NEG_INF


def _ngram_table(ids: list[int], n: int) -> dict[tuple[int, ...], set[int]]:
    table: dict[tuple[int, ...], set[int]] = {}
    for i in range(len(ids) - n + 1):
        table.setdefault(tuple(ids[i:i + n - 1]), set()).add(ids[i + n - 1])
    return table


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis in float32, as transformers' beam search takes it."""
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def top_alternatives(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely (token, log-probability) of one distribution, best first."""
    if k <= 0:
        return []
    best = np.argpartition(-logprobs, min(k, len(logprobs)) - 1)[:k]
    best = best[np.lexsort((best, -logprobs[best]))]
    return [(int(t), float(logprobs[t])) for t in best]
