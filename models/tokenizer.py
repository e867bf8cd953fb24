"""A small real tokenizer for the random-weight T5/BART checkpoints `edgeseq init nash` writes.

Hub checkpoints bring their own tokenizer.json; ours are made locally, so `init` trains a
character-level BPE tokenizer (the `tokenizers` library, as T5's sentencepiece and BART's
byte-level BPE are) on a fixed synthetic corpus, at the model's vocabulary size, with the
model's special-token ids and its template (T5: text </s>; BART: <s> text </s>). Text then
flows through `edgeseq generate --text` and the server like a real checkpoint's.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

WORDS = ("the cat dog sat on a mat and ran to see red blue green small big tree house "
         "river light stone bird sings over under near far edge model fast slow token").split()
ALPHABET = list("abcdefghijklmnopqrstuvwxyz.,")

# per variant: the special tokens at their config ids, and where they go around a text
SPECIALS = {
    "t5": ["<pad>", "</s>", "<unk>"],
    "bart": ["<s>", "<pad>", "</s>", "<unk>"],
}


def corpus(lines: int = 400) -> list[str]:
    """Deterministic sentences over WORDS (no randomness: the same tokenizer every time)."""
    out = []
    for i in range(lines):
        n = 3 + i % 7
        out.append(" ".join(WORDS[(i * 7 + j * 13 + j * j) % len(WORDS)] for j in range(n)) + ".")
    return out


def train_tokenizer(vocab_size: int, kind: str) -> Tokenizer:
    """A BPE tokenizer of exactly `vocab_size` entries (specials first, at their ids)."""
    specials = SPECIALS[kind]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=ALPHABET + ["▁"],
                                  limit_alphabet=len(ALPHABET) + 1, show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    ids = {t: tokenizer.token_to_id(t) for t in specials}
    if kind == "t5":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", ids["</s>"])])
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])
    return tokenizer


def write_tokenizer(folder: str | Path, vocab_size: int, kind: str) -> Path:
    path = Path(folder) / "tokenizer.json"
    train_tokenizer(vocab_size, kind).save(str(path))
    return path
