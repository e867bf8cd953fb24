"""The `beam` policy: beam search over the rows of one request, as transformers' `generate` does it.

transformers' vectorized beam search (the one that replaced BeamScorer; 4.57 and 5.x run
it), step for step, per request:
- scores: log-softmax of the logits, then the logits processors (runtimes/processors.py),
  then each beam's running score added; the running scores start at [0, -1e9, ...], so on
  the first step only beam 0 expands (here it is the only row: the prompt is prefilled
  once and the other beams fork from it after that step);
- the best K = max(2, 1 + number of eos ids) x num_beams candidates over all beams;
  a candidate ending in eos or reaching max_new_tokens is done;
- the next running beams: the best num_beams candidates, done ones pushed down by 1e9;
- finished hypotheses: among the top num_beams candidates, those done, scored
  sum of log-probs / generated_length ** length_penalty (the generated tokens, eos
  included), kept when better than the worst of the num_beams kept so far;
- stop: `early_stopping=True` once num_beams hypotheses are finished; False when the best
  running beam at its current length cannot beat the worst finished one; "never" the same
  at max length when length_penalty > 0; always when every candidate is done.
Scores are float32 as there. Beams are rows of the request: after each step a row whose
beam continues its own parent keeps its cache; a row whose beam's parent is another row
becomes a copy of that row in place (`RowOps.reorder`), so only rows whose parent changed
are copied, and the encoder outputs (the same for every beam) never are.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseq.errors import GenerateError, StepError

from ..processors import History, Processors, top_alternatives
from ..requests import Request, Row, RowResult
from .base import Policy, RowOps

BIG = np.float32(1e9)  # transformers' "-1e9": a score no real hypothesis reaches
EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class BeamOptions:
    num_beams: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1

    @classmethod
    def from_options(cls, options: dict[str, Any], vocab_size: int) -> "BeamOptions":
        beams = options.get("num_beams", 1)
        if isinstance(beams, bool) or not isinstance(beams, (int, np.integer)) or beams < 1:
            raise GenerateError(f"num_beams={beams!r} must be a whole number >= 1", "use 1 for greedy, e.g. 4 for beams")
        if 2 * beams > vocab_size:
            raise GenerateError(f"num_beams={beams} needs 2 x {beams} candidates from a vocabulary of {vocab_size}",
                                f"use at most {vocab_size // 2} beams")
        penalty = options.get("length_penalty", 1.0)
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not np.isfinite(penalty):
            raise GenerateError(f"length_penalty={penalty!r} must be a finite number",
                                "use 1.0 (the default), > 1 for longer or < 1 for shorter hypotheses")
        early = options.get("early_stopping", False)
        if not any(early is value or early == value and isinstance(early, str) for value in EARLY_STOPPING):
            raise GenerateError(f"early_stopping={early!r} is not True, False or \"never\"",
                                "use True (stop at num_beams finished), False (transformers' heuristic) or \"never\"")
        returned = options.get("num_return_sequences", 1)
        if isinstance(returned, bool) or not isinstance(returned, (int, np.integer)) or not 1 <= returned <= beams:
            raise GenerateError(f"num_return_sequences={returned!r} must be between 1 and num_beams={beams}",
                                f"ask for at most {beams} sequences, or more beams")
        return cls(int(beams), float(penalty), early, int(returned))


@dataclass
class BeamResult(RowResult):
    """One returned hypothesis: its tokens and its sequence score (transformers'
    `sequences_scores`: sum of log-probs / length ** length_penalty)."""

    score: float = 0.0

    def extras(self) -> dict[str, Any]:
        return {"score": self.score}


class BeamPolicy(Policy):
    def __init__(self, request: Request, beam: BeamOptions, processors: Processors | None, history: list[int],
                 eos: frozenset[int]):
        self.request, self.beam, self.processors = request, beam, processors
        self.reserve = beam.num_beams
        self.eos = eos
        self.keep = max(2, 1 + len(eos)) * beam.num_beams  # candidates per step
        first = request.new_row(0)
        self.beams: list[Row] = [first]  # beam i's row
        self.histories: list[History | None] = [processors.start(history) if processors else None]
        self.running = np.array([0.0], dtype=np.float32)  # the beams' scores (only beam 0 exists at first)
        k = beam.num_beams
        self.finished: list[list[int]] = [[] for _ in range(k)]
        # per beam and per finished hypothesis, when asked for: each token's processed
        # log-probability and the best alternatives at its step
        self.paths: list[tuple[list[float], list]] = [([], [])]
        self.finished_paths: list[tuple[list[float], list]] = [([], []) for _ in range(k)]
        self.finished_scores = np.full(k, -BIG, dtype=np.float32)
        self.finished_real = np.zeros(k, dtype=bool)
        self.improvable = True  # transformers' is_early_stop_heuristic_unsatisfied
        self.generated = 0
        self.ended = False
        self.scratch = Scratch()

    def start(self) -> list[Row]:
        return self.beams[:1]

    def admitted(self, ops: RowOps, row: Row, logits: np.ndarray | None) -> None:
        if logits is not None:  # decoder-only: the prefill's logits choose the first tokens
            self.expand(ops, logits[None])

    def runnable(self, ops: RowOps) -> list[Row]:
        return [] if self.ended else self.beams

    def stepped(self, ops: RowOps, rows: list[Row], logits: list[np.ndarray]) -> None:
        by_row = {id(r): x for r, x in zip(rows, logits)}
        self.expand(ops, [by_row[id(r)] for r in self.beams])

    def expand(self, ops: RowOps, logits) -> None:
        """One beam-search step from the beams' logits (one [V] per beam)."""
        k, request = self.beam.num_beams, self.request
        scores = self.scratch.log_softmax(logits)
        if self.processors:
            self.processors.apply(scores, self.histories)
        vocab = scores.shape[1]
        top, values = self.scratch.best(scores, self.running, self.keep)
        parents, tokens = top // vocab, top % vocab
        self.generated += 1
        done = np.isin(tokens, list(self.eos)) | (self.generated >= request.max_new_tokens)
        # finished hypotheses: the best num_beams candidates that are done, length-penalised
        eligible = done.copy()
        eligible[k:] = False
        penalised = values / np.float32(self.generated ** self.beam.length_penalty)
        if self.beam.early_stopping is True and self.finished_real.all():
            penalised = penalised - BIG
        if not self.improvable:
            penalised = penalised - BIG
        penalised = penalised - BIG * ~eligible
        merged = np.concatenate([self.finished_scores, penalised.astype(np.float32)])
        best = _top(merged, k)
        # only the candidates that become hypotheses get their token lists (not all 2k a step)
        self.finished = [self.finished[i] if i < k else self.beams[parents[i - k]].tokens + [int(tokens[i - k])]
                         for i in best]
        # the next running beams: the best num_beams candidates, done ones pushed down
        running = (values - BIG * done).astype(np.float32)
        chosen = _top(running, k)
        if request.logprobs is not None:  # the paths of the kept candidates only; alternatives once per parent
            alternatives = {int(p): top_alternatives(scores[p], request.logprobs) for p in set(parents.tolist())}

            def path(j: int) -> tuple[list[float], list]:
                p, t = int(parents[j]), int(tokens[j])
                return self.paths[p][0] + [float(scores[p, t])], self.paths[p][1] + [alternatives[p]]

            self.finished_paths = [self.finished_paths[i] if i < k else path(i - k) for i in best]
            next_paths = [path(j) for j in chosen]
        self.finished_real = np.concatenate([self.finished_real, eligible])[best]
        self.finished_scores = merged[best]
        best_length = request.max_new_tokens if self.beam.early_stopping == "never" and self.beam.length_penalty > 0 \
            else self.generated
        best_possible = running[chosen[0]] / np.float32(best_length ** self.beam.length_penalty)
        worst = np.where(self.finished_real, self.finished_scores.min(), -BIG)
        self.improvable = self.improvable and bool(np.any(best_possible > worst))
        if not self.improvable or (self.beam.early_stopping is True and self.finished_real.all()) or done.all():
            self.ended = True
            return
        self._reorder(ops, [int(parents[j]) for j in chosen], [int(tokens[j]) for j in chosen])
        self.running = running[chosen]
        if request.logprobs is not None:
            self.paths = next_paths

    def _reorder(self, ops: RowOps, parents: list[int], tokens: list[int]) -> None:
        """Beam i continues beam parents[i] with tokens[i]. A parent's first child keeps the
        parent's row; each other child takes a row no new beam continues (copied into in
        place) or, while the request has fewer rows than beams (the first step), a new fork."""
        old_rows, old_histories = self.beams, self.histories
        old_tokens = [list(r.tokens) for r in old_rows]
        keeps: dict[int, int] = {}
        for i, p in enumerate(parents):
            keeps.setdefault(p, i)
        spare = [r for j, r in enumerate(old_rows) if j not in keeps]
        rows: list[Row] = []
        for i, p in enumerate(parents):
            if keeps[p] == i:
                rows.append(old_rows[p])
            elif spare:
                row = spare.pop()
                ops.reorder(old_rows[p], row)
                rows.append(row)
            else:
                row = self.request.new_row(len(self.request.rows))
                if not ops.fork(old_rows[p], row):
                    raise StepError(f"no cache row for beam {i} of a request that reserved {self.beam.num_beams}",
                                    "report this")
                rows.append(row)
        for row in spare:  # beams that ended with fewer live candidates than rows
            ops.release(row)
        histories = []
        for i, (row, p, token) in enumerate(zip(rows, parents, tokens)):
            row.tokens = old_tokens[p] + [token]
            row.next_token = token
            row.index = i
            if self.processors:
                histories.append(old_histories[p] if keeps[p] == i else old_histories[p].copy())
        if self.processors:  # the kept histories advance last: the copies above are of the parent's
            for history, token in zip(histories, tokens):
                self.processors.advance(history, token)
        self.beams, self.histories = rows, histories if self.processors else [None] * len(rows)

    @property
    def done(self) -> bool:
        return self.ended

    def result(self) -> list[RowResult]:
        out = []
        asked = self.request.logprobs is not None
        for tokens, score, (logprobs, alternatives) in list(zip(self.finished, self.finished_scores, self.finished_paths)
                                                           )[: self.beam.num_return_sequences]:
            reason = "stop" if tokens and tokens[-1] in self.eos else "length"
            out.append(BeamResult(tokens, reason, None, float(score), token_logprobs=logprobs if asked else None,
                                  top_logprobs=alternatives if asked else None))
        return out

    def progress(self) -> str:
        return f"{self.generated} of {self.request.max_new_tokens} tokens over {len(self.beams)} beams"


