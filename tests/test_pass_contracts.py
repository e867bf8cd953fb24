"""Every pass's contract is code: each requires() refuses a graph that breaks its precondition
and each ensures() a result that breaks its postcondition, with onnx-ir's Pre/PostconditionError
(which are edgeseq's one-line PassError too); the shared interface check catches a fusion
that loses an output (planted); a matcher that declines says why."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from edgeseq.passes import GraphSet, SplitStepIntoStages, StripPrunedGraphs
from edgeseq.passes.contracts import interface_change
from edgeseq.passes.fold_weights import FoldWeightOnlyPass
from edgeseq.passes.fuse_attention import MS_DOMAIN, FuseAttentionPass
from edgeseq.passes.fuse_residual_norm import FuseResidualNormPass
from edgeseq.passes.pack_projections import PackProjectionsPass
from edgeseq.passes.quantize_weights import QuantizeWeightsPass
from edgeseq.passes.split_stages import NAME_SCOPES, SplitStagesPass
from edgeseq.passes.strip_pruned import StripPrunedUnitsPass
from edgeseq.passes.transpose_as_reshape import TransposeAsReshapePass
from onnx_ir.passes import PostconditionError, PreconditionError
from test_fusion_passes import rms_norm_graph
from test_pass_graphs import DH, H, attention_graph, unit

from edgeseq.errors import PassError
from edgeseq.graph_spec import ExportedGraph, GraphSpec

Pre, Post = PreconditionError, PostconditionError


def attention(cross: bool = False, seed: int = 0, query_heads: int = H) -> ir.Model:
    """The exporter's attention chain (test_pass_graphs), with inferred shapes; `query_heads`
    below H: a query projection already stripped to that many heads."""
    rng = np.random.default_rng(seed)
    weights = {n: rng.standard_normal((H * DH, H * DH)) for n in (("wq", "wo") if cross else ("wq", "wk", "wv", "wo"))}
    weights["wq"] = weights["wq"][:, : query_heads * DH]
    return ir.from_proto(onnx.shape_inference.infer_shapes(attention_graph(weights, cross=cross)))


def stagformer_like(tagged: bool = True) -> ir.Model:
    """A graph whose first nodes were traced in stack 0 and the rest in stack 1."""
    model = attention()
    nodes = list(model.graph)
    for i, node in enumerate(nodes):
        if tagged:
            node.metadata_props[NAME_SCOPES] = repr([f"stacks.{int(i >= len(nodes) // 2)}"])
    return model


def norm_graph() -> ir.Model:
    return ir.from_proto(rms_norm_graph(skip_is_constant=False))


def add_weight(model: ir.Model, name: str, shape=(64, 64)) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(np.ones(shape, dtype=np.float32), name=name))
    model.graph.register_initializer(value)
    return value


def matmul_by(model: ir.Model, weight: ir.Value) -> ir.Node:
    node = ir.node("MatMul", [model.graph.inputs[0], weight], name=f"{weight.name}.matmul")
    model.graph.append(node)
    return node


def rename_an_output(model: ir.Model) -> None:
    model.graph.outputs[0].name = "renamed"


def ensures_after(pass_, model: ir.Model, damage) -> None:
    """requires() on the intact graph, then damage it as a faulty rewrite would, then ensures()."""
    pass_.requires(model)
    damage(model)
    pass_.ensures(model)


# ----- requires(): a graph that breaks each precondition ---------------------------------------------
def unshaped_input(model):
    model.graph.inputs[0].shape = None
    return model


def foreign_contrib_version(model):
    model.opset_imports[MS_DOMAIN] = 2
    return model


def split_without_sizes_input(model):
    model.opset_imports[""] = 11  # Split takes its sizes as an input from opset 13
    return model


def already_int8(model):
    model.graph.append(ir.node("DynamicQuantizeMatMul", [model.graph.inputs[0]], domain=MS_DOMAIN, name="done.int8"))
    return model


def no_default_opset(model):
    del model.opset_imports[""]
    return model


PRECONDITIONS = {  # pass, the intact graph, the graph that breaks the precondition, the message
    "TransposeAsReshapePass": (TransposeAsReshapePass, attention, lambda: unshaped_input(attention()), "without a shape"),
    "FuseResidualNormPass": (FuseResidualNormPass, norm_graph, lambda: foreign_contrib_version(norm_graph()), "version 2"),
    "PackProjectionsPass": (PackProjectionsPass, attention, lambda: split_without_sizes_input(attention()), "opset 11"),
    # the plan keeps one head: the query projection must have been stripped to it
    "FuseAttentionPass": (lambda: FuseAttentionPass({"attention": [unit([0], cross=True)]}),
                          lambda: attention(True, query_heads=1), lambda: attention(True), "the strip pass has not run"),
    "QuantizeWeightsPass": (QuantizeWeightsPass, attention, lambda: already_int8(attention()), "runs once"),
    "FoldWeightOnlyPass": (FoldWeightOnlyPass, attention, lambda: no_default_opset(attention()), "no default-domain opset"),
    "StripPrunedUnitsPass": (lambda: StripPrunedUnitsPass({"attention": [unit([0], cross=False)]}), attention,
                             lambda: attention(query_heads=1), "stripped already or the plan is another model's"),
    "SplitStagesPass": (lambda: SplitStagesPass(2, {}), stagformer_like, lambda: stagformer_like(tagged=False),
                        "not a StagFormer step"),
}


@pytest.mark.parametrize("name", sorted(PRECONDITIONS))
def test_requires_refuses_a_graph_that_breaks_the_precondition(name):
    make_pass, intact, broken, message = PRECONDITIONS[name]
    make_pass().requires(intact())  # the intact graph passes
    with pytest.raises(Pre, match=message) as caught:
        make_pass()(broken())  # run as onnx-ir runs it: requires() first
    assert isinstance(caught.value, PassError) and "Fix:" in str(caught.value)


# ----- ensures(): a result that breaks each postcondition --------------------------------------------
def leave_a_movable_transpose(model):
    x = model.graph.inputs[0]  # [1, T, D]
    model.graph.append(ir.node("Transpose", [x], attributes={"perm": [1, 0, 2]}, name="movable"))


def skip_kernel_of_mixed_ranks(model):
    flat = ir.Value(name="flat", shape=ir.Shape([3, 8]), type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.append(ir.node("SkipLayerNormalization", [model.graph.inputs[0], flat], domain=MS_DOMAIN,
                               num_outputs=4, name="skip"))


def grow_the_weights(model):
    add_weight(model, "copied", (8, 8))


def mha_of_three_heads_over_eight(model):
    model.graph.append(ir.node("MultiHeadAttention", [model.graph.inputs[0]], attributes={"num_heads": 3},
                               domain=MS_DOMAIN, name="mha"))


def leave_a_large_fp32_matmul(model):
    matmul_by(model, add_weight(model, "big", (4, 1024)))


def add_an_output(model):
    model.graph.outputs.append(model.graph.node(0).outputs[0])


POSTCONDITIONS = {
    "TransposeAsReshapePass": (TransposeAsReshapePass, attention, leave_a_movable_transpose, "move no data are left"),
    "TransposeAsReshapePass/interface": (TransposeAsReshapePass, attention, rename_an_output, "changed the graph's interface"),
    "FuseResidualNormPass": (FuseResidualNormPass, norm_graph, skip_kernel_of_mixed_ranks, "rank 3 and skip of rank 2"),
    "PackProjectionsPass": (PackProjectionsPass, attention, grow_the_weights, "grew the weights"),
    "FuseAttentionPass": (lambda: FuseAttentionPass({}), attention, mha_of_three_heads_over_eight, "3 heads over a query 4 wide"),
    "QuantizeWeightsPass": (QuantizeWeightsPass, attention, leave_a_large_fp32_matmul, "qualify for int8: big.matmul"),
    "FoldWeightOnlyPass": (FoldWeightOnlyPass, attention, rename_an_output, "changed the graph's interface"),
    "StripPrunedUnitsPass": (lambda: StripPrunedUnitsPass({}), attention, add_an_output, "added graph inputs or outputs"),
}


@pytest.mark.parametrize("name", sorted(POSTCONDITIONS))
def test_ensures_refuses_a_result_that_breaks_the_postcondition(name):
    make_pass, make_model, damage, message = POSTCONDITIONS[name]
    intact = make_model()
    ensures_after(make_pass(), intact, lambda m: None)  # an untouched graph meets every postcondition
    with pytest.raises(Post, match=message):
        ensures_after(make_pass(), make_model(), damage)


def test_split_stages_ensures_its_stages_compute_the_step_outputs_once():
    split = SplitStagesPass(2, {})
    split.stages = [attention()]  # one stage where two are due
    with pytest.raises(Post, match="1 stages computing"):
        split.ensures(attention())


def test_a_fusion_that_loses_an_output_name_is_caught_by_the_shared_check(monkeypatch):
    """Planted: the skip-norm fusion's take-over forgets to carry the graph output's name."""
    import edgeseq.passes.fuse_residual_norm as module

    def forgetful_take_over(graph, old, new):
        for i, out in enumerate(graph.outputs):
            if out is old:
                graph.outputs[i] = new  # the name, shape and type stay behind
        ir.convenience.replace_all_uses_with(old, new)

    FuseResidualNormPass()(norm_graph())  # the real one keeps the interface
    monkeypatch.setattr(module, "take_over", forgetful_take_over)
    with pytest.raises(Post, match="changed the graph's interface: lost output"):
        FuseResidualNormPass()(norm_graph())


def test_an_interface_change_is_described_in_one_line():
    before = [("output", "logits", "FLOAT", "[1,3]")]
    assert interface_change(before, before) is None
    assert interface_change(before, [("output", "x", "FLOAT", "[1,3]")]) == "lost output logits FLOAT [1,3]; gained output x FLOAT [1,3]"


# ----- the graph-set passes ---------------------------------------------------------------------------
def graph_set(*roles: str) -> GraphSet:
    return GraphSet([ExportedGraph(GraphSpec(f"{role}{i}", role, (), ()), attention(seed=i)) for i, role in enumerate(roles)])


def test_the_stage_split_requires_one_step_graph_and_ensures_no_step_is_left():
    with pytest.raises(Pre, match="needs one `step` graph, found 0"):
        SplitStepIntoStages(2)(graph_set("encoder"))
    split = SplitStepIntoStages(2)
    split.requires(graph_set("step"))
    with pytest.raises(Post, match="a `step` graph is left"):
        split.ensures(graph_set("step"))
    with pytest.raises(Post, match="not stage.0 .. stage.1"):
        split.ensures(graph_set("stage"))


def test_a_graph_set_pass_requires_graphs():
    with pytest.raises(Pre, match="non-empty GraphSet"):
        StripPrunedGraphs({})(GraphSet([]))


# ----- declined candidates -----------------------------------------------------------------------------
def test_a_declining_matcher_says_which_node_and_why():
    model = attention(cross=True)
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    add = softmax.inputs[0].producer()
    softmax.replace_input_with(0, add.inputs[0])  # no bias Add before the softmax: not the exporter's chain
    fuse = FuseAttentionPass({"attention": [unit([0, 1], cross=True)]})
    assert not fuse(model).modified
    assert [d.reason for d in fuse.declined] == [
        "layer.attention: no Transpose(K), Add(bias) -> Softmax -> MatMul(V) -> merge heads after the scores"]
    assert fuse.declined[0].node  # the query projection's node, by name
    quantize = QuantizeWeightsPass()
    quantize(attention())
    assert {d.reason.split(" has ")[1] for d in quantize.declined} == {"16 entries, under 1024: int8 would not pay"}


def test_the_transposes_that_move_data_are_declined_with_their_shape():
    rewrite = TransposeAsReshapePass()
    assert not rewrite(attention()).modified  # three tokens: every head split moves data
    reasons = [d.reason for d in rewrite.declined]
    assert len(reasons) == 5 and all(r.startswith("it moves data (perm [") for r in reasons), reasons
