"""The compile's one pass pipeline: built from (family passes, target, precision), run by one
onnx-ir PassManager over every graph of the artifact at once.

Some rewrites need more than one graph at a time (one pruning plan for the encoder and the
decoder step, projection packs that graphs sharing weights must agree on, a step graph
cut into stage graphs), so the PassManager's model is a `GraphSet`: the artifact's graphs
plus the manifest sections passes write. A per-graph pass joins through `EachGraph`,
which runs it on every graph in turn (its own requires/ensures around each run) and
names the graph when it fails.

Order, for every family: the family's own passes (record.passes: the StagFormer stage
split, NASH's strip and attention fusion), then for ONNX Runtime targets the projection
packs and skip-norm fusion, then the common rewrites and clean-up (Transposes that move
no data become Reshapes; unused nodes and opsets; topological order; metadata cleared
last, since the stage split reads name scopes), then at int8 the weight quantization.
`explain` reports, per pass, what it rewrote in each graph and every candidate it
declined with the reason.
"""

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import onnx_ir as ir
from onnx_ir.passes import common

from edgeseq.errors import EdgeseqError, PassError
from edgeseq.graph_spec import ExportedGraph, GraphSpec

from .contracts import (
    BUG,
    ContractPass,
    Declined,
    PostconditionBroken,
    PreconditionBroken,
    postcondition,
    precondition,
)


@dataclass
class GraphSet:
    """What one compile's passes rewrite: the artifact's graphs, in order, and the manifest
    sections the passes write (NASH's "pruning")."""

    graphs: list[ExportedGraph]
    sections: dict[str, Any] = field(default_factory=dict)


class GraphSetPass(ir.passes.InPlacePass):
    """A pass over a GraphSet. `explain()` says what it did."""

    def __init__(self):
        super().__init__()
        self.rewrote: Counter[str] = Counter()
        self.declined: list[Declined] = []

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, graphs: GraphSet) -> None:
        if not isinstance(graphs, GraphSet) or not graphs.graphs:
            raise precondition(f"{self.name} runs on a non-empty GraphSet, got {type(graphs).__name__}")

    def explain(self) -> dict[str, Any]:
        return {"pass": self.name, "rewrote": dict(self.rewrote), "declined": [vars(d) for d in self.declined]}


@contextmanager
def failures_named(graph_name: str):
    """A pass that fails on a graph becomes a PassError naming the graph (and the fix, when
    the contract that broke knows one)."""
    try:
        yield
    except (PreconditionBroken, PostconditionBroken) as e:
        raise type(e)(f"graph {graph_name!r}: {e.problem}", e.fix) from e
    except EdgeseqError:
        raise
    except (ir.passes.PassError, ir.passes.InvariantError, ValueError) as e:
        raise PassError(f"graph {graph_name!r}: {e}", getattr(e, "fix", BUG)) from e


class EachGraph(GraphSetPass):
    """Run one per-graph pass on every graph of the set (or those of some roles)."""

    def __init__(self, inner: ir.passes.PassBase, roles: tuple[str, ...] | None = None):
        super().__init__()
        self.inner, self.roles = inner, roles

    @property
    def name(self) -> str:
        return type(self.inner).__name__

    def call(self, graphs: GraphSet) -> ir.passes.PassResult:
        modified = False
        for g in graphs.graphs:
            if self.roles is not None and g.spec.role not in self.roles:
                continue
            if isinstance(self.inner, ContractPass):
                self.inner.graph_name, self.inner.graph_role = g.spec.name, g.spec.role
            with failures_named(g.spec.name):
                result = self.inner(g.model)
            g.model = result.model
            modified |= result.modified
            if result.modified and not isinstance(self.inner, ContractPass):
                self.rewrote[g.spec.name] += 1
        return ir.passes.PassResult(graphs, modified)

    def explain(self) -> dict[str, Any]:
        if isinstance(self.inner, ContractPass):
            return {"pass": self.name, "rewrote": dict(self.inner.rewrote), "declined": [vars(d) for d in self.inner.declined]}
        return super().explain()


class PackSharedProjections(GraphSetPass):
    """PackProjectionsPass on every graph, packing only the groups every graph reading their
    weights packs alike (shared weights stay stored once)."""

    def call(self, graphs: GraphSet) -> ir.passes.PassResult:
        from .pack_projections import PackProjectionsPass, shareable_groups

        each = EachGraph(PackProjectionsPass(shareable_groups([g.model for g in graphs.graphs])))
        result = each.call(graphs)
        self.rewrote, self.declined = each.inner.rewrote, each.inner.declined
        return result


