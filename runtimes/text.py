"""Text in and out: the artifact's tokenizer.json read by the `tokenizers` library.

No transformers and no torch at run time. An artifact compiled from a folder with a
tokenizer carries it (checksummed with every other file); one without keeps working with
token ids and says clearly that text needs one.
"""

from pathlib import Path

from edgeseq.errors import GenerateError, LoadError

TOKENIZER_FILE = "tokenizer.json"


class TextCodec:
    """encode(text) -> ids (with the tokenizer's own template: T5 appends </s>, BART wraps in
    <s> ... </s>) and decode(ids) -> text (special tokens skipped)."""

    def __init__(self, path: Path, vocab_size: int):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # a base install has it; a trimmed one may not
            raise LoadError("reading the artifact's tokenizer needs the `tokenizers` library",
                            "pip install tokenizers") from e
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception type
            raise LoadError(f"{path} is not a tokenizer the `tokenizers` library can read ({e})",
                            "recompile from a folder whose tokenizer.json loads with tokenizers") from e
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise GenerateError("the text to encode is empty", "send some text, or token ids")
        ids = self.tokenizer.encode(text).ids
        too_big = [i for i in ids if i >= self.vocab_size]
        if too_big:  # checked at compile; a hand-edited tokenizer could still do it
            raise GenerateError(f"the tokenizer gave id {too_big[0]}, outside the model's vocabulary of {self.vocab_size}",
                                "recompile with the checkpoint's own tokenizer")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def text_codec(artifact) -> TextCodec | None:
    """The artifact's codec, or None when it was compiled without a tokenizer."""
    record = artifact.manifest.get("tokenizer")
    if not record:
        return None
    return TextCodec(artifact.file(record["file"]), artifact.config["vocab_size"])


def no_tokenizer_error(artifact_path) -> GenerateError:
    return GenerateError(f"artifact {artifact_path} has no tokenizer, so it cannot take or give text",
                         "send token ids, or compile from a checkpoint folder that has a tokenizer.json")


class TextMethods:
    """Text in and out for a loaded model with `codec` (TextCodec or None) and `artifact`."""

    codec: "TextCodec | None"
    artifact: object

    @property
    def has_tokenizer(self) -> bool:
        return self.codec is not None

    @property
    def text_prefix(self) -> str:
        """What text input is prefixed with: the compile's --task prefix ("summarize: "), or nothing."""
        return (self.artifact.manifest.get("generation") or {}).get("prefix") or ""

    def encode_text(self, text: str) -> list[int]:
        """Token ids for `text` through the artifact's tokenizer (GenerateError without one)."""
        if self.codec is None:
            raise no_tokenizer_error(self.artifact.path)
        return self.codec.encode(text)

    def decode_text(self, ids: list[int]) -> str:
        if self.codec is None:
            raise no_tokenizer_error(self.artifact.path)
        return self.codec.decode(ids)
