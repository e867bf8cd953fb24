"""The family registry: one record per model family, everything the driver needs to know.

How a checkpoint of the family is recognised and loaded, its exporter, its own graph
passes, its parity check against PyTorch, how `edgeseq init` makes one, its presets and
torch classes, and the optional hooks only some families have (record.py). Each family
registers its record from its own module here; adding a family is one more module with
one `register(Family(...))` (docs/design.md §5). The decode shape is the exporter's
(`FamilyExporter.decode`); compile writes it into the manifest and the runtime reads it
from there, never from the family name.

Importing this package is cheap and torch-free: the records' torch parts are `lazy`.
"""

from pathlib import Path

from edgeseq.errors import CheckpointError, ConfigError

from . import nash, pasta, red, stagformer  # noqa: F401  (each registers its record)
from .record import FAMILIES, Family, Lazy, Source, lazy, register


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}", f"choose one of: {', '.join(sorted(FAMILIES))}") from None


def family_of_checkpoint(path: str | Path) -> Family:
    """The family whose checkpoints look like `path`, or a CheckpointError saying what was found."""
    path = Path(path)
    for record in FAMILIES.values():
        if record.recognises(path):
            return record
    from edgeseq.models.checkpoint import read_config

    read_config(path)  # raises the precise problem (missing folder, bad JSON, no or unknown family)
    raise CheckpointError(f"{path} is not a checkpoint of any family edgeseq knows",
                          f"families: {', '.join(sorted(FAMILIES))}")


def load_source(path: str | Path) -> Source:
    return family_of_checkpoint(path).load(Path(path))


__all__ = ["FAMILIES", "Family", "Lazy", "Source", "family", "family_of_checkpoint", "lazy", "load_source", "register"]
