"""FuseResidualNormPass: a residual Add and the norm after it become one ONNX Runtime kernel.

In a pre-norm block the residual sum `x = a + b` feeds both the next sublayer's norm and
the next residual Add. ONNX Runtime's own SkipLayerNorm fusion only fires when the Add
has the norm as its single reader, so every pre-norm sublayer kept a separate Add (18
extra kernels per t5-small decoder step, 8 per RED `small` step). This pass writes the
skip kernel directly, whose fourth output is the sum itself, so the other readers of
`x` take it from there:
- the exporter's RMS norm (models/nash_modules.py `Norm`, T5),
      weight * (x / Sqrt(ReduceMean(Pow(x, 2), last axis) + eps))
  -> `com.microsoft.SkipSimplifiedLayerNormalization(a, b, weight)`;
- `LayerNormalization(x, weight, bias)` over the last axis (RED, StagFormer, PASTA, BART)
  -> `com.microsoft.SkipLayerNormalization(a, b, weight, bias)`;
the LayerNormalization form in a decode step only (roles decoder_step, step, stage): ONNX
Runtime's CPU SkipLayerNormalization costs about 0.9 us per row against 0.15 for Add +
LayerNormalization (ORT 1.32, [5120, 128]: 4.8 ms against 0.99), so one kernel fewer wins
over a step's B rows and loses over an encoder's or prefill's B x S (the demo's batch-256
encoder spent 15 of its 70 ms in three of them); the RMS form costs the same either way;
with x = Add(a, b), a and b both computed and of one shape (not constants: a cut
sublayer leaves `x + bias`, which the kernel's skip input would not broadcast). When a
(or b) is itself y + a bias vector read by nothing else (a projection's bias), the
kernel takes the bias as its bias input: one kernel fewer again.
Anything else is left alone, with the reason (`compile --explain`).
Requires: the com.microsoft domain, if imported, at version 1 (the skip kernels' domain).
Ensures: the same interface; each skip kernel's input and skip of one rank (2 or 3).
ONNX Runtime targets only.
"""

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from edgeseq.graph_spec import STEP_ROLES

from .contracts import ContractPass, postcondition, precondition
from .fuse_attention import MS_DOMAIN, take_over
from .strip_pruned import sole_consumer


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor.numpy() if tensor is not None else None


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    if len(node.inputs) != 2:
        return None
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


SKIP_KERNELS = ("SkipSimplifiedLayerNormalization", "SkipLayerNormalization")


