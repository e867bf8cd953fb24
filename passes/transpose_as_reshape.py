"""TransposeAsReshapePass: a Transpose that only moves axes of size 1 becomes a Reshape.

A decode step carries one new token per row, so splitting heads ([B, 1, H, Dh] ->
[B, H, 1, Dh]) and merging them back are Transposes that move data nowhere: the bytes
are already in the output's order. ONNX Runtime still runs each as a copy kernel; a
Reshape of the same tensor is an alias of its input, and merges with the Reshape that
split the heads. At batch 1 a step runs four such Transposes per attention.

A Transpose qualifies when its input's rank and sizes are known, the axes that are not
statically 1 keep their relative order, and at most one dim is not a known integer (it
becomes the target's -1). Then any Reshape of a Reshape becomes one.
Requires: the graph's inputs have shapes (the exporter records every value's). Ensures:
the same interface, and no Transpose left that could be a Reshape.
"""

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from .contracts import ContractPass, postcondition, precondition
from .fuse_attention import take_over
from .strip_pruned import add_initializer


def _reshape_target(shape: ir.Shape, perm: list[int]) -> list[int] | None:
    """The Reshape target equal to Transpose(perm) of a tensor of `shape`, or None. One
    dim that is not a known integer (the batch) becomes -1."""
    dims = list(shape)
    moved = [axis for axis in perm if dims[axis] != 1]
    if moved != sorted(moved) or sum(not isinstance(d, int) for d in dims) > 1:
        return None  # data would move, or the target cannot be written without the input
    return [dims[axis] if isinstance(dims[axis], int) else -1 for axis in perm]


def _merge_reshapes(graph: ir.Graph) -> int:
    """A Reshape of a Reshape's output, to a target without 0s (which would copy a dim of
    its own input), reads the first Reshape's input instead: one kernel fewer."""
    merged = 0
    for node in graph:
        if node.op_type != "Reshape" or node.attributes.get_int("allowzero", 0):
            continue
        target = ir.convenience.get_const_tensor(node.inputs[1])
        inner = node.inputs[0].producer()
        if target is None or 0 in target.numpy().tolist() or inner is None or inner.op_type != "Reshape":
            continue
        node.replace_input_with(0, inner.inputs[0])
        merged += 1
    return merged


def _transposes(graph: ir.Graph):
    return [n for n in graph if n.op_type == "Transpose" and n.domain in ("", "ai.onnx")]


def _as_reshape(node: ir.Node) -> tuple[list[int] | None, str]:
    """(the Reshape target this Transpose equals, or None and why not)."""
    shape = node.inputs[0].shape
    perm = node.attributes.get("perm")
    if shape is None or perm is None or len(perm.as_ints()) != len(shape):
        return None, "its input's rank is unknown"
    target = _reshape_target(shape, list(perm.as_ints()))
    return target, "" if target else f"it moves data (perm {list(perm.as_ints())} of shape {shape})"


class TransposeAsReshapePass(ContractPass):
    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        unshaped = [v.name for v in model.graph.inputs if v.shape is None]
        if unshaped:
            raise precondition(f"graph inputs without a shape: {', '.join(unshaped[:3])}",
                               "export the graph with edgeseq (the exporter records every value's shape)")

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        left = [n.name for n in _transposes(model.graph) if _as_reshape(n)[0] is not None]
        if left:
            raise postcondition(f"Transposes that move no data are left: {', '.join(left[:3])}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        changed = 0
        for node in _transposes(graph):
            target, why_not = _as_reshape(node)
            if target is None:
                self.decline(node, why_not)
                continue
            target_value = add_initializer(graph, f"{node.name or 'transpose'}.as_reshape.{changed}",
                                           np.array(target, dtype=np.int64))
            reshape = ir.node("Reshape", [node.inputs[0], target_value], name=f"{node.name}.as_reshape")
            graph.insert_after(node, reshape)
            reshape.outputs[0].shape, reshape.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
            take_over(graph, node.outputs[0], reshape.outputs[0])
            graph.remove(node, safe=True)
            changed += 1
        changed += _merge_reshapes(graph)
        self.count(changed)
        if changed:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(changed))
