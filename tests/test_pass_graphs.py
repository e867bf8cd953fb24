"""StripPrunedUnitsPass and FuseAttentionPass on the smallest hand-built graphs that show their
case: the structure they leave (which nodes, which shapes) and the numbers (unchanged
outputs). Whole models are in test_nash.py."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from edgeseq.passes.fuse_attention import FuseAttentionPass
from edgeseq.passes.strip_pruned import StripPrunedUnitsPass
from onnx import TensorProto, helper, numpy_helper

T, S, H, DH = 3, 5, 2, 2
D = H * DH


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run it as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def apply(pass_, model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    result = pass_(ir.from_proto(model))
    return ir.to_proto(result.model), result.modified


def attention_graph(weights: dict[str, np.ndarray], cross: bool) -> onnx.ModelProto:
    """out = softmax(q k^T + bias) v, heads merged, projected: the exporter's chain
    (models/nash_modules.py): self-attention over x, or cross-attention over graph inputs
    k, v in [B, H, S, Dh]."""
    split = lambda src, out: [  # noqa: E731  [1, T, D] -> [1, H, T, Dh]
        helper.make_node("Reshape", [src, "split_shape"], [out + "_4"]),
        helper.make_node("Transpose", [out + "_4"], [out], perm=[0, 2, 1, 3]),
    ]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), *split("q", "qh")]
    if cross:
        keys, values = "k", "v"
    else:
        nodes += [helper.make_node("MatMul", ["x", "wk"], ["k_"]), *split("k_", "kh"),
                  helper.make_node("MatMul", ["x", "wv"], ["v_"]), *split("v_", "vh")]
        keys, values = "kh", "vh"
    nodes += [
        helper.make_node("Transpose", [keys], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", values], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["merged"]),
        helper.make_node("MatMul", ["merged", "wo"], ["out"]),
    ]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in weights.items()]
    inits += [numpy_helper.from_array(np.array([1, T, -1, DH], dtype=np.int64), "split_shape"),
              numpy_helper.from_array(np.array([1, T, D], dtype=np.int64), "merge_shape")]
    kv = (S if cross else T)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D]),
              helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 1, T, kv])]
    if cross:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, H, S, DH]) for n in ("k", "v")]
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, T, D])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def unit(kept: list[int], cross: bool) -> dict:
    return {"unit": "layer.attention", "heads": H, "head_dim": DH, "kept": kept,
            "head_columns": ["wq", "wk", "wv"] if not cross else ["wq"], "head_biases": [], "head_rows": "wo",
            "out_bias": None, "position_bias": False, "caches": []}


def feeds(cross: bool, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    kv = S if cross else T
    out = {"x": rng.standard_normal((1, T, D), dtype=np.float32),
           "bias": np.where(rng.random((1, 1, T, kv)) < 0.2, -1e9, 0.0).astype(np.float32)}
    if cross:
        out |= {n: rng.standard_normal((1, H, S, DH), dtype=np.float32) for n in ("k", "v")}
    return out


def test_strip_removes_a_pruned_head_and_keeps_the_outputs():
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal((D, D)) for n in ("wq", "wk", "wv", "wo")}
    w["wo"][DH:] = 0.0  # head 1 folded to nothing: its output-projection rows are zero
    model = attention_graph(w, cross=False)
    after, modified = apply(StripPrunedUnitsPass({"attention": [unit([0], cross=False)]}), model)
    assert modified
    shapes = {i.name: list(i.dims) for i in after.graph.initializer}
    assert shapes["wq"] == shapes["wk"] == shapes["wv"] == [D, DH] and shapes["wo"] == [DH, D]
    merge = next(n for n in after.graph.node if n.op_type == "Reshape" and n.output[0] == "merged")
    merge_shape = next(i for i in after.graph.initializer if i.name == merge.input[1])
    assert numpy_helper.to_array(merge_shape).tolist() == [1, T, DH]
    x = feeds(cross=False)
    np.testing.assert_allclose(run(after, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-6)


def test_strip_refuses_to_slice_a_weight_another_node_reads():
    """Query and key weights merged into one initializer (equal contents): slicing it for
    the kept heads would change the other reader too, so the pass names the problem."""
    import pytest

    from edgeseq.errors import PassError

    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal((D, D)) for n in ("wq", "wv", "wo")}
    model = attention_graph({**w, "wk": w["wq"]}, cross=False)
    for node in model.graph.node:  # what a deduplicating optimizer leaves: both read wq
        node.input[:] = ["wq" if name == "wk" else name for name in node.input]
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "wk"))
    with pytest.raises(PassError, match="wq is read by 2 nodes"):
        apply(StripPrunedUnitsPass({"attention": [unit([0], cross=False)]}), model)


def test_fuse_turns_a_cross_attention_chain_into_one_kernel():
    rng = np.random.default_rng(2)
    model = attention_graph({n: rng.standard_normal((D, D)) for n in ("wq", "wo")}, cross=True)
    after, modified = apply(FuseAttentionPass({"attention": [unit([0, 1], cross=True)]}), model)
    assert modified
    ops = [n.op_type for n in after.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops and ops.count("MatMul") == 2  # q and o
    mha = next(n for n in after.graph.node if n.op_type == "MultiHeadAttention")
    assert {a.name: a.i for a in mha.attribute}["num_heads"] == H
    x = feeds(cross=True)
    np.testing.assert_allclose(run(after, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_fuse_leaves_a_chain_it_does_not_recognise_alone():
    """No softmax Add (the bias is missing): not the exporter's attention, not touched."""
    rng = np.random.default_rng(3)
    model = attention_graph({n: rng.standard_normal((D, D)) for n in ("wq", "wo")}, cross=True)
    nodes = list(model.graph.node)
    softmax = next(n for n in nodes if n.op_type == "Softmax")
    softmax.input[0] = "scores"
    model.graph.ClearField("node")
    model.graph.node.extend(n for n in nodes if n.op_type != "Add")
    after, modified = apply(FuseAttentionPass({"attention": [unit([0, 1], cross=True)]}), model)
    assert not modified and "MultiHeadAttention" not in [n.op_type for n in after.graph.node]