class SplitStepIntoStages(GraphSetPass):
    """StagFormer: each `step` graph becomes its per-stack stage graphs (stage.0 .. stage.{p-1}).
    Requires: a `step` graph. Ensures: no step graph is left, stages 0..p-1 are there, and
    together they produce exactly the step's outputs."""

    def __init__(self, n_stacks: int):
        super().__init__()
        self.n_stacks = n_stacks
        self._step_outputs: set[str] = set()

    def requires(self, graphs: GraphSet) -> None:
        super().requires(graphs)
        steps = [g for g in graphs.graphs if g.spec.role == "step"]
        if len(steps) != 1:
            raise precondition(f"the stage split needs one `step` graph, found {len(steps)}",
                               "split only a StagFormer step exported by edgeseq, or compile with --no-split")
        self._step_outputs = {v.name for v in steps[0].model.graph.outputs}

    def call(self, graphs: GraphSet) -> ir.passes.PassResult:
        from .split_stages import SplitStagesPass

        out = []
        for g in graphs.graphs:
            if g.spec.role != "step":
                out.append(g)
                continue
            with failures_named(g.spec.name):
                result = SplitStagesPass(self.n_stacks, g.spec.state_owner(), g.spec.output_owner())(g.model)
            for k, stage in enumerate(result.stages):
                inputs = {v.name for v in stage.graph.inputs}
                outputs = {v.name for v in stage.graph.outputs}
                spec = GraphSpec(name=f"stage.{k}", role="stage",
                                 inputs=tuple(t for t in g.spec.inputs if t.name in inputs),
                                 outputs=tuple(t for t in g.spec.outputs if t.name in outputs))
                out.append(ExportedGraph(spec, stage))
            self.rewrote[g.spec.name] += len(result.stages)
        graphs.graphs[:] = out
        return ir.passes.PassResult(graphs, True)

    def ensures(self, graphs: GraphSet) -> None:
        names = [g.spec.name for g in graphs.graphs]
        if "step" in [g.spec.role for g in graphs.graphs]:
            raise postcondition("a `step` graph is left after the stage split")
        stages = [g for g in graphs.graphs if g.spec.role == "stage"]
        if [g.spec.name for g in stages] != [f"stage.{k}" for k in range(self.n_stacks)]:
            raise postcondition(f"the stage split made {names}, not stage.0 .. stage.{self.n_stacks - 1}")
        produced = [v.name for g in stages for v in g.model.graph.outputs]
        if sorted(produced) != sorted(self._step_outputs):
            missing, extra = self._step_outputs - set(produced), set(produced) - self._step_outputs
            raise postcondition(f"the stages do not produce exactly the step's outputs (missing {sorted(missing)[:3]}, "
                                f"extra or repeated {sorted(extra)[:3] or 'none'})")


class StripPrunedGraphs(GraphSetPass):
    """NASH: StripPrunedUnitsPass on every graph with one plan, each graph's spec made to
    match what is left (removed caches gone, per-layer head counts), and the manifest's
    "pruning" section: `summary` plus `measure(graphs)` before and after."""

    def __init__(self, plan: dict[str, Any], measure=None, summary: dict | None = None):
        super().__init__()
        self.plan, self.measure, self.summary = plan, measure, summary or {}

    def call(self, graphs: GraphSet) -> ir.passes.PassResult:
        from .strip_pruned import StripPrunedUnitsPass

        before = self.measure(graphs.graphs) if self.measure else None
        strip = StripPrunedUnitsPass(self.plan)
        modified = False
        for i, g in enumerate(graphs.graphs):
            strip.graph_name = g.spec.name
            with failures_named(g.spec.name):
                result = strip(g.model)
            modified |= result.modified
            spec = GraphSpec(g.spec.name, g.spec.role, respec(g.spec.inputs, result.model.graph.inputs),
                             respec(g.spec.outputs, result.model.graph.outputs))
            graphs.graphs[i] = ExportedGraph(spec, result.model)
        self.rewrote, self.declined = strip.rewrote, strip.declined
        if self.measure:
            graphs.sections["pruning"] = {**self.summary, "before": before, "after": self.measure(graphs.graphs)}
        return ir.passes.PassResult(graphs, modified)


def respec(specs: tuple, values) -> tuple:
    """The specs of the values still in the graph, with the graph's static dims."""
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


def compile_pipeline(family_passes: list[GraphSetPass], target: str, precision: str,
                     keep_fp32: tuple[str, ...] = ()) -> ir.passes.PassManager:
    """The one PassManager of a compile (module docstring: the order and why)."""
    from .fuse_residual_norm import FuseResidualNormPass
    from .quantize_weights import QuantizeWeightsPass
    from .transpose_as_reshape import TransposeAsReshapePass

    passes: list[GraphSetPass] = list(family_passes)
    if target.startswith("ort"):
        passes += [PackSharedProjections(), EachGraph(FuseResidualNormPass())]
    passes += [
        EachGraph(TransposeAsReshapePass()),  # a decode step's head split and merge move no data
        EachGraph(common.RemoveUnusedNodesPass()),
        EachGraph(common.RemoveUnusedOpsetsPass()),
        EachGraph(common.TopologicalSortPass()),
        # the exporter's per-node stack traces triple the graph files and mean nothing at
        # deploy time (the stage split, which reads name scopes, has run)
        EachGraph(common.ClearMetadataAndDocStringPass()),
    ]
    if precision == "int8":
        passes.append(EachGraph(QuantizeWeightsPass(keep_fp32=keep_fp32)))
    return ir.passes.PassManager(passes)


def run_pipeline(manager: ir.passes.PassManager, graphs: list[ExportedGraph]) -> GraphSet:
    """Run the pipeline once over the artifact's graphs. onnx-ir wraps a pass's failure in its
    own PassErrors; the edgeseq error inside (which names the graph and the fix) is raised."""
    graph_set = GraphSet(list(graphs))
    try:
        manager(graph_set)
    except Exception as e:  # noqa: BLE001  (find the error the pass itself raised)
        cause = e
        while cause.__cause__ is not None and not isinstance(cause, EdgeseqError | ir.passes.InvariantError):
            cause = cause.__cause__
        if isinstance(cause, EdgeseqError):
            raise cause from e
        raise PassError(f"the pass pipeline failed: {cause}", getattr(cause, "fix", BUG)) from e
    return graph_set


def explain(manager: ir.passes.PassManager) -> list[dict[str, Any]]:
    """Per pass of a run pipeline: what it rewrote per graph and each declined candidate."""
    return [p.explain() for p in manager.passes]
