"""Which int8 weight kernel ONNX Runtime CPU runs fastest here (issue 13's first question).

A t5-small decoder step's weight MatMuls, stacked as one graph: 6 layers of self-attention
(q, k, v, o: 512x512), cross-attention (q, o: 512x512; its keys/values come from the
encoder once) and the FFN (512x2048, 2048x512), then the LM head (512x32128). Each graph
variant computes the same chain of x @ W with a ReLU between (so nothing folds):
- fp32: MatMul;
- MatMulNBits 8-bit, weight-only, blockwise (block 32 and 128), symmetric, activations fp32
  (accuracy_level 0) or quantized to int8 inside the kernel (accuracy_level 4);
- dynamic: DynamicQuantizeLinear on the activation + MatMulInteger on int8 weights +
  the scale multiply (what `quantize_dynamic` writes; ORT fuses it into
  DynamicQuantizeMatMul);
timed at batch 1 and 8 with 1 and 2 intra-op threads, variants alternating round by round,
best of 20 runs per round, median of 5 rounds. Also each one's max error against fp32 on
the same input, relative to the largest fp32 output. Writes benchmarks/results/int8_kernels.json.

    python benchmarks/int8_kernels.py [--rounds 5]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).parent / "results" / "int8_kernels.json"
D, FF, VOCAB, LAYERS = 512, 2048, 32128, 6


def shapes() -> list[tuple[int, int]]:
    per_layer = [(D, D)] * 6 + [(D, FF), (FF, D)]
    return per_layer * LAYERS + [(D, VOCAB)]


def weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # He scale: the activations keep their size through the ReLU chain, so errors mean something
    return [(rng.standard_normal(s) * np.sqrt(2 / s[0])).astype(np.float32) for s in shapes()]


def _graph(nodes, inits, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", VOCAB])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def chain(ws: list[np.ndarray], linear) -> bytes:
    """x -> linear_0 -> relu -> linear_1 -> ... -> y; `linear(i, w, src, dst)` gives nodes, inits."""
    nodes, inits, src = [], [], "x"
    for i, w in enumerate(ws):
        dst = "y" if i == len(ws) - 1 else f"h{i}"
        n, t = linear(i, w, src, dst if i == len(ws) - 1 else f"m{i}")
        nodes += n
        inits += t
        if i < len(ws) - 1:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [dst]))
        src = dst
    return _graph(nodes, inits, "chain")


def fp32_linear(i, w, src, dst):
    return [helper.make_node("MatMul", [src, f"w{i}"], [dst])], [numpy_helper.from_array(w, f"w{i}")]


def nbits_linear(block: int, accuracy_level: int = 0):
    def linear(i, w, src, dst):
        k, n = w.shape
        blocks = k // block
        wt = w.T.reshape(n, blocks, block)  # MatMulNBits takes B transposed, blockwise
        scale = np.abs(wt).max(axis=-1) / 127.0
        q = np.clip(np.round(wt / scale[..., None]), -127, 127).astype(np.int32) + 128  # uint8, zero point 128
        node = helper.make_node("MatMulNBits", [src, f"q{i}", f"s{i}"], [dst], domain="com.microsoft",
                                K=k, N=n, bits=8, block_size=block, accuracy_level=accuracy_level)
        return [node], [numpy_helper.from_array(q.astype(np.uint8), f"q{i}"),
                        numpy_helper.from_array(scale.astype(np.float32).reshape(-1), f"s{i}")]
    return linear


def dynamic_linear(i, w, src, dst):
    # per output column, 7 bits: the u8 x s8 kernel overflows int16 with 8 (passes/quantize_weights.py)
    scale = np.abs(w).max(axis=0) / 63.0
    q = np.clip(np.round(w / scale), -63, 63).astype(np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [src], [f"xq{i}", f"xs{i}", f"xz{i}"]),
        helper.make_node("MatMulInteger", [f"xq{i}", f"q{i}", f"xz{i}"], [f"acc{i}"]),
        helper.make_node("Cast", [f"acc{i}"], [f"accf{i}"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"xs{i}", f"s{i}"], [f"sc{i}"]),
        helper.make_node("Mul", [f"accf{i}", f"sc{i}"], [dst]),
    ]
    return nodes, [numpy_helper.from_array(q, f"q{i}"), numpy_helper.from_array(scale.astype(np.float32), f"s{i}")]


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    ws = weights()
    variants = {"fp32 MatMul": chain(ws, fp32_linear), "MatMulNBits 8-bit block 32": chain(ws, nbits_linear(32)),
                "MatMulNBits 8-bit block 128": chain(ws, nbits_linear(128)),
                "MatMulNBits 8-bit block 32, int8 compute": chain(ws, nbits_linear(32, 4)),
                "MatMulNBits 8-bit block 128, int8 compute": chain(ws, nbits_linear(128, 4)),
                "dynamic MatMulInteger (int8)": chain(ws, dynamic_linear)}
    weight_bytes = {"fp32 MatMul": sum(w.nbytes for w in ws)}
    for name in variants:
        if name != "fp32 MatMul":
            m = onnx.load_from_string(variants[name])
            weight_bytes[name] = sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer)
    report = {"shape": "t5-small decoder step weights (6 layers) + LM head", "rounds": args.rounds, "results": []}
    rng = np.random.default_rng(1)
    for threads in (1, 2):
        sessions = {name: session(m, threads) for name, m in variants.items()}
        for batch in (1, 8):
            x = rng.standard_normal((batch, D)).astype(np.float32)
            reference = sessions["fp32 MatMul"].run(None, {"x": x})[0]
            times: dict[str, list[float]] = {name: [] for name in sessions}
            names = list(sessions)
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    best = float("inf")
                    for _ in range(args.runs):
                        start = time.perf_counter()
                        sessions[name].run(None, {"x": x})
                        best = min(best, time.perf_counter() - start)
                    times[name].append(best)
            fp32_ms = 1000 * statistics.median(times["fp32 MatMul"])
            for name, sess in sessions.items():
                ms = 1000 * statistics.median(times[name])
                error = float(np.abs(sess.run(None, {"x": x})[0] - reference).max() / np.abs(reference).max())
                row = {"variant": name, "threads": threads, "batch": batch, "ms": ms, "speedup_vs_fp32": fp32_ms / ms,
                       "weight_mb": weight_bytes[name] / 1e6, "max_error_relative_to_max_logit": error}
                report["results"].append(row)
                print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
