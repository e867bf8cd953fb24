"""The decoding options of `edgeseq generate`: beam search and the logits processors, by
transformers' GenerationConfig names. Unset options stay unset, so the artifact's default
decoding (its checkpoint's generation config) applies; a set one overrides it for the call."""

import json

import click

from edgeseq.errors import GenerateError


def _early_stopping(value: str | None):
    return None if value is None else {"true": True, "false": False, "never": "never"}[value]


def _ids(name: str):
    def parse(text: str | None):
        if text is None:
            return None
        try:
            return [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise GenerateError(f"--{name} {text!r} is not a list of token ids", f'write e.g. --{name} "5 17"') from None
    return parse


def _bad_words(text: str | None):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise GenerateError(f"--bad-words-ids {text!r} is not JSON", "write e.g. --bad-words-ids '[[5], [7, 9]]'") from None
    return value


# (flag, type, help, how its text becomes the option's value)
OPTIONS = [
    ("num-beams", int, "Beam search with this many beams (1: greedy or sampling).", None),
    ("length-penalty", float, "Beam score = sum of log-probs / length ** this (default 1.0).", None),
    ("early-stopping", click.Choice(["true", "false", "never"]), "When a beam search ends (transformers' rules).",
     _early_stopping),
    ("num-return-sequences", int, "Hypotheses returned per prompt (at most --num-beams).", None),
    ("repetition-penalty", float, "Divide (or for negative scores multiply) seen tokens' scores by this.", None),
    ("no-repeat-ngram-size", int, "No n-gram of this size twice in a row's history.", None),
    ("encoder-no-repeat-ngram-size", int, "No n-gram of this size copied from the source (encoder-decoder).", None),
    ("min-length", int, "No eos before the history (prompt or decoder start + new tokens) is this long.", None),
    ("min-new-tokens", int, "No eos before this many new tokens.", None),
    ("forced-bos-token-id", int, "The first generated token.", None),
    ("forced-eos-token-id", int, "The last token at the length limit.", None),
    ("bad-words-ids", str, "Token sequences never generated, as JSON: '[[5], [7, 9]]'.", _bad_words),
    ("suppress-tokens", str, 'Token ids never generated, e.g. "5 17".', _ids("suppress-tokens")),
    ("begin-suppress-tokens", str, "Token ids not generated first.", _ids("begin-suppress-tokens")),
    ("logprobs", int, "With --json: each token's log-probability and the K best alternatives (0..20).", None),
]


def decoding_options(command):
    for flag, kind, text, _ in reversed(OPTIONS):
        command = click.option(f"--{flag}", flag.replace("-", "_"), type=kind, default=None, help=text)(command)
    return command


def decoding_values(values: dict) -> dict:
    """The options the user set, as generate() takes them."""
    out = {}
    for flag, _, _, convert in OPTIONS:
        name = flag.replace("-", "_")
        if values.get(name) is not None:
            out[name] = convert(values[name]) if convert else values[name]
    return out
