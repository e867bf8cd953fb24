"""Checkpoint folders: config.json (with "family") + model.safetensors.

Never unpickles: weights go through safetensors only. Saves are atomic (edgeseq/atomic.py).
"""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgeseq.atomic import atomic_folder
from edgeseq.errors import CheckpointError, ConfigError
from edgeseq.families import family as family_record

from .config import config_from_dict, config_to_dict, parse_overrides

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def make_config(family: str, preset: str | None = None, overrides: dict[str, str] | None = None):
    """A config from a named preset plus key=value overrides, validated."""
    record = native_record(family)
    preset = preset or record.default_preset
    presets = record.presets.target
    if preset not in presets:
        raise ConfigError(f"unknown {family} preset {preset!r}", f"choose one of: {', '.join(presets)}")
    values: dict[str, Any] = dict(presets[preset])
    values.update(overrides or {})
    return config_from_dict(record.config_class.target, values, family)


def native_record(family: str):
    """The registry's record of a family with edgeseq checkpoints (a torch config and model class)."""
    record = family_record(family)
    if record.model_class is None or record.config_class is None:
        raise ConfigError(f"the {family} family has no edgeseq checkpoint format (its checkpoints are its own folders)",
                          f"see `edgeseq init {family} --help`")
    return record


def init_checkpoint(
    family: str, out: str | Path, preset: str | None = None, sets: list[str] | tuple = (),
    seed: int = 0, force: bool = False,
) -> Path:
    """Write a random-init checkpoint of a preset (with --set overrides) to `out`."""
    config = make_config(family, preset, parse_overrides(list(sets)))
    torch.manual_seed(seed)
    model = native_record(family).model_class(config)
    return save_checkpoint(model, family, out, force=force)


def save_checkpoint(model: torch.nn.Module, family: str, out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists", "choose another -o folder or pass --force")
    with atomic_folder(out) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config_to_dict(model.config, family), indent=2))
        save_file(unique_state(model), str(tmp / WEIGHTS_FILE))
    return out


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers under their first name only: weights a model shares between
    modules (StagFormer's shared stacks) are saved once, and safetensors refuses aliases."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.detach().contiguous() for name, t in named}


def read_json(path: Path, fix_if_missing: str):
    """A config.json's contents, or a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", fix_if_missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})", "restore config.json from the original checkpoint") from e


def read_config(path: str | Path):
    """(family, config) from a checkpoint folder's config.json."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder", "pass a folder made by `edgeseq init` or training")
    config_path = path / CONFIG_FILE
    raw = read_json(config_path, "a checkpoint folder needs config.json and model.safetensors")
    if not isinstance(raw, dict) or "family" not in raw:
        raise CheckpointError(f'{config_path} has no "family" key', 'add "family": "red" (or the model\'s family)')
    family = raw["family"]
    try:
        config = config_from_dict(native_record(family).config_class.target, raw, family)
    except ConfigError as e:
        raise CheckpointError(f"{config_path}: {e.problem}", e.fix) from e
    return family, config


def load_checkpoint(path: str | Path) -> tuple[str, torch.nn.Module]:
    """(family, model in eval mode) from a checkpoint folder; strict about every weight."""
    path = Path(path)
    family, config = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing", "a checkpoint folder needs model.safetensors beside config.json")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})", "re-save the checkpoint") from e
    model = native_record(family).model_class(config)
    expected = unique_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shapes = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad_shapes:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shapes))
            if keys
        )
        raise CheckpointError(
            f"{weights} does not match config.json ({detail})",
            "re-save the checkpoint from the model that config.json describes",
        )
    model.load_state_dict(state, strict=False)  # only aliases of loaded weights are absent
    return family, model.eval()
