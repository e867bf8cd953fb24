"""Carry a checkpoint's tokenizer into the artifact at compile time.

A Hugging Face folder's `tokenizer.json` (what every fast tokenizer saves) is read with the
`tokenizers` library, checked against the model's vocabulary, and written into the
artifact, where it is checksummed like every other file. Older folders with only a
sentencepiece `spiece.model` or BPE `vocab.json`/`merges.txt` compile without text support;
the compile says how to add it.
"""

from pathlib import Path
from typing import Any

from edgeseq.errors import BuildError
from edgeseq.runtimes.text import TOKENIZER_FILE

OTHER_TOKENIZER_FILES = ("spiece.model", "vocab.json", "merges.txt", "sentencepiece.bpe.model")


def carry_tokenizer(checkpoint: str | Path, out: str | Path, vocab_size: int) -> dict[str, Any] | None:
    """Copy (re-serialised) the checkpoint's tokenizer.json into `out`; returns the manifest
    record, or None when the checkpoint has none."""
    source = Path(checkpoint) / TOKENIZER_FILE
    if not source.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(source))
    except Exception as e:  # tokenizers raises a bare Exception
        raise BuildError(f"{source} is not a tokenizer the `tokenizers` library can read ({e})",
                         "re-save it with a fast tokenizer's save_pretrained, or remove it to compile without text") from e
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise BuildError(f"{source} has {size} tokens but the model's vocabulary is {vocab_size}",
                         "use the tokenizer the checkpoint was trained with")
    tokenizer.save(str(Path(out) / TOKENIZER_FILE))
    return {"file": TOKENIZER_FILE, "vocab_size": size}


def tokenizer_hint(checkpoint: str | Path) -> str | None:
    """Why a compiled artifact has no text support, when the folder suggests it could."""
    present = [name for name in OTHER_TOKENIZER_FILES if (Path(checkpoint) / name).is_file()]
    if not present or (Path(checkpoint) / TOKENIZER_FILE).is_file():
        return None
    return (f"{', '.join(present)} found but no tokenizer.json: the artifact takes token ids only; save one with "
            "AutoTokenizer.from_pretrained(folder).save_pretrained(folder) and recompile for text")
