"""StagFormer's record: decoder stacks staggered in time (models/stagformer.py); compile
splits the step into one stage graph per stack (passes/split_stages.py)."""

from typing import Any

from .native import native_family
from .record import lazy, register


def stage_split(model: Any, target: str, split: bool) -> list:
    """The stage split, unless `--no-split` keeps one step graph."""
    from edgeseq.passes.pipeline import SplitStepIntoStages

    return [SplitStepIntoStages(model.config.n_stacks)] if split else []


register(native_family(
    "stagformer", summary="decoder stacks staggered in time",
    exporter=lazy("edgeseq.exporters.stagformer:StagFormerExporter"), parity=lazy("edgeseq.parity:decoder_only_parity"),
    presets="edgeseq.models.stagformer:PRESETS", config_class="edgeseq.models.stagformer:StagFormerConfig",
    model_class="edgeseq.models.stagformer:StagFormerModel", passes=stage_split,
))
