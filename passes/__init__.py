"""ONNX -> ONNX rewrites on onnx-ir models, one pass per file, combined per family.

Every family gets the common rewrites (Transposes that move no data become Reshapes)
and clean-up (unused nodes and opsets, topological order); family-specific passes
(stage splitting, pruned-unit stripping) join the list for their family.
"""

from contextlib import contextmanager

import onnx_ir as ir
from onnx_ir.passes import common

from edgeseq.errors import PassError
from edgeseq.graph_spec import ExportedGraph, GraphSpec


def passes_for(family: str) -> list[ir.passes.PassBase]:
    from .transpose_as_reshape import TransposeAsReshapePass

    return [
        TransposeAsReshapePass(),  # a decode step's head split and merge move no data
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
        common.TopologicalSortPass(),
        # last: the exporter's per-node stack traces triple the graph files and mean
        # nothing at deploy time (passes that need name scopes run before this one)
        common.ClearMetadataAndDocStringPass(),
    ]


@contextmanager
def failures_named(graph_name: str):
    """A pass that fails on a graph becomes a PassError naming the graph."""
    try:
        yield
    except (ir.passes.PassError, ValueError) as e:
        raise PassError(f"graph {graph_name!r}: {e}", "this is an edgeseq bug: report it with the checkpoint config") from e


def run_passes(model: ir.Model, family: str, graph_name: str) -> ir.Model:
    with failures_named(graph_name):
        return ir.passes.PassManager(passes_for(family))(model).model


def split_stagformer_steps(graphs: list, n_stacks: int) -> list:
    """Replace each StagFormer `step` graph by its per-stack stage graphs (stage.0 .. stage.{p-1})."""
    from .split_stages import SplitStagesPass

    out = []
    for g in graphs:
        if g.spec.role != "step":
            out.append(g)
            continue
        result = SplitStagesPass(n_stacks, g.spec.state_owner(), g.spec.output_owner())(g.model)
        for k, stage in enumerate(result.stages):
            inputs = {v.name for v in stage.graph.inputs}
            outputs = {v.name for v in stage.graph.outputs}
            spec = GraphSpec(
                name=f"stage.{k}",
                role="stage",
                inputs=tuple(t for t in g.spec.inputs if t.name in inputs),
                outputs=tuple(t for t in g.spec.outputs if t.name in outputs),
            )
            out.append(ExportedGraph(spec, stage))
    return out


def fuse_kernels(graphs: list) -> list:
    """ONNX Runtime targets, every family: one MatMul per group of projections of one
    activation (PackProjectionsPass), and one skip-norm kernel per residual Add and the
    norm after it (FuseResidualNormPass). Inputs and outputs are unchanged."""
    from .fuse_residual_norm import FuseResidualNormPass
    from .pack_projections import PackProjectionsPass, shareable_groups

    allowed = shareable_groups([g.model for g in graphs])  # shared weights stay stored once
    for g in graphs:
        with failures_named(g.spec.name):
            g.model = ir.passes.Sequential(PackProjectionsPass(allowed), FuseResidualNormPass())(g.model).model
    return graphs


def quantize_graphs(graphs: list, keep_fp32: tuple[str, ...] = ()) -> list:
    """`compile --precision int8`: int8 weights in every graph's weight MatMuls (QuantizeWeightsPass),
    except those whose weight name contains one of `keep_fp32`. Inputs and outputs are unchanged."""
    from .quantize_weights import QuantizeWeightsPass

    for g in graphs:
        with failures_named(g.spec.name):
            g.model = QuantizeWeightsPass(keep_fp32=keep_fp32)(g.model).model
    return graphs


def strip_pruned_units(graphs: list, plan: dict, fuse_kernels: bool = True) -> list:
    """NASH: run StripPrunedUnitsPass on every graph with one plan (then, for ONNX Runtime,
    FuseAttentionPass, which finds its attentions from the plan), and make each graph's
    spec match what is left (removed caches gone, per-layer head counts)."""
    from .fuse_attention import FuseAttentionPass
    from .strip_pruned import StripPrunedUnitsPass

    out = []
    for g in graphs:
        with failures_named(g.spec.name):
            model = StripPrunedUnitsPass(plan)(g.model).model
            if fuse_kernels:
                model = FuseAttentionPass(plan)(model).model
        spec = GraphSpec(g.spec.name, g.spec.role, _respec(g.spec.inputs, model.graph.inputs),
                         _respec(g.spec.outputs, model.graph.outputs))
        out.append(ExportedGraph(spec, model))
    return out


def _respec(specs: tuple, values) -> tuple:
    """The specs of the values still in the graph, with the graph's static dims."""
    from dataclasses import replace

    shapes = {v.name: v.shape for v in values}
    kept = []
    for t in specs:
        if t.name not in shapes:
            continue
        shape = shapes[t.name]
        if shape is not None and len(shape) == len(t.dims):
            t = replace(t, dims=tuple(d if isinstance(d, str) or not isinstance(s, int) else s
                                      for d, s in zip(t.dims, shape)))
        kept.append(t)
    return tuple(kept)
