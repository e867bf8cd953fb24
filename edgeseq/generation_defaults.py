"""The checkpoint's own decoding, read at compile into the manifest's "generation" section.

Where transformers reads it: `generation_config.json` in the checkpoint folder, or where a
folder has none, the generation keys of `config.json` (GenerationConfig.from_model_config);
`--task NAME` puts `task_specific_params[NAME]` on top, as transformers' pipelines do,
its `prefix` kept for text input. Only what edgeseq decodes with is kept (beam search, the
logits processors, lengths, sampling, eos); the rest is listed as ignored, so a
checkpoint that asks for something edgeseq does not do says so at compile. Values are
checked with the runtime's own validators, so a bad one fails the compile naming the key.
JSON only: nothing here runs code from the folder.
"""

import json
from pathlib import Path
from typing import Any

from edgeseq.errors import BuildError, GenerateError
from edgeseq.runtimes.policies.beam import BeamOptions
from edgeseq.runtimes.processors import OPTION_NAMES, ProcessorOptions

GENERATION_FILE = "generation_config.json"
BEAM_KEYS = ("num_beams", "length_penalty", "early_stopping", "num_return_sequences")
LENGTH_KEYS = ("max_length", "max_new_tokens")
SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")
KEPT = (*BEAM_KEYS, *OPTION_NAMES, *LENGTH_KEYS, *SAMPLING_KEYS, "eos_token_id")
# what a generation config holds that is not a decoding choice
METADATA = {"transformers_version", "_from_model_config", "bos_token_id", "pad_token_id", "decoder_start_token_id",
            "prefix", "use_cache", "return_dict_in_generate", "output_scores", "output_attentions",
            "output_hidden_states", "output_logits"}
# transformers' GenerationConfig defaults: a config.json key at its default says nothing
DEFAULTS = {"max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "num_return_sequences": 1,
            "bad_words_ids": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
            "suppress_tokens": None, "begin_suppress_tokens": None}


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"{path} is not readable JSON ({e})", f"fix or remove {path.name}") from e
    if not isinstance(raw, dict):
        raise BuildError(f"{path} does not hold a JSON object", f"fix or remove {path.name}")
    return raw


def read_generation(checkpoint: str | Path, task: str | None, vocab_size: int) -> dict[str, Any] | None:
    """The manifest's "generation" section for a checkpoint folder, or None when it sets nothing."""
    folder = Path(checkpoint)
    config = _read(folder / "config.json") if (folder / "config.json").is_file() else {}
    if (folder / GENERATION_FILE).is_file():
        source, raw = GENERATION_FILE, _read(folder / GENERATION_FILE)
    else:  # transformers' older place: generation keys beside the model's, at non-default values
        source, raw = "config.json", {k: v for k, v in config.items() if k in DEFAULTS and v != DEFAULTS[k]}
    values = dict(raw)
    prefix = None
    if task is not None:
        tasks = config.get("task_specific_params") or {}
        if task not in tasks:
            raise BuildError(f"unknown --task {task!r}: this checkpoint's config.json has "
                             f"{'tasks ' + ', '.join(sorted(tasks)) if tasks else 'no task_specific_params'}",
                             f"use one of: {', '.join(sorted(tasks))}" if tasks else "leave out --task")
        values.update(tasks[task])
        prefix = values.pop("prefix", None)
    defaults = {k: v for k, v in values.items() if k in KEPT and v is not None}
    ignored = sorted(k for k, v in values.items() if k not in KEPT and k not in METADATA and v is not None)
    check(defaults, vocab_size, source)
    if not defaults and prefix is None:
        return None
    return {"source": source, "task": task, "prefix": prefix, "defaults": defaults, "ignored": ignored}


def check(defaults: dict[str, Any], vocab_size: int, source: str) -> None:
    """The runtime's validators over the defaults: a bad value fails the compile, naming it."""
    try:
        BeamOptions.from_options(defaults, vocab_size)
        ProcessorOptions.from_options(defaults, vocab_size)
    except GenerateError as e:
        raise BuildError(f"{source}: {e.problem}", f"fix the value in {source}, or pass it per call") from e
    for key in LENGTH_KEYS:
        value = defaults.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BuildError(f"{source}: {key}={value!r} must be a whole number >= 1", f"fix {key} in {source}")
