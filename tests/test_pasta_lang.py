"""PASTA-LANG's defined outcomes (runtimes/pasta_lang.py), case by case: the parser on the
main thread's malformed streams, and the scheduler on the cases that involve threads
(eos with chunks open, tags inside a chunk, a promised length beyond the chunk budget)."""

import pytest
from edgeseq.models import pasta_task as T
from edgeseq.runtimes.pasta_lang import Budgets, Kind, MainParser, chunk_token

VOCAB = T.PastaTask().vocab_size
V = T.FIRST_VALUE  # a plain token


def promise(n: int, i: int = 0) -> list[int]:
    return [T.PROMISE, T.TOPIC, T.topic(i), T.TOKENS, T.number(n), T.CLOSE]


def events(stream: list[int]):
    parser = MainParser(T.TAGS, VOCAB)
    return [parser.feed(t) for t in stream]


def test_a_well_formed_main_thread():
    kinds = [e.kind for e in events([V, *promise(7), V, *promise(3, 1), T.SYNC, V, T.EOS])]
    assert kinds.count(Kind.FORK) == 2 and kinds[-1] is Kind.END and Kind.SYNC in kinds
    fork = next(e for e in events(promise(7)) if e.kind is Kind.FORK)
    assert fork.promised == 7


@pytest.mark.parametrize("stream,reason", [
    ([T.ASYNC], "tag token"),  # <async> outside a promise
    ([T.END_ASYNC], "tag token"),
    ([T.CLOSE], "tag token"),
    ([V, T.TOKENS], "tag token"),  # an attribute outside a promise
    ([T.PROMISE, T.PROMISE], "promise inside a promise"),
    ([T.PROMISE, T.TOPIC, T.topic(0), T.CLOSE], "without tokens="),  # missing attribute
    ([T.PROMISE, T.TOKENS, V], "not followed by a number"),  # a bad attribute value
    ([T.PROMISE, T.TOKENS, T.SYNC], "not followed by a number"),
    ([T.PROMISE, T.TOPIC, T.SYNC], "not followed by a topic"),
    ([T.PROMISE, V], "inside a promise"),  # a stray token in a tag
    ([T.PROMISE, T.SYNC], "inside a promise"),
    ([T.PROMISE, T.TOPIC, T.topic(0), T.EOS], "unclosed promise"),
    ([VOCAB + 5], "outside the vocabulary"),
    ([-1], "outside the vocabulary"),
])
def test_each_malformed_stream_has_its_outcome(stream, reason):
    out = events(stream)
    assert out[-1].kind is Kind.MALFORMED and reason in out[-1].reason
    assert all(e.kind is not Kind.MALFORMED for e in out[:-1])


def test_after_the_end_nothing_more_is_read():
    out = events([T.EOS, V, *promise(2)])
    assert out[0].kind is Kind.END and all(e.kind is Kind.MALFORMED for e in out[1:])


def test_there_is_no_number_zero_and_none_beyond_the_largest():
    assert T.number(1) == T.NUMBER_BASE  # tokens= 0 cannot be written: 1 is the first number
    assert events([T.PROMISE, T.TOKENS, T.NUMBER_BASE + T.MAX_NUMBER])[-1].kind is Kind.MALFORMED


def test_the_chunk_budget_closes_a_chunk():
    assert chunk_token(T.TAGS, 1, V, budget=4) == V
    assert chunk_token(T.TAGS, 3, V, budget=4) == T.END_ASYNC  # the 4th and last token
    assert chunk_token(T.TAGS, 1, T.END_ASYNC, budget=4) == T.END_ASYNC


def run(runtime, answer: list[int], budgets: Budgets | None = None, schedule: str = "parallel"):
    prompt = [V, V + 1, T.BOS]
    return runtime.generate([prompt], budgets=budgets or Budgets(4, 64, 200), forced=[answer], schedule=schedule).rows[0]


def test_eos_with_a_chunk_open_waits_for_it(pasta_compiled):
    runtime, _ = pasta_compiled
    answer = [*promise(9), T.ASYNC, *[T.PastaTask().typed(j, 1) for j in range(7)], T.END_ASYNC, T.EOS]
    for schedule in ("parallel", "sequential"):
        result = run(runtime, answer, schedule=schedule)
        assert result.tokens == answer and result.outcome == "eos"
        main, chunk = result.threads
        assert main["waits"] and chunk["finished_step"] <= main["finished_step"]


def test_a_promise_or_async_inside_a_chunk_is_content(pasta_compiled):
    runtime, _ = pasta_compiled
    answer = [*promise(9), T.ASYNC, *promise(2, 1), T.ASYNC, T.END_ASYNC, T.SYNC, V, T.EOS]
    result = run(runtime, answer)
    assert result.tokens == answer and len(result.threads) == 2  # one chunk: nothing nested was forked


def test_a_promise_beyond_the_chunk_budget_is_cut_by_the_budget(pasta_compiled):
    runtime, _ = pasta_compiled
    answer = [*promise(T.MAX_NUMBER), T.ASYNC, V, V, V, V, V, T.END_ASYNC, T.SYNC, V, T.EOS]
    result = run(runtime, answer, Budgets(4, 4, 200))
    chunk = result.threads[1]
    assert chunk["promised"] == T.MAX_NUMBER and chunk["tokens"] == 4
    assert result.tokens[6:10] == [T.ASYNC, V, V, T.END_ASYNC]


def test_a_malformed_main_token_ends_the_answer_after_it(pasta_compiled):
    runtime, _ = pasta_compiled
    answer = [*promise(4), T.ASYNC, V, T.END_ASYNC, V, T.CLOSE, V, V]
    result = run(runtime, answer)
    assert result.tokens == answer[:11] and result.outcome.startswith("malformed: tag token")
