"""PackProjectionsPass: the projections that read one activation become one MatMul.

An attention layer projects its normed input three times (query, key, value), each a
MatMul by its own weight and, in RED/StagFormer/BART, an Add of its bias: six kernels
per layer, each reading its input again. This pass writes one MatMul by the weights
concatenated along their output axis, one Add of the concatenated biases, and a Split
that hands each former reader its part: three kernels, the same weight bytes, and under
`--precision int8` one activation quantization instead of three.

Packs are in weight-name order, so graphs sharing weights share their packs too; a group
is packed only where every graph reading its weights packs the same group (`allowed`,
from `shareable_groups`): packing a weight another graph reads unpacked, or in another
group, would store it twice (RED's encoder and decoder step share their layers).
Grouped: MatMuls whose left input is the same value and whose right input is a constant
2-D float weight read by nothing else (a weight shared with another node stays where it
is: packing would copy it). A member's bias is taken along only when every member has
a constant 1-D one; otherwise biases stay as they were, after the Split.
Requires: opset 13 or later (Split takes its sizes as an input from 13). Ensures: the
same interface and no more weight entries than before (a pack moves weights, never copies
them). ONNX Runtime targets only (ONNX's Split with sizes is standard; the gain is in
launch overhead).
"""

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from .contracts import ContractPass, postcondition, precondition
from .fuse_attention import take_over
from .strip_pruned import add_initializer, bias_add, remove_unused


def _weight(node: ir.Node) -> np.ndarray | None:
    if node.op_type != "MatMul" or len(node.inputs) != 2:
        return None
    value = node.inputs[1]
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT or len(value.uses()) != 1:
        return None
    return tensor.numpy()


def _bias(node: ir.Node) -> tuple[ir.Node, np.ndarray] | None:
    """The Add of a constant 1-D bias that alone reads this MatMul's output, if any."""
    found = bias_add(node.outputs[0], node.inputs[1].shape[1])
    return (found[0], found[1].const_value.numpy()) if found else None


def _groups(graph: ir.Graph) -> list[list[tuple[ir.Node, np.ndarray]]]:
    """The packable groups of a graph, each in weight-name order."""
    by_input: dict[int, list[tuple[ir.Node, np.ndarray]]] = defaultdict(list)
    for node in graph:
        weight = _weight(node)
        if weight is not None:
            by_input[id(node.inputs[0])].append((node, weight))
    return [sorted(members, key=lambda m: m[0].inputs[1].name or "") for members in by_input.values()
            if len(members) >= 2 and len({w.shape[0] for _, w in members}) == 1]


def _names(members: list[tuple[ir.Node, np.ndarray]]) -> tuple[str, ...]:
    return tuple(n.inputs[1].name or "" for n, _ in members)


def shareable_groups(models: list[ir.Model]) -> set[tuple[str, ...]]:
    """The groups (weight names) that every graph reading any of their weights packs alike."""
    groups = [{_names(m) for m in _groups(model.graph)} for model in models]
    readers = [set(model.graph.initializers) for model in models]
    return {group for packs in groups for group in packs
            if all(group in groups[i] for i, names in enumerate(readers) if names & set(group))}


def weight_entries(model: ir.Model) -> int:
    """Entries of the graph's float weight matrices."""
    return sum(int(np.prod(v.const_value.shape.numpy())) for v in model.graph.initializers.values()
               if v.const_value is not None and len(v.const_value.shape) == 2 and v.const_value.dtype == ir.DataType.FLOAT)


class PackProjectionsPass(ContractPass):
    def __init__(self, allowed: set[tuple[str, ...]] | None = None):
        super().__init__()
        self.allowed = allowed  # None: every group (a graph on its own)
        self._entries: dict[int, int] = {}

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        opset = model.opset_imports.get("", 0)
        if opset < 13:
            raise precondition(f"the graph is at opset {opset}; the packs' Split takes its sizes as an input from opset 13",
                               "export the graph with edgeseq (opset 18)")
        self._entries[id(model)] = weight_entries(model)

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        before, after = self._entries.pop(id(model), None), weight_entries(model)
        if before is not None and after > before:
            raise postcondition(f"packing grew the weights from {before} to {after} entries (a pack copied a weight)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        packed = 0
        for members in _groups(graph):
            if self.allowed is None or _names(members) in self.allowed:
                self._pack(graph, members, packed)
                packed += 1
            else:
                self.decline(members[0][0], f"its weights ({', '.join(_names(members))}) are read by another graph "
                                            "that does not pack them alike; packing would store them twice")
        self.count(packed)
        if packed:
            remove_unused(model)
        return ir.passes.PassResult(model, bool(packed))

    @staticmethod
    def _pack(graph: ir.Graph, members: list[tuple[ir.Node, np.ndarray]], index: int) -> None:
        nodes = [n for n, _ in members]
        name = nodes[0].inputs[1].name or f"packed{index}"
        biases = [_bias(n) for n in nodes]
        with_bias = all(b is not None for b in biases)
        weight = add_initializer(graph, f"{name}.packed", np.concatenate([w for _, w in members], axis=1))
        sizes = add_initializer(graph, f"{name}.packed_sizes", np.array([w.shape[1] for _, w in members], dtype=np.int64))
        new = [ir.node("MatMul", [nodes[0].inputs[0], weight], name=f"{name}.packed_matmul")]
        if with_bias:
            bias = add_initializer(graph, f"{name}.packed_bias", np.concatenate([b for _, b in biases]).astype(np.float32))
            new.append(ir.node("Add", [new[-1].outputs[0], bias], name=f"{name}.packed_bias_add"))
        split = ir.node("Split", [new[-1].outputs[0], sizes], attributes={"axis": -1}, num_outputs=len(nodes),
                        name=f"{name}.packed_split")
        new.append(split)
        first = min(nodes, key=lambda n: list(graph).index(n))
        graph.insert_before(first, new)
        for i, node in enumerate(nodes):
            take_over(graph, biases[i][0].outputs[0] if with_bias else node.outputs[0], split.outputs[i])
