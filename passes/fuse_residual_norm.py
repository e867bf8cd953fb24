"""FuseResidualNormPass: a residual Add and the RMS norm after it become one ONNX Runtime kernel.

In a pre-norm T5 block the residual sum `x = a + b` feeds both the next sublayer's norm
and the next residual Add. ONNX Runtime's own SkipLayerNorm fusion only fires when the
Add has the norm as its single reader, so every T5 sublayer kept a separate Add: 18
extra kernels per t5-small decoder step. This pass writes
`com.microsoft.SkipSimplifiedLayerNormalization(a, b, weight)` directly, whose fourth
output is the sum itself, so the other readers of `x` take it from there.

It matches the exporter's RMS norm (models/nash_modules.py `Norm`):
    weight * (x / Sqrt(ReduceMean(Pow(x, 2), last axis) + eps)),  x = Add(a, b)
with a and b both computed (not constants: a cut sublayer leaves `x + bias`, which the
kernel's skip input would not broadcast). Anything else is left alone.
Requires: nothing. Ensures: the same outputs, one kernel fewer per fused pair.
ONNX Runtime targets only.
"""

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from .fuse_attention import MS_DOMAIN, take_over
from .strip_pruned import sole_consumer


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor.numpy() if tensor is not None else None


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    if len(node.inputs) != 2:
        return None
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


class FuseResidualNormPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        fused = sum(self._fuse(graph, node) for node in list(graph) if node.op_type == "Pow")
        if fused:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(fused))

    def _fuse(self, graph: ir.Graph, power: ir.Node) -> bool:
        x = power.inputs[0]
        exponent = _constant(power.inputs[1])
        if exponent is None or exponent.size != 1 or float(exponent) != 2.0:
            return False
        mean = sole_consumer(power.outputs[0], "ReduceMean")
        plus_eps = sole_consumer(mean.outputs[0], "Add") if mean else None
        sqrt = sole_consumer(plus_eps.outputs[0], "Sqrt") if plus_eps else None
        div = sole_consumer(sqrt.outputs[0], "Div") if sqrt else None
        scale = sole_consumer(div.outputs[0], "Mul") if div else None
        if scale is None or div.inputs[0] is not x or not self._last_axis_mean(mean, x):
            return False
        eps = _constant(_other_input(plus_eps, mean.outputs[0]))
        weight = _other_input(scale, div.outputs[0])
        residual = x.producer()
        if eps is None or eps.size != 1 or _constant(weight) is None or residual is None:
            return False
        if residual.op_type != "Add" or any(
            v is None or _constant(v) is not None for v in residual.inputs
        ):
            return False
        fused = ir.node(
            "SkipSimplifiedLayerNormalization", [residual.inputs[0], residual.inputs[1], weight],
            attributes={"epsilon": float(eps)}, domain=MS_DOMAIN, num_outputs=4,
            name=f"{residual.name or x.name}.skip_norm",
        )
        normed, mean_out, inv_std, total = fused.outputs
        mean_out.name, inv_std.name = "", ""  # optional outputs left unset
        graph.insert_after(residual, fused)
        take_over(graph, scale.outputs[0], normed)
        take_over(graph, x, total)
        return True

    @staticmethod
    def _last_axis_mean(mean: ir.Node, x: ir.Value) -> bool:
        """ReduceMean over the last axis only, keeping it (opset 18 axes input or attribute)."""
        keep = mean.attributes.get("keepdims")
        if keep is not None and keep.as_int() != 1:
            return False
        if len(mean.inputs) > 1:
            axes = _constant(mean.inputs[1])
        else:
            attr = mean.attributes.get("axes")
            axes = np.array(attr.as_ints()) if attr is not None else None
        if axes is None or axes.size != 1:
            return False
        axis = int(axes.reshape(-1)[0])
        rank = len(x.shape) if x.shape is not None else None
        return axis == -1 or (rank is not None and axis == rank - 1)
