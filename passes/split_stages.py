"""SplitStagesPass: cut one StagFormer decode step into one subgraph per stack.

The exporter tags every node with the module it came from (`pkg.torch.onnx.name_scopes`);
a node belongs to stack k when its outermost scope is `...stacks.k`. Untagged nodes
(the token embedding lookup, shape and mask arithmetic) are replicated into every stage
that needs them. The exporter declares each stack's state inputs (its caches and its memory handoff);
the rest (token ids, positions, mask) are common. The pass proves the stacks are
independent within the step: nothing stack k computes may read another stack's state.
A node tagged with another stack that reads common inputs only is recomputed in stage k
(the exporter's CSE merges e.g. shared-weight stacks' identical first-layer projections
and the mask arithmetic every stack repeats). A graph
where one stack reads another stack's output of the same step is refused, naming the
value that crosses.
"""

import ast
import re
from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes import common

from edgeseq.errors import PassError

from .contracts import postcondition, precondition

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
# ops whose output depends on their input's shape only: reading a cache's length through
# them moves no data between stacks (every cache exists before the step starts)
SHAPE_ONLY_OPS = {"Shape", "Size"}
STACK_SCOPE = re.compile(r"(?:^|\.)stacks\.(\d+)$")


def stack_of(node: ir.Node) -> int | None:
    """The stack a node was traced in, from its outermost `stacks.k` name scope."""
    raw = node.metadata_props.get(NAME_SCOPES)
    if not raw:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    for scope in scopes:
        match = STACK_SCOPE.search(scope)
        if match:
            return int(match.group(1))
    return None


@dataclass
class SplitResult(ir.passes.PassResult):
    """The pass result plus the stage models, stage k computing stack k."""

    stages: list[ir.Model] = field(default_factory=list)


