"""SplitStagesPass: cut one StagFormer decode step into one subgraph per stack.

The exporter tags every node with the module it came from (`pkg.torch.onnx.name_scopes`);
a node belongs to stack k when its outermost scope is `...stacks.k`. Untagged nodes
(the token embedding lookup, shape and mask arithmetic) are replicated into every stage
that needs them. A graph input belongs to stack k when only stack k's nodes read it (its caches, its
memory handoff); inputs every stack reads (token ids, positions, mask) are common.

The pass proves the stacks are independent within the step: nothing stack k computes
may depend on an input that belongs to another stack. A node tagged with another stack
but computed from common inputs alone is recomputed in stage k (the exporter's CSE
merges e.g. the identical first-layer projections of shared-weight stacks). A graph
where one stack reads another stack's output of the same step is refused, naming the
value that crosses.
"""

import ast
import re
from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes import common

from edgeseq.errors import PassError

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
    """Requires: a single-step graph exported with name scopes, `n_stacks` stacks tagged.
    Ensures: `stages[k]` computes exactly the graph outputs stack k produces, from the
    graph inputs it reads; no stage computes another stack's nodes."""

    # the input model is returned untouched; the stages are new models beside it
    in_place = True
    changes_input = False

    def __init__(self, n_stacks: int):
        super().__init__()
        self.n_stacks = n_stacks

    def call(self, model: ir.Model) -> SplitResult:
        nodes = list(model.graph)
        tags = {id(n): stack_of(n) for n in nodes}
        found = sorted({t for t in tags.values() if t is not None})
        if not found:
            raise PassError(
                "the graph is not a StagFormer step: no node carries a `stacks.k` name scope",
                "split only the `step` graph that the StagFormer exporter traces (with its metadata kept)",
            )
        if found != list(range(self.n_stacks)):
            raise PassError(
                f"the graph has stacks {found} but the config says n_stacks={self.n_stacks}",
                "compile the checkpoint this graph was exported from, or fix n_stacks in its config.json",
            )
        outputs_of: dict[int, list[ir.Value]] = {k: [] for k in found}
        for out in model.graph.outputs:
            producer = out.producer()
            stack = tags.get(id(producer)) if producer is not None else None
            if stack is None:
                raise PassError(
                    f"graph output {out.name!r} is not computed inside any stack",
                    "every output of a StagFormer step must come from one stack",
                )
            outputs_of[stack].append(out)
        owner = self._input_owners(model, tags)
        depends = self._dependencies(nodes, owner)
        for k in found:
            self._check_independent(k, outputs_of[k], tags, depends)
        stages = [self._extract(model, [v.name for v in outputs_of[k]]) for k in found]
        return SplitResult(model, modified=False, stages=stages)

    @staticmethod
    def _input_owners(model: ir.Model, tags: dict) -> dict[str, int]:
        """Graph inputs read by exactly one stack's nodes (and no untagged node) -> that stack."""
        owner = {}
        for value in model.graph.inputs:
            readers = {tags[id(node)] for node, _ in value.uses() if node.op_type not in SHAPE_ONLY_OPS}
            if len(readers) == 1 and None not in readers:
                owner[value.name] = readers.pop()
        return owner

    @staticmethod
    def _dependencies(nodes: list[ir.Node], owner: dict[str, int]) -> dict[str, frozenset[int]]:
        """For every value, the stacks whose own inputs it depends on (nodes are in topological order)."""
        deps: dict[str, frozenset[int]] = {name: frozenset([k]) for name, k in owner.items()}
        for node in nodes:
            if node.op_type in SHAPE_ONLY_OPS:
                continue
            acc = frozenset().union(*(deps.get(v.name, frozenset()) for v in node.inputs if v is not None))
            for out in node.outputs:
                deps[out.name] = acc
        return deps

    def _check_independent(self, k: int, outputs: list[ir.Value], tags: dict, depends: dict) -> None:
        """Walk back from stack k's outputs; a value from another stack's node that depends on
        another stack's own inputs is a same-step dependency."""
        seen: set[int] = set()
        work = list(outputs)
        while work:
            value = work.pop()
            node = value.producer()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            other = tags[id(node)]
            foreign = depends.get(value.name, frozenset()) - {k}
            if other is not None and other != k and foreign:
                raise PassError(
                    f"stack {k} reads stack {other}'s output {value.name!r} within the same step, "
                    "so the stacks cannot run concurrently",
                    "this is not a staggered step graph; compile with --no-split to keep one graph",
                )
            work.extend(v for v in node.inputs if v is not None)

    @staticmethod
    def _extract(model: ir.Model, output_names: list[str]) -> ir.Model:
        """A copy of the model keeping only what computes `output_names`."""
        copy = ir.from_proto(ir.to_proto(model))
        keep = {v.name: v for v in copy.graph.outputs}
        copy.graph.outputs.clear()
        copy.graph.outputs.extend(keep[name] for name in output_names)
        common.RemoveUnusedNodesPass()(copy)
        unused_inputs = [v for v in copy.graph.inputs if not v.uses()]
        for v in unused_inputs:
            copy.graph.inputs.remove(v)
        return copy
