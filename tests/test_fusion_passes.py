"""The ONNX Runtime kernel fusions of the NASH path: what they fuse, what they leave alone,
and that a fused graph computes what the unfused one did (parity against transformers
for whole models is in test_nash.py)."""

import collections
import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from edgeseq.passes.fuse_residual_norm import FuseResidualNormPass
from onnx import TensorProto, helper, numpy_helper

D = 8


def rms_norm_graph(skip_is_constant: bool) -> onnx.ModelProto:
    """s = a + b; out = w * (s / sqrt(mean(s^2) + eps)); the next residual reads s too,
    as in a pre-norm T5 block: next = s + out."""
    skip = "b_const" if skip_is_constant else "b"
    nodes = [
        helper.make_node("Add", ["a", skip], ["s"]),
        helper.make_node("Pow", ["s", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["mean"], keepdims=1),
        helper.make_node("Add", ["mean", "eps"], ["var"]),
        helper.make_node("Sqrt", ["var"], ["rms"]),
        helper.make_node("Div", ["s", "rms"], ["normed"]),
        helper.make_node("Mul", ["w", "normed"], ["out"]),
        helper.make_node("Add", ["s", "out"], ["next"]),
    ]
    rng = np.random.default_rng(0)
    inits = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]),
        helper.make_tensor("w", TensorProto.FLOAT, [D], rng.standard_normal(D).tolist()),
        helper.make_tensor("b_const", TensorProto.FLOAT, [D], rng.standard_normal(D).tolist()),
    ]
    x = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, D])  # noqa: E731
    inputs = [x("a")] if skip_is_constant else [x("a"), x("b")]
    graph = helper.make_graph(nodes, "norm", inputs, [x("out"), x("next")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run it as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def fused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    result = FuseResidualNormPass()(ir.from_proto(model))
    return ir.to_proto(result.model), result.modified


def test_residual_norm_becomes_one_kernel_with_the_same_outputs():
    model = rms_norm_graph(skip_is_constant=False)
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((1, 3, D), dtype=np.float32), "b": rng.standard_normal((1, 3, D), dtype=np.float32)}
    after, modified = fused(model)
    assert modified
    assert [n.op_type for n in after.graph.node] == ["SkipSimplifiedLayerNormalization", "Add"]
    for want, got in zip(run(model, feeds), run(after, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_residual_plus_a_constant_is_left_alone():
    """A cut sublayer leaves x + bias: the kernel's skip input must be a full activation."""
    after, modified = fused(rms_norm_graph(skip_is_constant=True))
    assert not modified
    assert "SkipSimplifiedLayerNormalization" not in [n.op_type for n in after.graph.node]


def _ops(art, graph: str) -> collections.Counter:
    model = onnx.load(str(art / f"{graph}.onnx"), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def t5_unpruned(tmp_path_factory):
    from edgeseq.models.nash_checkpoints import random_model, save_hf_checkpoint

    from edgeseq.pipeline import compile_checkpoint

    root = tmp_path_factory.mktemp("fusion")
    ckpt = save_hf_checkpoint(random_model("t5-v1", "tiny", seed=0), root / "t5")
    compile_checkpoint(ckpt, root / "t5.artifact")
    return root / "t5.artifact"


def test_t5_decoder_step_is_fused(t5_unpruned):
    """Per decoder layer: one attention kernel for the cross-attention, and every residual
    Add merged into the norm after it; the relative bias is a table lookup, not the
    bucket formula (no Log at every step). The self-attention reads its preallocated cache
    in place (no Concat of the cache; MultiHeadAttention would append by copying it), so it
    stays unfused: one Softmax per layer. Parity of this graph: test_nash.py."""
    layers = 2
    ops = _ops(t5_unpruned, "decoder_step")
    assert ops["MultiHeadAttention"] == layers
    # each sublayer's residual Add with the norm that reads it next (the final norm included)
    assert ops["SkipSimplifiedLayerNormalization"] == 3 * layers
    model = onnx.load(str(t5_unpruned / "decoder_step.onnx"), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def sublayer_output(value: str) -> bool:  # an output projection (MatMul by a weight) or a fused attention
        node = producers.get(value)
        return node is not None and (node.op_type == "MultiHeadAttention"
                                     or (node.op_type == "MatMul" and node.input[1] in weights))

    residual_adds = [n for n in model.graph.node if n.op_type == "Add" and any(sublayer_output(i) for i in n.input)]
    assert residual_adds == []
    assert ops["Log"] == 0 and ops["Softmax"] == layers
    # q, k and v packed into one (PackProjectionsPass), o, scores over the cache, context over
    # the cache, cross q, cross o, 2 FFN; the LM head
    assert ops["MatMul"] == 8 * layers + 1 and ops["Split"] == layers


def layer_norm_graph() -> onnx.ModelProto:
    """RED/StagFormer's pre-norm block: s = a + b; out = LayerNorm(s); next = s + out."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("LayerNormalization", ["s", "w", "bias"], ["out"], axis=-1, epsilon=1e-5),
        helper.make_node("Add", ["s", "out"], ["next"]),
    ]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [D], rng.standard_normal(D).tolist()),
             helper.make_tensor("bias", TensorProto.FLOAT, [D], rng.standard_normal(D).tolist())]
    x = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, D])  # noqa: E731
    graph = helper.make_graph(nodes, "ln", [x("a"), x("b")], [x("out"), x("next")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_residual_layer_norm_becomes_one_kernel_with_the_same_outputs():
    model = layer_norm_graph()
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((1, 3, D), dtype=np.float32) for n in ("a", "b")}
    after, modified = fused(model)
    assert modified
    assert [n.op_type for n in after.graph.node] == ["SkipLayerNormalization", "Add"]
    for want, got in zip(run(model, feeds), run(after, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def projections_graph(shared_weight: bool) -> onnx.ModelProto:
    """q, k, v = x @ Wq + bq, x @ Wk + bk, x @ Wv + bv (with `shared_weight`, a fourth
    MatMul elsewhere reads Wv too)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"W{p}"], [f"m{p}"]), helper.make_node("Add", [f"m{p}", f"b{p}"], [p])]
        inits += [helper.make_tensor(f"W{p}", TensorProto.FLOAT, [D, D], rng.standard_normal(D * D).tolist()),
                  helper.make_tensor(f"b{p}", TensorProto.FLOAT, [D], rng.standard_normal(D).tolist())]
    outputs = list("qkv")
    if shared_weight:
        nodes.append(helper.make_node("MatMul", ["y", "Wv"], ["other"]))
        outputs.append("other")
    x = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 1, D])  # noqa: E731
    graph = helper.make_graph(nodes, "qkv", [x("x"), x("y")], [x(o) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("shared_weight", [False, True], ids=["own-weights", "one-weight-shared"])
def test_projections_of_one_input_become_one_matmul(shared_weight):
    from edgeseq.passes.pack_projections import PackProjectionsPass

    model = projections_graph(shared_weight)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((2, 1, D), dtype=np.float32) for n in ("x", "y")}
    result = PackProjectionsPass()(ir.from_proto(model))
    after = ir.to_proto(result.model)
    ops = collections.Counter(n.op_type for n in after.graph.node)
    # a weight another node reads is not copied into the pack: q and k pack, v stays
    assert ops["Split"] == 1 and ops["MatMul"] == (3 if shared_weight else 1)
    assert ops["Add"] == (2 if shared_weight else 1)
    for want, got in zip(run(model, feeds), run(after, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,overrides,graph", [
    ("red", {}, "decoder_step"),
    ("stagformer", {"n_layers": 4, "n_stacks": 2}, "stage.1"),
])
def test_red_and_stagformer_steps_are_fused(artifacts, family, overrides, graph):
    """No plan needed: every pre-norm residual of a step meets its norm in one kernel, and
    each layer's query/key/value projections are one MatMul (parity: test_red_parity.py,
    test_stagformer.py)."""
    _, art = artifacts.get(family=family, **overrides)
    ops = _ops(art, graph)
    assert ops["SkipLayerNormalization"] > 0 and ops["Split"] > 0
    model = onnx.load(str(art / f"{graph}.onnx"), load_external_data=False)
    residual_into_norm = [n for n in model.graph.node if n.op_type == "LayerNormalization"
                          and any(p.op_type == "Add" and p.output[0] == n.input[0] for p in model.graph.node)]
    assert residual_into_norm == []


def test_an_encoder_keeps_add_and_layer_norm(artifacts):
    """Over every prompt token the skip kernel costs more than Add + LayerNormalization
    (passes/fuse_residual_norm.py): RED's encoder keeps the pair and says why; its step fuses."""
    _, art = artifacts.get(family="red")
    assert _ops(art, "encoder")["SkipLayerNormalization"] == 0 and _ops(art, "encoder")["LayerNormalization"] > 0
    assert _ops(art, "decoder_step")["SkipLayerNormalization"] > 0
    manifest = json.loads((art / "manifest.json").read_text())
    declined = next(p for p in manifest["passes"] if p["pass"] == "FuseResidualNormPass")["declined"]
    assert any("the encoder graph runs it over every prompt token" in reason for reason in declined)
    assert not any("decoder_step" in reason for reason in declined)


def test_a_pack_of_many_projections_keeps_its_split_sizes_inline(tmp_path):
    """t5-small's encoder packs twelve cross-attention projections: the Split's 96-byte
    sizes must stay in the graph (ONNX Runtime reads them at load), not go to weights.bin."""
    from edgeseq.build import WeightStore, externalize
    from edgeseq.graph_spec import ExportedGraph, GraphSpec

    sizes = ir.Value(name="sizes", const_value=ir.tensor(np.full(12, 4, np.int64), name="sizes"))
    weight = ir.Value(name="w", const_value=ir.tensor(np.ones((64, 64), np.float32), name="w"))
    graph = ir.Graph([], [], nodes=[], initializers=[sizes, weight], opset_imports={"": 18})
    store = WeightStore(tmp_path / "weights.bin")
    names = externalize(ExportedGraph(GraphSpec("g", "encoder", (), ()), ir.Model(graph, ir_version=9)), store, tmp_path)
    store.close()
    assert names == {"w": next(iter(store.tensors))}
    assert not isinstance(sizes.const_value, ir.ExternalTensor)


def test_what_weights_alone_compute_is_folded_once():
    """A norm and a weight MatMul over a constant (StagFormer's null memory slot) become one
    small constant; the activation's path stays; the outputs are unchanged."""
    from edgeseq.passes.fold_weights import FoldWeightOnlyPass

    rng = np.random.default_rng(0)
    null = numpy_helper.from_array(rng.standard_normal((1, 1, D)).astype(np.float32), "null")
    gamma = numpy_helper.from_array(np.ones(D, np.float32), "gamma")
    beta = numpy_helper.from_array(np.zeros(D, np.float32), "beta")
    w = numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32), "w")
    nodes = [
        helper.make_node("LayerNormalization", ["null", "gamma", "beta"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "w"], ["null_key"]),
        helper.make_node("MatMul", ["x", "w"], ["key"]),
        helper.make_node("Add", ["key", "null_key"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, D])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 1, D])], [null, gamma, beta, w],
        value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, D]) for n in ("normed", "null_key")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    result = FoldWeightOnlyPass()(ir.from_proto(model))
    after = ir.to_proto(result.model)
    assert result.modified and [n.op_type for n in after.graph.node] == ["MatMul", "Add"]
    assert "null" not in {i.name for i in after.graph.initializer}  # only the folded nodes read it
    feeds = {"x": rng.standard_normal((2, 1, D), dtype=np.float32)}
    np.testing.assert_allclose(run(after, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_stagformer_null_slot_is_a_constant_in_the_step(artifacts):
    """The last stage normalises and projects only what a step feeds it: no norm of the
    null memory slot, and each cross-attention's memory keys and values are one MatMul."""
    _, art = artifacts.get(family="stagformer", n_layers=4, n_stacks=2)
    model = onnx.load(str(art / "stage.1.onnx"), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert norms and not [n for n in norms if n.input[0] in constants]
    weights = [w for n in model.graph.node if n.op_type == "MatMul" for w in n.input[1:] if ".cross." in w]
    assert weights and not [w for w in weights if w.endswith((".k.weight", ".v.weight"))]  # packed


def test_a_transpose_that_moves_no_data_becomes_a_reshape():
    """A decode step's head split and merge ([B, 1, H, Dh] <-> [B, H, 1, Dh]) become
    Reshapes, merged with their neighbours; a Transpose that moves data stays."""
    from edgeseq.passes.transpose_as_reshape import TransposeAsReshapePass

    heads = helper.make_tensor("heads", TensorProto.INT64, [4], [-1, 1, 2, 4])
    flat = helper.make_tensor("flat", TensorProto.INT64, [3], [-1, 1, 8])
    nodes = [
        helper.make_node("Reshape", ["x", "heads"], ["split"]),
        helper.make_node("Transpose", ["split"], ["q"], perm=[0, 2, 1, 3]),  # [B, 2, 1, 4]
        helper.make_node("Transpose", ["q"], ["k_t"], perm=[0, 3, 1, 2]),  # [B, 4, 2, 1]: moves data
        helper.make_node("Transpose", ["q"], ["merged"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["merged", "flat"], ["y"]),
    ]
    shapes = {"split": ["batch", 1, 2, 4], "q": ["batch", 2, 1, 4], "merged": ["batch", 1, 2, 4]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8]),
         helper.make_tensor_value_info("k_t", TensorProto.FLOAT, ["batch", 4, 2, 1])], [heads, flat],
        value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    after = ir.to_proto(TransposeAsReshapePass()(ir.from_proto(model)).model)
    ops = collections.Counter(n.op_type for n in after.graph.node)
    assert ops == {"Transpose": 1, "Reshape": 2}, ops  # x -> q, q -> y; k_t's Transpose stays
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 1, 8), dtype=np.float32)}
    for want, got in zip(run(model, feeds), run(after, feeds)):
        np.testing.assert_array_equal(got, want)