class SplitStagesPass(ir.passes.PassBase):
    """Requires: a single-step graph exported with name scopes, exactly stacks 0..n_stacks-1
    tagged. Ensures: `stages[k]` computes exactly the graph outputs stack k produces, and
    together the stages compute every output of the step once; the step is untouched."""

    # the input model is returned untouched; the stages are new models beside it
    in_place = True
    changes_input = False

    def __init__(self, n_stacks: int, state_owner: dict[str, int], output_owner: dict[str, int] | None = None):
        super().__init__()
        self.n_stacks = n_stacks
        self.state_owner = state_owner  # graph input -> the stack whose state it is
        # graph output -> the stack it belongs to, where declared (shared-weight stacks compute
        # identical first-layer keys; the exporter merges them and tags the node with one stack)
        self.output_owner = output_owner or {}
        self.stages: list[ir.Model] = []  # of the last call, for ensures

    def requires(self, model: ir.Model) -> None:
        found = sorted({t for t in (stack_of(n) for n in model.graph) if t is not None})
        if not found:
            raise precondition(
                "the graph is not a StagFormer step: no node carries a `stacks.k` name scope",
                "split only the `step` graph that the StagFormer exporter traces (with its metadata kept)",
            )
        if found != list(range(self.n_stacks)):
            raise precondition(
                f"the graph has stacks {found} but the config says n_stacks={self.n_stacks}",
                "compile the checkpoint this graph was exported from, or fix n_stacks in its config.json",
            )

    def ensures(self, model: ir.Model) -> None:
        wanted = sorted(v.name for v in model.graph.outputs)
        produced = sorted(v.name for stage in self.stages for v in stage.graph.outputs)
        if len(self.stages) != self.n_stacks or produced != wanted:
            raise postcondition(f"{len(self.stages)} stages computing {produced[:4]}..., not {self.n_stacks} "
                                f"computing the step's outputs {wanted[:4]}... once each")

    def call(self, model: ir.Model) -> SplitResult:
        nodes = list(model.graph)
        tags = {id(n): stack_of(n) for n in nodes}
        found = list(range(self.n_stacks))  # requires() checked the tags
        outputs_of: dict[int, list[ir.Value]] = {k: [] for k in found}
        for out in model.graph.outputs:
            producer = out.producer()
            stack = self.output_owner.get(out.name, tags.get(id(producer)) if producer is not None else None)
            if stack is None:
                raise PassError(
                    f"graph output {out.name!r} is not computed inside any stack",
                    "every output of a StagFormer step must come from one stack",
                )
            outputs_of[stack].append(out)
        for k in found:
            self._check_independent(k, outputs_of[k], tags)
        self.stages = [self._extract(model, k, [v.name for v in outputs_of[k]]) for k in found]
        return SplitResult(model, modified=False, stages=self.stages)

    @staticmethod
    def _slice_inputs(start: list[ir.Value], stop) -> tuple[set[str], list[tuple[ir.Node, ir.Value]]]:
        """Graph inputs reached walking back from `start` (shape-only reads excluded), and the
        (node, value) pairs where `stop(node)` halted the walk."""
        inputs: set[str] = set()
        stopped = []
        seen: set[int] = set()
        work = list(start)
        while work:
            value = work.pop()
            node = value.producer()
            if node is None:
                if not value.is_initializer():
                    inputs.add(value.name)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in SHAPE_ONLY_OPS:
                continue
            if stop(node):
                stopped.append((node, value))
                continue
            work.extend(v for v in node.inputs if v is not None)
        return inputs, stopped

    def _check_independent(self, k: int, outputs: list[ir.Value], tags: dict) -> None:
        """Nothing stack k computes may read another stack's state. A crossing into another
        stack's node that reads only common inputs is fine: stage k recomputes it."""
        foreign = lambda node: tags[id(node)] not in (None, k)  # noqa: E731
        own, crossings = self._slice_inputs(outputs, foreign)
        for name in sorted(own):
            if self.state_owner.get(name, k) != k:
                raise PassError(
                    f"stack {k} reads {name!r}, the state of stack {self.state_owner[name]}",
                    "this is not a staggered step graph; compile with --no-split to keep one graph",
                )
        for node, value in crossings:
            needed, _ = self._slice_inputs(list(node.inputs), lambda n: False)
            theirs = sorted(n for n in needed if self.state_owner.get(n, k) != k)
            if theirs:
                raise PassError(
                    f"stack {k} reads stack {tags[id(node)]}'s output {value.name!r} within the same step "
                    f"(computed from {', '.join(theirs[:3])}), so the stacks cannot run concurrently",
                    "this is not a staggered step graph; compile with --no-split to keep one graph",
                )

    def _extract(self, model: ir.Model, k: int, output_names: list[str]) -> ir.Model:
        """A copy of the model keeping only what computes stack k's outputs.

        Shape-only reads of another stack's state (torch.export takes a symbolic length
        from whichever input carries it first) are moved to stack k's own input of the
        same declared shape where it has one, so the last stage (the one recurrent decoding
        runs alone, while the other caches go stale) never takes another stack's cache.
        """
        copy = ir.from_proto(ir.to_proto(model))
        keep = {v.name: v for v in copy.graph.outputs}
        copy.graph.outputs.clear()
        copy.graph.outputs.extend(keep[name] for name in output_names)
        common.RemoveUnusedNodesPass()(copy)
        inputs = list(copy.graph.inputs)
        own = [v for v in inputs if self.state_owner.get(v.name) == k and v.uses()]
        for value in inputs:
            if self.state_owner.get(value.name, k) == k or not value.uses():
                continue
            twin = next((v for v in own if str(v.shape) == str(value.shape)), None)
            if twin is not None:
                ir.convenience.replace_all_uses_with(value, twin)
            # else: no own input carries that length (stack 0 has no cross cache); the read
            # stays, harmless because every cache exists before a concurrent step starts
        for value in [v for v in copy.graph.inputs if not v.uses()]:
            copy.graph.inputs.remove(value)
        return copy
