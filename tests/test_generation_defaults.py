"""The checkpoint's generation config is the artifact's default decoding: `compile` records
generation_config.json (or config.json's generation keys, or task_specific_params[TASK] with
--task, its prefix for text), `generate` with no options decodes as transformers' `generate`
with that config, every option overrides it per call, `inspect` shows it, and bad values or
an unknown task are one-line errors."""

import json

import pytest
import torch
from click.testing import CliRunner
from edgeseq.models.nash import load_nash
from edgeseq.models.nash_checkpoints import (
    nash_dims,
    random_masks,
    random_model,
    save_hf_checkpoint,
)
from test_beam_search import eos_prone, until_eos
from tokenizers import Tokenizer
from transformers import GenerationConfig

from edgeseq.cli import cli

BEAMS = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=6, early_stopping=True, max_length=16)
SUMMARIZATION = dict(early_stopping=True, length_penalty=2.0, max_length=14, min_length=5, no_repeat_ngram_size=3,
                     num_beams=3, prefix="summarize: ")
TEXT = "the cat sat on the mat and the dog sat on the log"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def t5_folder(path, generation: dict | None = None, tasks: dict | None = None):
    model = eos_prone(random_model("t5-v1", "tiny", seed=0), 1)
    c = model.config
    model.generation_config = GenerationConfig(decoder_start_token_id=c.decoder_start_token_id, eos_token_id=c.eos_token_id,
                                               pad_token_id=c.pad_token_id, **(generation or {}))
    if tasks is not None:
        c.task_specific_params = tasks
    return save_hf_checkpoint(model, path, random_masks(nash_dims(c), 0.3, seed=1), tokenizer=True)


def transformers_generate(ckpt, ids: list[int], **overrides) -> list[list[int]]:
    hf = load_nash(ckpt).reference()
    config = GenerationConfig.from_pretrained(ckpt)  # what hf.generate would take from the folder
    config.update(**overrides)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          generation_config=config)
    return [until_eos(s.tolist()[1:], hf.config.eos_token_id) for s in out]


def generated(art, *args) -> dict:
    done = run("generate", art, *args, "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.output)


def test_generation_config_is_the_default_decoding(tmp_path):
    ckpt = t5_folder(tmp_path / "ckpt", BEAMS)
    compiled = run("compile", ckpt, "-o", tmp_path / "art")
    assert compiled.exit_code == 0, compiled.output
    said = " ".join(compiled.output.split())
    assert "default decoding (from generation_config.json):" in said and "num_beams=4" in said
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert {k: manifest["generation"]["defaults"][k] for k in BEAMS} == BEAMS
    ids = Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(TEXT).ids
    ours = generated(tmp_path / "art", "--text", TEXT)
    assert ours["tokens"] == transformers_generate(ckpt, ids)  # no options: the folder's config, as transformers
    assert len(ours["results"][0]["tokens"]) <= BEAMS["max_length"] - 1 and "score" in ours["results"][0]
    overridden = generated(tmp_path / "art", "--text", TEXT, "--num-beams", "1", "--max-new-tokens", "8")
    assert overridden["tokens"] == transformers_generate(ckpt, ids, num_beams=1, max_new_tokens=8)
    shown = run("inspect", tmp_path / "art")
    assert "default decoding (from generation_config.json)" in shown.output


def test_a_task_takes_its_params_and_prefix_as_the_pipelines_did(tmp_path):
    """transformers 4.57's pipelines put task_specific_params[task] into the generation config and
    prefix the text (transformers 5 dropped task_specific_params; edgeseq keeps that behaviour)."""
    ckpt = t5_folder(tmp_path / "ckpt", tasks={"summarization": SUMMARIZATION})
    compiled = run("compile", ckpt, "-o", tmp_path / "art", "--task", "summarization")
    assert compiled.exit_code == 0, compiled.output
    generation = json.loads((tmp_path / "art" / "manifest.json").read_text())["generation"]
    assert generation["task"] == "summarization" and generation["prefix"] == "summarize: "
    ids = Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode("summarize: " + TEXT).ids
    params = {k: v for k, v in SUMMARIZATION.items() if k != "prefix"}
    assert generated(tmp_path / "art", "--text", TEXT)["tokens"] == transformers_generate(ckpt, ids, **params)
    unknown = run("compile", ckpt, "-o", tmp_path / "art2", "--task", "translation_en_to_de")
    assert unknown.exit_code != 0 and "unknown --task 'translation_en_to_de'" in " ".join(unknown.output.split())
    assert "use one of: summarization" in " ".join(unknown.output.split())


def test_a_bad_value_in_the_generation_config_fails_the_compile_naming_it(tmp_path):
    ckpt = t5_folder(tmp_path / "ckpt")
    raw = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**raw, "bad_words_ids": [[5], [100000]]}))
    done = run("compile", ckpt, "-o", tmp_path / "art", "--no-verify")
    text = " ".join(done.output.split())
    assert done.exit_code != 0 and "generation_config.json: bad_words_ids holds 100000, not a token id" in text
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("flags, message", [
    (["--num-beams", "0"], "num_beams=0 must be a whole number >= 1"),
    (["--num-beams", "2", "--num-return-sequences", "3"], "num_return_sequences=3 must be between 1 and num_beams=2"),
    (["--repetition-penalty", "nan"], "repetition_penalty=nan must be a finite number > 0"),
    (["--bad-words-ids", "[[100000]]"], "bad_words_ids holds 100000, not a token id"),
    (["--bad-words-ids", "[[1"], "--bad-words-ids '[[1' is not JSON"),
])
def test_bad_decoding_flags_are_one_line_errors(artifacts, flags, message):
    from test_cli import assert_one_line_error

    _, art = artifacts.get()
    assert_one_line_error(run("generate", art, "--input-ids", "5 6 7", *flags), message)
