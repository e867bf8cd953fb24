"""PASTA's task: multi-query composition, written in PASTA-LANG (docs/design.md §1 "PASTA").

A prompt holds L lookup tables over [n] (the composition task's encoding) and k
independent queries (k = 1..4), each with its own depth d (min_depth..max_depth; the
tables apply in turn, f_1 .. f_L, f_1, ..., so a query's chain may be longer than L).
The answer of query i is the d-th value of its chain. A PASTA answer:

    main:   <promise topic= q_i tokens= N_i />   (one per query)   <sync/>  v_1 .. v_k  eos
    chunk i: <async> f0:x_i f1:f_1(x_i) .. fd:(d-th value) </async>

Spliced (each chunk right after its promise, as the main thread sees it after the sync):
    P_1 C_1 P_2 C_2 .. P_k C_k <sync/> v_1 .. v_k eos

Each chunk starts by copying its query (keyed by the topic token, which the prompt also
carries). Chunk values are typed: "fj:v" says "f_j(...) = v", so the next token is one
lookup keyed by the token just read (the next table in turn at index v, at a fixed
place in the prompt). With plain values the model had to count its steps from `<async>`, whose
position moves with every promise, and training plateaued at the third lookup. The final
values copy each chunk's last value as plain values. Chains are long (6..12 steps by
default) and promises short, as in PASTA's own data: the chunks are where the work is,
so decoding them in parallel pays (at k = 4 the longest sequential path is about half
the tokens). Tags are several tokens each, as a real
tokenizer would split them. N is the chunk's true length (its tokens with both tags) in
most examples and off by 1 or 2 in a fraction, so a model sees overruns and short chunks.
Deterministic for a seed. numpy only (the runtime's parser shares the vocabulary).
"""

from dataclasses import dataclass, field

import numpy as np
from edgeseq.runtimes.pasta_lang import PastaTags

PAD, BOS, EOS, SEP, QUERY = 0, 1, 2, 3, 4
PROMISE, TOPIC, TOKENS, CLOSE, ASYNC, END_ASYNC, SYNC = 5, 6, 7, 8, 9, 10, 11
MAX_QUERIES = 4
TOPIC_BASE = 12  # topic ids q1..q4
MAX_NUMBER = 20
NUMBER_BASE = TOPIC_BASE + MAX_QUERIES  # numbers 1..20 (promised lengths, depths)
FIRST_VALUE = NUMBER_BASE + MAX_NUMBER  # values 0..n-1 (tables, queries, final answers)

TAGS = PastaTags(promise=PROMISE, topic=TOPIC, tokens=TOKENS, close=CLOSE, async_=ASYNC, end_async=END_ASYNC,
                 sync=SYNC, eos=EOS, number_base=NUMBER_BASE, max_number=MAX_NUMBER)
TAG_TOKENS = {"<promise": PROMISE, "topic=": TOPIC, "tokens=": TOKENS, "/>": CLOSE, "<async>": ASYNC,
              "</async>": END_ASYNC, "<sync/>": SYNC}


def number(n: int) -> int:
    if not 1 <= n <= MAX_NUMBER:
        raise ValueError(f"{n} is outside the number tokens 1..{MAX_NUMBER}")
    return NUMBER_BASE + n - 1


def topic(i: int) -> int:
    return TOPIC_BASE + i


@dataclass(frozen=True)
class PastaTask:
    n_functions: int = 3  # L: tables
    min_depth: int = 6  # a query's chain length d is drawn from min_depth..max_depth
    max_depth: int = 12
    n_values: int = 8  # n
    off_fraction: float = 0.2  # examples whose promised lengths are off by 1..2

    @property
    def typed_base(self) -> int:
        """The id of "f0:0": typed chunk values follow the plain values."""
        return FIRST_VALUE + self.n_values

    def typed(self, step: int, value: int) -> int:
        return self.typed_base + step * self.n_values + value

    @property
    def vocab_size(self) -> int:
        return self.typed_base + (self.max_depth + 1) * self.n_values

    def vocabulary(self) -> dict[str, int]:
        """Every token's name (what `edgeseq inspect` shows for a PASTA artifact)."""
        names = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<sep>": SEP, "<query>": QUERY, **TAG_TOKENS}
        names |= {f"q{i + 1}": topic(i) for i in range(MAX_QUERIES)}
        names |= {str(n): number(n) for n in range(1, MAX_NUMBER + 1)}
        names |= {f"v{v}": FIRST_VALUE + v for v in range(self.n_values)}
        names |= {f"f{j}:{v}": self.typed(j, v) for j in range(self.max_depth + 1) for v in range(self.n_values)}
        return names


