"""What the families with edgeseq's own checkpoint folders share (config.json with "family"):
how such a folder is recognised, loaded and initialised. RED, StagFormer and PASTA."""

import json
from pathlib import Path
from typing import Any

from .record import Family, Lazy, Source, lazy


def has_family(name: str, path: Path) -> bool:
    """Is `path` an edgeseq checkpoint whose config.json says `"family": name`?"""
    from edgeseq.models.checkpoint import CONFIG_FILE

    try:
        raw = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("family") == name


def load(path: Path) -> Source:
    from edgeseq.models.checkpoint import load_checkpoint
    from edgeseq.models.config import config_to_dict

    family, model = load_checkpoint(path)
    config = config_to_dict(model.config, family)
    config.pop("family")
    return Source(family, model, config)


def init(name: str, out, preset=None, sets=(), seed: int = 0, force: bool = False) -> Path:
    from edgeseq.models.checkpoint import init_checkpoint

    return init_checkpoint(name, out, preset, sets, seed=seed, force=force)


def native_family(name: str, *, summary: str, exporter: Lazy, parity: Lazy, presets: str, config_class: str,
                  model_class: str, **hooks: Any) -> Family:
    """The record of a family with edgeseq checkpoints: recognised, loaded and initialised here;
    its presets and torch classes named as "module:attribute"; `hooks` the record's other fields."""
    return Family(name=name, summary=summary, recognises=lazy("edgeseq.families.native:has_family", name), load=load,
                  exporter=exporter, parity=parity, init=lazy("edgeseq.families.native:init", name),
                  presets=lazy(presets), config_class=lazy(config_class), model_class=lazy(model_class), **hooks)
