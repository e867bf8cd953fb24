"""FoldWeightOnlyPass: what a graph computes from weights alone, with a small result, becomes a constant.

The exporter's constant folder (onnxscript) declines two things a decode step is full of:
nodes with a weight-sized input (its input size limit) and LayerNormalization (its
evaluator returns three outputs where the node has one). So StagFormer's null memory
slot, a learned vector that every step normalised and projected through each
cross-attention's key and value weights (2 weight MatMuls, a norm and 6 small kernels
per cross layer, for a constant), was recomputed on every token.

This pass evaluates, once, every node whose inputs are all constants and whose outputs
are small (at most `max_elements` each, so no weight is ever duplicated, transposed or
cast into a second copy), in graph order so chains fold in one sweep.
Requires: a default-domain opset import (the evaluator runs the nodes at it); static
output shapes on the nodes to fold (the exporter records them; others are left).
Ensures: the same interface, fewer kernels, the same outputs (evaluated in fp32 by ONNX's
reference evaluator), and weights read only where an activation needs them.
"""

import math

import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from .contracts import ContractPass, precondition
from .fuse_attention import take_over
from .strip_pruned import remove_unused

MAX_ELEMENTS = 4096


def _small(value: ir.Value, limit: int) -> bool:
    shape = value.shape
    return shape is not None and shape.is_static() and math.prod(shape.numpy()) <= limit


def _evaluate(node: ir.Node, opset: int) -> list[np.ndarray]:
    proto = ir.serde.serialize_node(node)
    feeds = {v.name: v.const_value.numpy() for v in node.inputs if v is not None}
    evaluator = ReferenceEvaluator(proto, opsets={"": opset})
    return evaluator.run(None, feeds)[: len(node.outputs)]


class FoldWeightOnlyPass(ContractPass):
    def __init__(self, max_elements: int = MAX_ELEMENTS):
        super().__init__()
        self.max_elements = max_elements

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        if "" not in model.opset_imports:
            raise precondition("the graph imports no default-domain opset", "export the graph with edgeseq")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = model.opset_imports[""]
        folded = 0
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or not node.inputs or node.op_type in ("If", "Loop", "Scan"):
                continue
            if any(v is None or v.const_value is None or v.is_graph_input() for v in node.inputs):
                continue
            if not all(_small(out, self.max_elements) for out in node.outputs):
                continue
            try:
                results = _evaluate(node, opset)
            except Exception:  # an op the reference evaluator lacks: left to run as before
                continue
            for out, array in zip(node.outputs, results):
                constant = ir.Value(name=f"{out.name}.folded", shape=out.shape, type=out.type,
                                    const_value=ir.tensor(np.asarray(array, dtype=out.dtype.numpy())))
                graph.register_initializer(constant)
                take_over(graph, out, constant)
            folded += 1
        self.count(folded)
        if folded:
            remove_unused(model)  # and the weights only the folded nodes read
        return ir.passes.PassResult(model, bool(folded))
