"""QuantizeWeightsPass: MatMuls by a weight matrix read int8 weights (`compile --precision int8`).

At batch 1 a CPU decode step is bound by the weight bytes it reads; int8 weights read a
quarter of fp32's. benchmarks/int8_kernels.py measured the candidates on an AVX2 CPU without VNNI
(t5-small step weights, 2 threads, results/int8_kernels.json): dynamic quantization (the
activation quantized per call, int8 weights with one scale per output column,
MatMulInteger) ran 3.1x fp32 at batch 1 and 2.5x at batch 8; MatMulNBits 8-bit ran
0.05-0.09x with fp32 activations (no fast path for it here) and, computing in int8
(accuracy_level 4, block 128), 3.0x at batch 1 but 1.3x at batch 8, with blockwise scales
and a smaller error on that synthetic chain. This pass writes the dynamic kernel, which
keeps batched steps fast: `com.microsoft.DynamicQuantizeMatMul(A, B_int8, b_scale[N],
b_zero_point[N], bias[N])` (a bias Add after the MatMul joins the kernel); its per-column
scales meet every family's declared int8 bounds (edgeseq/quality.py; figures in
benchmarks/results/int8-quality.json).

Only MatMuls whose right operand is a constant 2-D float matrix with at least
`min_elements` entries are rewritten (projections, FFNs, the LM head); norms, softmax,
attention over the caches and position biases stay fp32. Symmetric per-column scales
(zero points 0), full 8 bits stored (see WEIGHT_MAX; 7 at load on CPUs that need it). A weight read by several MatMuls is quantized once and stays shared.
A family may keep named weights fp32 (`keep_fp32`, fragments of the weight's name).
Requires: no int8 MatMul in the graph yet (the pass runs once). Ensures: the same
interface, and no fp32 weight MatMul left that qualifies (outputs within int8 rounding:
the compile's parity check). ONNX Runtime CPU only; `compile --precision int8` runs it last.
"""

import numpy as np
import onnx_ir as ir

from .contracts import ContractPass, postcondition, precondition
from .fuse_attention import MS_DOMAIN, take_over
from .strip_pruned import add_initializer, bias_add, remove_unused

MIN_ELEMENTS = 1024


# Full 8-bit weights are stored. A CPU without a dot-product instruction (AVX-512 VNNI,
# AVX-VNNI, ARM dot product) sums pairs of u8 x s8 products in int16 in ONNX Runtime's
# kernel, where 255 * 127 * 2 overflows (an all-ones MatMul came out at half its value on
# an AVX2-only CPU): there the runtime requantizes the weights to 7 bits once, at load
# (runtimes/cpu_features.py, runtimes/ort_backend.py)
WEIGHT_MAX = 127
STORED_BITS = 8


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights in [-WEIGHT_MAX, WEIGHT_MAX] and one fp32 scale per output column (w ~ q * scale)."""
    scale = np.abs(weight).max(axis=0) / WEIGHT_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero column keeps scale 1
    return np.clip(np.rint(weight / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8), scale


def _bias_after(matmul: ir.Node, columns: int) -> tuple[ir.Node | None, list[ir.Value]]:
    """The Add of a float bias [columns] that alone reads the MatMul's output, and that
    bias: the kernel adds it itself (one kernel fewer per projection)."""
    found = bias_add(matmul.outputs[0], columns)
    if found is None or found[1].const_value.dtype != ir.DataType.FLOAT:
        return None, []
    return found[0], [found[1]]


def _float_weight(node: ir.Node) -> tuple[ir.Value, ir.TensorProtocol] | None:
    """(weight, tensor) of a MatMul by a constant 2-D float matrix, else None."""
    weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) == 2 else None
    tensor = ir.convenience.get_const_tensor(weight) if weight is not None else None
    if tensor is None or len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT:
        return None
    return weight, tensor


class QuantizeWeightsPass(ContractPass):
    def __init__(self, min_elements: int = MIN_ELEMENTS, keep_fp32: tuple[str, ...] = ()):
        super().__init__()
        self.min_elements = min_elements
        self.keep_fp32 = keep_fp32

    def why_kept(self, weight: ir.Value, tensor) -> str | None:
        """Why a float weight matrix stays fp32, or None when it is quantized."""
        entries = int(np.prod(tensor.shape.numpy()))
        if entries < self.min_elements:
            return f"{weight.name} has {entries} entries, under {self.min_elements}: int8 would not pay"
        fragment = next((f for f in self.keep_fp32 if f in (weight.name or "")), None)
        return f"the family keeps weights named *{fragment}* fp32 (its int8 bounds)" if fragment else None

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        done = [n.name for n in model.graph if n.op_type == "DynamicQuantizeMatMul"]
        if done:
            raise precondition(f"the graph has int8 MatMuls already ({', '.join(done[:3])}); the pass runs once",
                               "quantize the fp32 graph")

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        left = [n.name for n in model.graph if (w := _float_weight(n)) is not None and self.why_kept(*w) is None]
        if left:
            raise postcondition(f"fp32 weight MatMuls left that qualify for int8: {', '.join(left[:3])}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        shared: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}  # weight value id -> its int8 inputs
        changed = 0
        for node in list(graph):
            found = _float_weight(node)
            if found is None:
                continue
            weight, tensor = found
            why_kept = self.why_kept(weight, tensor)
            if why_kept:
                self.decline(node, why_kept)
                continue
            if id(weight) not in shared:
                shared[id(weight)] = self._initializers(graph, weight.name or f"w{changed}", tensor.numpy())
            bias_add, bias = _bias_after(node, tensor.shape[1])
            quantized = ir.node("DynamicQuantizeMatMul", [node.inputs[0], *shared[id(weight)], *bias], domain=MS_DOMAIN,
                                name=f"{node.name or weight.name}.int8")
            graph.insert_after(bias_add or node, quantized)
            take_over(graph, (bias_add or node).outputs[0], quantized.outputs[0])
            changed += 1
        self.count(changed)
        if changed:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            remove_unused(model)  # the fp32 weights, now int8
        return ir.passes.PassResult(model, bool(changed))

    @staticmethod
    def _initializers(graph: ir.Graph, name: str, weight: np.ndarray) -> tuple[ir.Value, ir.Value, ir.Value]:
        q, scale = quantize_columns(weight)
        return tuple(add_initializer(graph, f"{name}.{suffix}", array)
                     for suffix, array in (("int8", q), ("scale", scale), ("zero_point", np.zeros_like(q[0]))))
