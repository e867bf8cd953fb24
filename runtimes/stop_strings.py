"""Stop strings: a row ends when its decoded text contains one of them (OpenAI's `stop`,
transformers' `stop_strings`), even when the string spans token boundaries.

Each row's generated text is kept incrementally, as vLLM's detokenizer does: a new token's
text is what decoding from a few tokens back adds (so a SentencePiece word's leading space
and a byte-level piece split over tokens come out right), and nothing is added while the
tail is an incomplete UTF-8 sequence (U+FFFD). Only the new characters and the `longest - 1`
before them are searched, so a step costs the same at token 10 and token 1000. The search
covers the generated text only, never the prompt.

When a row ends, its text is decoded once in full and cut before the matched string (or
after it, with `include_stop_str_in_output`); that is the text the caller receives.
"""

from dataclasses import dataclass, field

from edgeseq.errors import GenerateError

MAX_STOP_STRINGS = 16  # the server takes OpenAI's 4
INCOMPLETE = "\ufffd"


def check_stop_strings(strings, limit: int = MAX_STOP_STRINGS) -> tuple[str, ...]:
    if isinstance(strings, str):
        strings = [strings]
    if not isinstance(strings, (list, tuple)) or not strings:
        raise GenerateError(f"stop_strings={strings!r} must be a list of strings", 'pass e.g. stop_strings=["\\n\\n"]')
    if len(strings) > limit:
        raise GenerateError(f"{len(strings)} stop strings; at most {limit} are taken", f"pass at most {limit}")
    for s in strings:
        if not isinstance(s, str) or not s:
            raise GenerateError(f"stop string {s!r} is not a non-empty string", "pass non-empty strings")
    return tuple(dict.fromkeys(strings))


class StopStrings:
    """The stop strings of one request, over the artifact's text codec."""

    def __init__(self, strings, codec, include_stop_str_in_output: bool = False, limit: int = MAX_STOP_STRINGS):
        self.strings = check_stop_strings(strings, limit)
        self.codec = codec
        self.include = bool(include_stop_str_in_output)
        self.longest = max(len(s) for s in self.strings)

    def start(self) -> "StopState":
        return StopState(self)

    def final_text(self, tokens: list[int], matched: str | None) -> str:
        """The row's text as the caller gets it: decoded whole, cut at the matched string."""
        text = self.codec.decode(tokens)
        if matched is None:
            return text
        at = text.find(matched)
        if at < 0:  # the whole decode cleaned up what the incremental one saw: keep it whole
            return text
        return text[: at + len(matched)] if self.include else text[:at]


@dataclass
class StopState:
    """One row's incremental text and its decoding window: the tokens since the last one
    whose text was added (context, so a word's leading space decodes right), then the rest."""

    stops: StopStrings
    tokens: list[int] = field(default_factory=list)  # the decoding window, not the whole row
    text: str = ""
    read_offset: int = 0  # the window's tokens before this are in `text` (context for the next)
    matched: str | None = None

    def feed(self, token: int) -> str | None:
        """Add the row's next token; the stop string its text now holds, if any."""
        self.tokens.append(token)
        decode = self.stops.codec.decode
        before = decode(self.tokens[: self.read_offset])
        now = decode(self.tokens)
        if len(now) <= len(before) or now.endswith(INCOMPLETE):
            return None  # nothing whole yet (a special token, or part of a character)
        searched_from = max(0, len(self.text) - (self.stops.longest - 1))
        self.text += now[len(before) :]
        # keep only the window the next decode needs: the state stays small however long the row
        self.tokens = self.tokens[self.read_offset :]
        self.read_offset = len(self.tokens)
        found = [(at, s) for s in self.stops.strings if (at := self.text.find(s, searched_from)) >= 0]
        if found:
            self.matched = min(found)[1]
        return self.matched

    def copy(self) -> "StopState":
        return StopState(self.stops, list(self.tokens), self.text, self.read_offset, self.matched)
