"""Which model families exist, and for each its config class, presets and model class.

Data, not logic: adding a family means adding one entry here (and its exporter).
"""

from dataclasses import dataclass
from typing import Any

from edgeseq.errors import ConfigError

from . import red, stagformer


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
}


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model family {name!r}", f"choose one of: {', '.join(sorted(FAMILIES))}"
        ) from None
