"""Stop strings in `generate`, the CLI and the incremental matcher, with the NASH fixture's
own tokenizer. A seeded sample gives varied text; the stop strings are cut from it so that
they span two and three tokens and end inside the last one, and occur nowhere earlier."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from edgeseq.runtimes import SamplingOptions, load

from edgeseq.errors import GenerateError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
PROMPT = "the cat sat on the mat."
SAMPLING = SamplingOptions(True, 1.0, 0, 1.0, 1)
NEW = 30


@pytest.fixture(scope="module")
def model():
    with load(FIXTURE, threads=1) as m:
        yield m


def pieces_of(model, tokens: list[int]) -> list[str]:
    """What each token adds to the decoded text."""
    return [model.decode_text(tokens[: i + 1])[len(model.decode_text(tokens[:i])):] for i in range(len(tokens))]


def spanning(model, tokens: list[int], span: int) -> tuple[str, int]:
    """A stop string over `span` tokens (from the last character of token k to the first of
    token k + span - 1, which has more after it), occurring first there; and k + span - 1."""
    pieces, text = pieces_of(model, tokens), model.decode_text(tokens)
    for k in range(len(pieces) - span):
        inner, last = pieces[k + 1 : k + span - 1], pieces[k + span - 1]
        if not pieces[k] or len(last) < 2 or not all(inner):
            continue
        start = sum(len(p) for p in pieces[:k]) + len(pieces[k]) - 1
        candidate = pieces[k][-1] + "".join(inner) + last[0]
        if text.find(candidate) == start:
            return candidate, k + span - 1
    raise AssertionError(f"no stop string over {span} tokens in {pieces}")


@pytest.fixture(scope="module")
def baseline(model):
    ids = model.encode_text(PROMPT)
    return ids, model.generate([ids], NEW, [], SAMPLING).tokens[0]


@pytest.mark.parametrize("span", [2, 3])
def test_a_stop_string_over_several_tokens_ends_the_row_at_the_token_that_completes_it(model, baseline, span):
    ids, tokens = baseline
    stop, last = spanning(model, tokens, span)
    full = model.decode_text(tokens)
    result = model.generate([ids], NEW, [], SAMPLING, stop_strings=[stop, "never-in-this-text"])
    row = result.rows[0]
    assert row.tokens == tokens[: last + 1]
    assert row.finish_reason == "stop" and row.stop_reason == stop
    assert row.text == full[: full.find(stop)] and stop not in row.text
    kept = model.generate([ids], NEW, [], SAMPLING, stop_strings=[stop], include_stop_str_in_output=True).rows[0]
    assert kept.tokens == row.tokens and kept.text == full[: full.find(stop) + len(stop)]


def test_without_a_match_the_row_runs_on_and_its_text_is_whole(model, baseline):
    ids, tokens = baseline
    row = model.generate([ids], NEW, [], SAMPLING, stop_strings=["\u00a7\u00a7"]).rows[0]
    assert row.tokens == tokens and row.finish_reason == "length" and row.stop_reason is None
    assert row.text == model.decode_text(tokens)


def test_samples_forked_from_one_prefill_each_stop_on_their_own_text(model, baseline):
    ids, tokens = baseline
    stop, _ = spanning(model, tokens, 2)
    together = model.generate([ids], NEW, [], SAMPLING, n=3, stop_strings=[stop]).rows
    alone = model.generate([ids, ids, ids], NEW, [], SAMPLING, stop_strings=[stop]).rows
    assert [(r.tokens, r.text, r.finish_reason) for r in together] == [(r.tokens, r.text, r.finish_reason) for r in alone]


def test_a_stop_token_still_ends_the_row_and_names_itself(model, baseline):
    ids, tokens = baseline
    row = model.generate([ids], NEW, [tokens[4]], SAMPLING, stop_strings=["\u00a7"]).rows[0]
    assert row.tokens == tokens[: tokens.index(tokens[4]) + 1] and row.stop_reason == tokens[4]


def test_the_incremental_text_equals_the_whole_decode(model, baseline):
    from edgeseq.runtimes.stop_strings import StopStrings

    _, tokens = baseline
    state = StopStrings(["\u00a7"], model.codec).start()
    for token in tokens:
        assert state.feed(token) is None
    assert state.text == model.decode_text(tokens)


@pytest.mark.parametrize("options, message", [
    ({"stop_strings": ["x"] * 17}, "17 stop strings; at most 16"),
    ({"stop_strings": [""]}, "is not a non-empty string"),
    ({"stop_strings": [3]}, "is not a non-empty string"),
    ({"stop_strings": ["x"], "num_beams": 2}, "a beam search does not take them"),
])
def test_bad_stop_strings_are_refused_in_one_line(model, options, message):
    with pytest.raises(GenerateError, match=message):
        model.generate([[5, 6]], 4, **options)


def test_an_artifact_without_a_tokenizer_refuses_stop_strings(artifacts):
    _, art = artifacts.get(family="red")
    with load(art) as red, pytest.raises(GenerateError, match="stop strings are found in decoded text: .* no tokenizer"):
        red.generate([[5, 6]], 4, stop_strings=["x"])


def test_cli_stop(baseline):
    ids, tokens = baseline
    with load(FIXTURE, threads=1) as model:
        stop, last = spanning(model, tokens, 3)
        full = model.decode_text(tokens)
    r = subprocess.run([sys.executable, "-m", "edgeseq.cli", "generate", str(FIXTURE), "--text", PROMPT, "--do-sample",
                        "--seed", "1", "--temperature", "1.0", "--max-new-tokens", str(NEW), "--stop-token", "-1",
                        "--stop", stop, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == [full[: full.find(stop)]] and out["results"][0]["stop_reason"] == stop
    assert out["tokens"] == [tokens[: last + 1]]