class FuseResidualNormPass(ContractPass):
    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        version = model.opset_imports.get(MS_DOMAIN)
        if version not in (None, 1):
            raise precondition(f"the graph imports {MS_DOMAIN} at version {version}; the skip kernels are version 1",
                               "export the graph with edgeseq")

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        for node in model.graph:
            if node.op_type in SKIP_KERNELS and node.domain == MS_DOMAIN:
                a, b = node.inputs[0].shape, node.inputs[1].shape
                if a is not None and b is not None and (len(a) != len(b) or len(a) not in (2, 3)):
                    raise postcondition(f"{node.name}: input of rank {len(a)} and skip of rank {len(b)}; the kernel "
                                        "takes two [B, S, D] (or [T, D]) tensors")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        fused = sum(self._fuse(graph, node) for node in list(graph) if node.op_type == "Pow")
        fused += sum(self._fuse_layer_norm(graph, node) for node in list(graph) if node.op_type == "LayerNormalization")
        self.count(fused)
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
        if scale is None or div.inputs[0] is not x:
            return self.decline(power, "not an RMS norm: Pow(x, 2) is not read by ReduceMean -> Add(eps) -> Sqrt -> "
                                       "Div(x, .) -> Mul(weight), each the only reader")
        if not self._last_axis_mean(mean, x):
            return self.decline(power, "the mean is not over the last axis only")
        eps = _constant(_other_input(plus_eps, mean.outputs[0]))
        weight = _other_input(scale, div.outputs[0])
        if eps is None or eps.size != 1 or _constant(weight) is None:
            return self.decline(power, "epsilon or the norm's weight is not a constant")
        return self._skip_norm(graph, x, scale.outputs[0], "SkipSimplifiedLayerNormalization", [weight], float(eps), power)

    def _fuse_layer_norm(self, graph: ir.Graph, norm: ir.Node) -> bool:
        if self.graph_role and self.graph_role not in STEP_ROLES:
            return self.decline(norm, f"the {self.graph_role} graph runs it over every prompt token, where Add + "
                                      "LayerNormalization is faster than the skip kernel")
        x, weight = norm.inputs[0], norm.inputs[1]
        bias = norm.inputs[2] if len(norm.inputs) > 2 else None
        axis = norm.attributes.get("axis")
        rank = len(x.shape) if x.shape is not None else None
        if axis is not None and axis.as_int() != -1 and (rank is None or axis.as_int() != rank - 1):
            return self.decline(norm, "it does not normalise over the last axis")
        if len(norm.outputs) > 1 and any(o.uses() for o in norm.outputs[1:]):
            return self.decline(norm, "its mean or inverse deviation output is in use")
        if _constant(weight) is None or (bias is not None and _constant(bias) is None):
            return self.decline(norm, "its weight or bias is not a constant")
        eps = norm.attributes.get("epsilon")
        return self._skip_norm(graph, x, norm.outputs[0], "SkipLayerNormalization",
                               [weight] + ([bias] if bias is not None else []), eps.as_float() if eps else 1e-5, norm)

    def _skip_norm(self, graph, x, normed_out, op, params, eps, node) -> bool:
        why_not = _write_skip_norm(graph, x, normed_out, op, params, eps)
        return True if why_not is None else self.decline(node, why_not)

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


def _bias_added(value: ir.Value) -> tuple[ir.Value, list[ir.Value]] | None:
    """(y, [bias]) when `value` = y + a constant bias vector and the residual alone reads it
    (a projection's bias before the residual Add): the skip kernel adds it itself."""
    add = value.producer()
    if add is None or add.op_type != "Add" or len(value.uses()) != 1 or value.is_graph_output():
        return None
    first, second = add.inputs
    for y, bias in ((first, second), (second, first)):
        vector = _constant(bias)
        if vector is not None and _constant(y) is None and vector.ndim == 1 and vector.dtype == np.float32 and (
            value.shape is not None and value.shape[-1] == vector.shape[0]
        ):
            return y, [bias]
    return None


def _write_skip_norm(graph: ir.Graph, x: ir.Value, normed_out: ir.Value, op: str, params: list,
                     eps: float) -> str | None:
    """Replace `normed_out = norm(x)`, x = Add(a, b), by op(a, b, *params), whose fourth
    output takes over x for its other readers. None when done, else why not."""
    residual = x.producer()
    if residual is None or residual.op_type != "Add":
        return "its input is not a residual Add"
    if any(v is None or _constant(v) is not None for v in residual.inputs):
        return "its residual Add adds a constant (a cut sublayer's bias), which the skip input would not broadcast"
    a, b = residual.inputs
    if a.shape is not None and b.shape is not None and (len(a.shape) != len(b.shape) or len(a.shape) not in (2, 3)):
        return "the residual's operands are not two [B, S, D] (or [T, D]) tensors"  # what the kernel takes
    bias = []
    unbiased = _bias_added(a)
    if unbiased is not None:
        a, bias = unbiased
    elif (unbiased := _bias_added(b)) is not None:
        b, bias = unbiased
    if bias and op == "SkipLayerNormalization" and len(params) == 1:
        params = [*params, None]  # the bias is the fifth input, after an absent beta
    fused = ir.node(op, [a, b, *params, *bias], attributes={"epsilon": eps}, domain=MS_DOMAIN, num_outputs=4,
                    name=f"{residual.name or x.name}.skip_norm")
    normed, mean_out, inv_std, total = fused.outputs
    mean_out.name, inv_std.name = "", ""  # optional outputs left unset
    graph.insert_after(residual, fused)
    take_over(graph, normed_out, normed)
    take_over(graph, x, total)
    return None
