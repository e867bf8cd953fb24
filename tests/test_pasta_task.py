"""PASTA's multi-query composition task: the generator and the checker (models/pasta_task.py)."""

import numpy as np
import pytest
from edgeseq.models.pasta_task import (
    ASYNC,
    END_ASYNC,
    EOS,
    FIRST_VALUE,
    PROMISE,
    SYNC,
    TAG_TOKENS,
    PastaTask,
)
from edgeseq.models.tasks import pasta_check, pasta_examples


def test_examples_are_deterministic_by_seed_and_cover_every_k():
    a, b, c = pasta_examples(200, seed=1), pasta_examples(200, seed=1), pasta_examples(200, seed=2)
    assert [e.prompt + e.spliced for e in a] == [e.prompt + e.spliced for e in b]
    assert [e.prompt for e in a] != [e.prompt for e in c]
    assert {len(e.queries) for e in a} == {1, 2, 3, 4}
    assert all(len(e.queries) == 3 for e in pasta_examples(20, seed=3, k=3))


def test_every_example_answers_its_queries_through_its_chunks():
    task = PastaTask()
    for e in pasta_examples(300, seed=4):
        tables = np.array(e.prompt[: task.n_functions * (task.n_values + 1)]).reshape(task.n_functions, -1)[:, :-1]
        for (x, depth), chunk, final in zip(e.queries, e.chunks, e.answer):
            value = x
            assert chunk[0] == ASYNC and chunk[-1] == END_ASYNC and chunk[1] == task.typed(0, x)
            for f in range(depth):
                value = tables[f % task.n_functions, value] - FIRST_VALUE
                assert chunk[2 + f] == task.typed(f + 1, value)  # "f_{f+1}:value": typed by its table
            assert final == FIRST_VALUE + value and len(chunk) == depth + 3
        right = {"well_formed": True, "correct": True, "queries_correct": len(e.queries)}
        assert pasta_check(e, e.spliced) == right
        assert pasta_check(e, e.spliced + [7, 7]) == right  # after eos: ignored


def test_promised_lengths_are_mostly_true_and_sometimes_off():
    examples = pasta_examples(1000, seed=5)
    off = [e for e in examples if any(n != len(c) for n, c in zip(e.promised, e.chunks))]
    assert 0.12 < len(off) / len(examples) < 0.28
    assert all(abs(n - len(c)) <= 2 and n >= 1 for e in off for n, c in zip(e.promised, e.chunks))


def test_tags_are_several_tokens_and_the_vocabulary_names_them():
    e = pasta_examples(1, seed=6, k=2)[0]
    assert e.spliced[:6] == e.promise(0) and len(e.promise(0)) == 6
    vocab = PastaTask().vocabulary()
    assert set(TAG_TOKENS) <= set(vocab) and len(set(vocab.values())) == len(vocab) == PastaTask().vocab_size


@pytest.mark.parametrize("damage,well_formed", [
    (lambda s: s[:-1], False),  # no eos
    (lambda s: [t for t in s if t != SYNC], False),  # no sync
    (lambda s: s[1:], False),  # a promise without its opening tag
    (lambda s: [t for i, t in enumerate(s) if not (t == END_ASYNC and i == s.index(END_ASYNC))], False),  # unclosed chunk
    (lambda s: s[: s.index(ASYNC) + 1] + s[s.index(ASYNC) + 1 :][: 0] + s[s.index(END_ASYNC):], False),  # empty chunk
    (lambda s: s[:-2] + [FIRST_VALUE + (s[-2] - FIRST_VALUE + 1) % 8, EOS], True),  # a wrong final value
    (lambda s: s[: s.index(SYNC) + 1] + [PROMISE] + s[s.index(SYNC) + 1 :], False),  # a tag among the finals
    (lambda s: s[: s.index(ASYNC) + 1] + [s[s.index(ASYNC) + 1] + 8] + s[s.index(ASYNC) + 2 :], False),  # f1: first
])
def test_the_checker_tells_malformed_and_wrong_apart(damage, well_formed):
    e = pasta_examples(1, seed=7, k=2)[0]
    result = pasta_check(e, damage(list(e.spliced)))
    # the wrong final value is one of the two queries; malformed outputs answer none
    assert result == {"well_formed": well_formed, "correct": False, "queries_correct": 1 if well_formed else 0}


def test_a_different_number_of_threads_is_not_well_formed():
    one, two = pasta_examples(1, seed=8, k=1)[0], pasta_examples(1, seed=8, k=2)[0]
    assert not pasta_check(one, two.spliced)["well_formed"]
