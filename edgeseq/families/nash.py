"""NASH's record: pruned Hugging Face T5/BART folders (+ zs.pt), read as they are
(models/nash.py); compile strips the pruned units and, for ONNX Runtime, fuses each
attention that is left (passes/strip_pruned.py, fuse_attention.py)."""

from pathlib import Path
from typing import Any

from .record import Family, Source, lazy, register


def load(path: Path) -> Source:
    from edgeseq.exporters.nash import prepare, runtime_config
    from edgeseq.models.nash import load_nash

    model = prepare(load_nash(path))
    return Source("nash", model, runtime_config(model))


def strip_and_fuse(model: Any, target: str, split: bool) -> list:
    """The pruned units out (the manifest's "pruning" section: what is kept, and the
    parameters and work per token before and after), then one attention kernel each."""
    from edgeseq.build import graph_stats
    from edgeseq.exporters.nash import plan_summary
    from edgeseq.passes.fuse_attention import FuseAttentionPass
    from edgeseq.passes.pipeline import EachGraph, StripPrunedGraphs

    strip = StripPrunedGraphs(model.plan, measure=graph_stats, summary={"kept": plan_summary(model.plan)})
    return [strip] + ([EachGraph(FuseAttentionPass(model.plan))] if target.startswith("ort") else [])


register(Family(
    name="nash",
    summary="pruned Hugging Face T5/BART (narrow encoder, shallow decoder)",
    recognises=lazy("edgeseq.models.nash:is_hf_folder"),
    load=load,
    exporter=lazy("edgeseq.exporters.nash:NashExporter"),
    parity=lazy("edgeseq.parity:hf_parity"),
    init=lazy("edgeseq.models.nash_checkpoints:init_nash_checkpoint"),
    presets=lazy("edgeseq.models.nash_checkpoints:SIZES"),
    passes=strip_and_fuse,
))