@dataclass
class PastaExample:
    prompt: list[int]  # tables, queries, then bos
    answer: list[int]  # the k final values (token ids)
    queries: list[tuple[int, int]]  # (x, depth) per query
    chunks: list[list[int]] = field(default_factory=list)  # <async> .. </async> per query
    promised: list[int] = field(default_factory=list)  # N per promise

    def promise(self, i: int) -> list[int]:
        return [PROMISE, TOPIC, topic(i), TOKENS, number(self.promised[i]), CLOSE]

    @property
    def main(self) -> list[int]:
        """The main thread's own tokens, in order (without chunk content)."""
        return [t for i in range(len(self.queries)) for t in self.promise(i)] + [SYNC, *self.answer, EOS]

    @property
    def spliced(self) -> list[int]:
        """The full answer as the main thread sees it after the sync (the training target)."""
        out = []
        for i, chunk in enumerate(self.chunks):
            out += self.promise(i) + chunk
        return out + [SYNC, *self.answer, EOS]


def pasta_examples(count: int, seed: int, task: PastaTask | None = None, k: int | None = None) -> list[PastaExample]:
    """`count` examples; k (the number of queries) drawn from 1..4 unless given."""
    task = task or PastaTask()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        queries_k = k or int(rng.integers(1, MAX_QUERIES + 1))
        tables = rng.integers(0, task.n_values, size=(task.n_functions, task.n_values))
        prompt = []
        for table in tables:
            prompt += [FIRST_VALUE + int(v) for v in table] + [SEP]
        queries, chunks, answer, promised = [], [], [], []
        off = rng.random() < task.off_fraction
        for i in range(queries_k):
            x, depth = int(rng.integers(0, task.n_values)), int(rng.integers(task.min_depth, task.max_depth + 1))
            prompt += [QUERY, topic(i), number(depth), FIRST_VALUE + x]
            chain, value = [x], x
            for f in range(depth):
                value = int(tables[f % task.n_functions, value])
                chain.append(value)
            chunk = [ASYNC, *(task.typed(j, v) for j, v in enumerate(chain)), END_ASYNC]
            length = len(chunk)
            if off:
                length = max(1, length + int(rng.choice([-2, -1, 1, 2])))
            queries.append((x, depth))
            chunks.append(chunk)
            answer.append(FIRST_VALUE + value)
            promised.append(length)
        out.append(PastaExample(prompt + [BOS], answer, queries, chunks, promised))
    return out


def pasta_examples_per_k(per_k: int, seed: int, task: PastaTask | None = None) -> list[PastaExample]:
    """`per_k` examples for each k = 1..4 (k drawn from seed + k): a split stratified by k."""
    return [e for k in range(1, MAX_QUERIES + 1) for e in pasta_examples(per_k, seed + k, task, k=k)]


def parse_spliced(ids: list[int], task: "PastaTask | None" = None) -> tuple[list[tuple[int, int, list[int]]], list[int]] | None:
    """A spliced PASTA answer -> ([(topic index, promised N, chunk values)], final values),
    or None when it is not well-formed: k promises each followed by its chunk (typed values
    f0:, f1:, .. in order), the topics q1..qk in order, then <sync/>, k plain values and eos."""
    task = task or PastaTask()
    at, threads = 0, []

    def take(expected: int) -> bool:
        nonlocal at
        if at < len(ids) and ids[at] == expected:
            at += 1
            return True
        return False

    while at < len(ids) and ids[at] == PROMISE:
        at += 1
        if not take(TOPIC) or at >= len(ids) or ids[at] != topic(len(threads)):
            return None
        at += 1
        if not take(TOKENS) or at >= len(ids) or not NUMBER_BASE <= ids[at] < FIRST_VALUE:
            return None
        promised = ids[at] - NUMBER_BASE + 1
        at += 1
        if not take(CLOSE) or not take(ASYNC):
            return None
        values = []
        while at < len(ids) and ids[at] == task.typed(len(values), (ids[at] - task.typed_base) % task.n_values) \
                and len(values) <= task.max_depth:
            values.append((ids[at] - task.typed_base) % task.n_values)
            at += 1
        if not values or not take(END_ASYNC):
            return None
        threads.append((len(threads), promised, values))
    if not threads or not take(SYNC):
        return None
    finals = [t - FIRST_VALUE for t in ids[at : at + len(threads)]]
    if len(finals) != len(threads) or any(not 0 <= v < task.n_values for v in finals):
        return None
    at += len(threads)
    if not take(EOS) or at != len(ids):
        return None
    return threads, finals


def pasta_check(example: PastaExample, output_ids: list[int]) -> dict:
    """Whether generated ids (the spliced answer, up to and including eos; anything after
    eos is ignored) are well-formed PASTA-LANG, whether all their final values are right
    (`correct`), and how many of the k queries got the right final value
    (`queries_correct`, 0 when the output is not well-formed)."""
    ids = [int(t) for t in output_ids]
    if EOS in ids:
        ids = ids[: ids.index(EOS) + 1]
    parsed = parse_spliced(ids)
    well_formed = parsed is not None and len(parsed[0]) == len(example.queries)
    right = [FIRST_VALUE + v == a for v, a in zip(parsed[1], example.answer)] if well_formed else []
    return {"well_formed": well_formed, "correct": well_formed and all(right), "queries_correct": sum(right)}