class Scratch:
    """A beam request's per-step buffers, reused: a step's log-softmax and candidate search
    over beams x vocabulary (~0.5 MB for t5-small's 4 x 32128) allocate nothing that large,
    since fresh large arrays come from the OS page by page (measured: 4x slower in the loop)."""

    def __init__(self):
        self.scores = self.work = np.empty((0, 0), dtype=np.float32)

    def _buffers(self, rows: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
        if self.scores.shape != (rows, vocab):
            self.scores = np.empty((rows, vocab), dtype=np.float32)
            self.work = np.empty((rows, vocab), dtype=np.float32)
        return self.scores, self.work

    def log_softmax(self, logits) -> np.ndarray:
        """float32 log-softmax of the rows, as transformers' beam search takes it (a view of a buffer)."""
        scores, work = self._buffers(len(logits), len(logits[0]))
        for i, row in enumerate(logits):
            scores[i] = row
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=work)
        scores -= np.log(work.sum(axis=1, keepdims=True))
        return scores

    def best(self, scores: np.ndarray, running: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best (flat index, value) of scores + running[:, None], best first (ties: lower index)."""
        work = self.work[: len(scores)]
        np.add(scores, running[:, None], out=work)
        flat = work.reshape(-1)
        k = min(k, flat.size)
        flat.partition(flat.size - k)  # in place: the k-th best value lands at flat.size - k
        threshold = flat[flat.size - k]
        np.add(scores, running[:, None], out=work)  # (the partition reordered the buffer)
        candidates = np.flatnonzero(flat >= threshold)
        values = flat[candidates]
        order = _top(values, k)  # candidates ascend, so ties still go to the lower index
        return candidates[order], values[order]


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first; ties go to the lower index."""
    k = min(k, len(values))
    part = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    return part[np.lexsort((part, -values[part]))]
