"""Which model families exist, and for each its config class, presets and model class.

Data, not logic: adding a family means adding one entry here (and its exporter).
"""

from dataclasses import dataclass
from typing import Any

from edgeseq.errors import ConfigError

from . import red, stagformer
from .pasta_task import PastaTask

# PASTA's model is a StagFormer (p = 1: the plain LM) over the PASTA task's vocabulary,
# trained with PASTA's masks (models/pasta.py); the recipe of scripts/train_pasta.py
PASTA_PRESETS = {"tiny": dict(vocab_size=PastaTask().vocab_size, d_model=128, n_heads=4, n_layers=4, n_stacks=1,
                              d_ff=512, max_positions=192)}


@dataclass(frozen=True)
class FamilySpec:
    name: str
    config_class: type
    model_class: type
    presets: dict[str, dict[str, Any]]
    default_preset: str


FAMILIES: dict[str, FamilySpec] = {
    "red": FamilySpec("red", red.RedConfig, red.RedModel, red.PRESETS, "tiny"),
    "stagformer": FamilySpec(
        "stagformer", stagformer.StagFormerConfig, stagformer.StagFormerModel, stagformer.PRESETS, "tiny"
    ),
    "pasta": FamilySpec("pasta", stagformer.StagFormerConfig, stagformer.StagFormerModel, PASTA_PRESETS, "tiny"),
}


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model family {name!r}", f"choose one of: {', '.join(sorted(FAMILIES))}"
        ) from None
