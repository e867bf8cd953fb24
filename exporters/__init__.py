"""torch -> ONNX exporters, one module per family; which family uses which is in edgeseq/families.py."""

from edgeseq.graph_spec import ExportedGraph, GraphSpec, TensorSpec

from .base import FamilyExporter, export_graphs


def exporter_for(family: str) -> FamilyExporter:
    """The exporter of a registered family (a ConfigError names the families otherwise)."""
    from edgeseq.families import family as family_record

    return family_record(family).exporter()


__all__ = ["ExportedGraph", "FamilyExporter", "GraphSpec", "TensorSpec", "export_graphs", "exporter_for"]
