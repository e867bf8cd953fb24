"""Which ONNX Runtime kernel reads a decode step's KV cache fastest on the CPU it runs on.

One decode step of RED `small` at position 1024 (4 layers, 4 heads of 64, batch 1) is
rebuilt as a bare ONNX graph in three forms of its cached attention, each layer preceded
by a weight MatMul of the layer's real size so that the cache is read cold, as in a step:

- `fused_transB`: what edgeseq's step graphs run today: q·Kᵀ as FusedMatMul(transB) over
  a [B, H, C, Dh] key cache (ONNX Runtime fuses the exported Transpose + MatMul + scale),
  then probs·V as MatMul;
- `keys_transposed`: the key cache stored as [B, H, Dh, C], so q·K is a plain MatMul;
- `group_query_attention`: com.microsoft.GroupQueryAttention with past and present bound to
  one buffer (IOBinding), which also writes the new key and value into the cache in place.

A weights-only graph is timed in the same rounds; each variant's attention cost is its
time minus that. Rounds rotate the order; best of `repeats` within a round, median over
rounds. Writes benchmarks/results/attention_kernels.json.

    python benchmarks/attention_kernels.py
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

LAYERS, HEADS, HEAD_DIM, D_MODEL = 4, 4, 64, 256
WEIGHT_COLUMNS = 3328  # 256 x 3328 x 4 B = 3.4 MB: RED small's weight bytes per layer
OUT = Path(__file__).parent / "results" / "attention_kernels.json"


def _value(name, dims, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, dims)


def build(variant: str, capacity: int):
    """The graph of one variant ("weights_only" has no attention at all)."""
    nodes, inputs, outputs = [], [_value("x", [1, 1, D_MODEL])], []
    for layer in range(LAYERS):
        inputs.append(_value(f"w{layer}", [D_MODEL, WEIGHT_COLUMNS]))
        nodes.append(helper.make_node("MatMul", ["x", f"w{layer}"], [f"h{layer}"]))
        outputs.append(_value(f"h{layer}", None))
        if variant == "weights_only":
            continue
        if variant == "group_query_attention":
            inputs += [_value(f"past_key{layer}", [1, HEADS, capacity, HEAD_DIM]),
                       _value(f"past_value{layer}", [1, HEADS, capacity, HEAD_DIM])]
            nodes.append(helper.make_node(
                "GroupQueryAttention", ["x", "x", "x", f"past_key{layer}", f"past_value{layer}", "seqlens_k", "total"],
                [f"o{layer}", f"present_key{layer}", f"present_value{layer}"], domain="com.microsoft",
                num_heads=HEADS, kv_num_heads=HEADS))
            outputs += [_value(f"present_key{layer}", [1, HEADS, capacity, HEAD_DIM]),
                        _value(f"present_value{layer}", [1, HEADS, capacity, HEAD_DIM])]
        else:
            transposed = variant == "keys_transposed"
            key_dims = [1, HEADS, HEAD_DIM, capacity] if transposed else [1, HEADS, capacity, HEAD_DIM]
            inputs += [_value(f"key{layer}", key_dims), _value(f"value{layer}", [1, HEADS, capacity, HEAD_DIM])]
            if transposed:
                nodes.append(helper.make_node("MatMul", ["q", f"key{layer}"], [f"s{layer}"]))
            else:
                nodes.append(helper.make_node("FusedMatMul", ["q", f"key{layer}"], [f"s{layer}"],
                                              domain="com.microsoft", transB=1, alpha=HEAD_DIM ** -0.5))
            nodes.append(helper.make_node("Softmax", [f"s{layer}"], [f"p{layer}"], axis=-1))
            nodes.append(helper.make_node("MatMul", [f"p{layer}", f"value{layer}"], [f"o{layer}"]))
        outputs.append(_value(f"o{layer}", None))
    if variant in ("fused_transB", "keys_transposed"):
        inputs.append(_value("q", [1, HEADS, 1, HEAD_DIM]))
    if variant == "group_query_attention":
        inputs += [_value("seqlens_k", [1], TensorProto.INT32), _value("total", [], TensorProto.INT32)]
    graph = helper.make_graph(nodes, variant, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def runner(variant: str, capacity: int, rng: np.random.Generator):
    """A no-argument callable running one step of the variant, its buffers bound once."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    session = ort.InferenceSession(build(variant, capacity).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    arrays = []  # kept alive: the binding reads them in place

    def bind(name, array):
        arrays.append(array)
        binding.bind_cpu_input(name, array)

    bind("x", rng.standard_normal((1, 1, D_MODEL), dtype=np.float32))
    for layer in range(LAYERS):
        bind(f"w{layer}", rng.standard_normal((D_MODEL, WEIGHT_COLUMNS), dtype=np.float32))
        binding.bind_output(f"h{layer}")
        if variant == "weights_only":
            continue
        binding.bind_output(f"o{layer}")
        if variant == "group_query_attention":
            for kind in ("key", "value"):
                cache = ort.OrtValue.ortvalue_from_numpy(
                    rng.standard_normal((1, HEADS, capacity, HEAD_DIM), dtype=np.float32))
                arrays.append(cache)
                binding.bind_ortvalue_input(f"past_{kind}{layer}", cache)
                binding.bind_ortvalue_output(f"present_{kind}{layer}", cache)  # shared: updated in place
        else:
            key_shape = (1, HEADS, HEAD_DIM, capacity) if variant == "keys_transposed" else (1, HEADS, capacity, HEAD_DIM)
            bind(f"key{layer}", rng.standard_normal(key_shape, dtype=np.float32))
            bind(f"value{layer}", rng.standard_normal((1, HEADS, capacity, HEAD_DIM), dtype=np.float32))
    if variant in ("fused_transB", "keys_transposed"):
        bind("q", rng.standard_normal((1, HEADS, 1, HEAD_DIM), dtype=np.float32))
    if variant == "group_query_attention":
        # the same slot every call: the step reads capacity - 1 past entries and rewrites the last
        bind("seqlens_k", np.array([capacity - 1], dtype=np.int32))
        bind("total", np.array(capacity, dtype=np.int32))
    return lambda: session.run_with_iobinding(binding)


def best_of(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main(capacity: int = 1024, rounds: int = 7, repeats: int = 30) -> dict:
    variants = ["weights_only", "fused_transB", "keys_transposed", "group_query_attention"]
    rng = np.random.default_rng(0)
    runs = {v: runner(v, capacity, rng) for v in variants}
    for run in runs.values():
        best_of(run, 5)  # warm-up
    times = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            times[v].append(best_of(runs[v], repeats))
    median_ms = {v: 1e3 * statistics.median(t) for v, t in times.items()}
    cache_mb = LAYERS * 2 * HEADS * capacity * HEAD_DIM * 4 / 1e6
    report = {"capacity": capacity, "layers": LAYERS, "cache_mb": cache_mb, "step_ms": median_ms,
              "attention_ms": {v: median_ms[v] - median_ms["weights_only"] for v in variants[1:]}}
    report["attention_gb_s"] = {v: cache_mb / 1e3 / (ms / 1e3) for v, ms in report["attention_ms"].items()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
