"""torch -> ONNX exporters, one module per family, registered by family name."""

from edgeseq.errors import ConfigError

from .base import ExportedGraph, FamilyExporter, GraphSpec, TensorSpec, export_graphs
from .nash import NashExporter
from .red import RedExporter
from .stagformer import StagFormerExporter

EXPORTERS: dict[str, FamilyExporter] = {
    "red": RedExporter(), "nash": NashExporter(), "stagformer": StagFormerExporter(),
}


def exporter_for(family: str) -> FamilyExporter:
    try:
        return EXPORTERS[family]
    except KeyError:
        raise ConfigError(
            f"no exporter for family {family!r}", f"families with exporters: {', '.join(sorted(EXPORTERS))}"
        ) from None


__all__ = ["EXPORTERS", "ExportedGraph", "FamilyExporter", "GraphSpec", "TensorSpec", "export_graphs", "exporter_for"]
