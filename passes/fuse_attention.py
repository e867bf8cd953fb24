"""FuseAttentionPass: one ONNX Runtime MultiHeadAttention kernel per attention sublayer.

At batch 1 a T5-small decoder step runs ~250 kernels, and the small ones (splitting
heads, transposes, the cache Concat, scores, bias, softmax, merging heads: about 14 per
attention) cost as much as a fifth of the step in launch overhead. This pass replaces
each attention's chain, from the projected query/key/value to the merged context, by
one `com.microsoft.MultiHeadAttention` node, which also appends the new keys/values to
the cache (`past_key` -> `present_key`).

It finds each attention from the plan's weight names (the query projection) and walks
the exporter's structure (models/nash_modules.py): query -> Reshape -> Transpose ->
MatMul(., Transpose(K)) -> Add(bias) -> Softmax -> MatMul(., V) -> Transpose -> Reshape.
K/V are a Concat(past, new) (decoder self-attention), the new keys alone (encoder), or
graph inputs in [B, H, S, Dh] (cross-attention). A chain that does not match is left
alone, with the reason (`compile --explain`).
Requires: the strip pass has run (head counts are read from the sliced weights: each
query projection is as wide as its kept heads). Ensures: the same interface; each
attention kernel's query width a multiple of its head count. ONNX Runtime targets only.
"""

from typing import Any

import numpy as np
import onnx_ir as ir

from .contracts import ContractPass, postcondition, precondition
from .strip_pruned import add_initializer, remove_unused, sole_consumer

MS_DOMAIN = "com.microsoft"


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op else None


def _split_input(heads4: ir.Value) -> ir.Value | None:
    """[B, H, T, Dh] made by Transpose(Reshape(x [B, T, H*Dh])) -> x."""
    transpose = _producer(heads4, "Transpose")
    reshape = _producer(transpose.inputs[0], "Reshape") if transpose else None
    return reshape.inputs[0] if reshape else None


def _query_weights(graph: ir.Graph, plan: dict[str, Any]):
    """(unit, query weight) of each kept attention of the plan that this graph holds."""
    for unit in plan.get("attention", []):
        query_weight = graph.initializers.get(unit["head_columns"][0])
        if query_weight is not None and unit["kept"]:
            yield unit, query_weight


class FuseAttentionPass(ContractPass):
    def __init__(self, plan: dict[str, Any]):
        super().__init__()
        self.plan = plan

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        for unit, weight in _query_weights(model.graph, self.plan):
            width, kept = weight.const_value.shape[1], len(unit["kept"]) * unit["head_dim"]
            if width != kept:
                raise precondition(f"{unit['unit']}: the query projection is {width} wide but the plan keeps "
                                   f"{len(unit['kept'])} heads of {unit['head_dim']}; the strip pass has not run",
                                   "run StripPrunedUnitsPass with this plan first (NASH's record does)")

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        for node in model.graph:
            if node.op_type == "MultiHeadAttention" and node.domain == MS_DOMAIN:
                heads, query = node.attributes["num_heads"].as_int(), node.inputs[0].shape
                width = query[-1] if query is not None else None
                if heads < 1 or (isinstance(width, int) and width % heads):
                    raise postcondition(f"{node.name}: {heads} heads over a query {width} wide")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        fused = 0
        for unit, query_weight in _query_weights(graph, self.plan):
            heads = query_weight.const_value.shape[1] // unit["head_dim"]
            fused += self._fuse(graph, query_weight, heads, unit["unit"])
        self.count(fused)
        if fused:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            remove_unused(model)  # and the q/k/v weights now packed into one
        return ir.passes.PassResult(model, bool(fused))

    def _fuse(self, graph: ir.Graph, query_weight: ir.Value, heads: int, unit: str) -> bool:
        node = sole_consumer(query_weight, "MatMul")
        if node is None:
            return self.decline(query_weight.name or unit, f"{unit}: its query weight is not read by one MatMul alone")
        query = node.outputs[0]
        while (nxt := sole_consumer(query)) is not None and nxt.op_type in ("Add", "Mul"):
            query = nxt.outputs[0]  # the projection's bias and BART's query scaling
        split = sole_consumer(query, "Reshape")
        transpose = sole_consumer(split.outputs[0], "Transpose") if split else None
        scores = sole_consumer(transpose.outputs[0], "MatMul") if transpose else None
        if transpose is None:
            return self.decline(node, f"{unit}: the query is not split into heads (Reshape -> Transpose)")
        if scores is None or scores.inputs[0] is not transpose.outputs[0]:
            readers = " and ".join(sorted(u.node.op_type for u in transpose.outputs[0].uses())) or "nothing"
            return self.decline(node, f"{unit}: the query's heads go to {readers}, not to one score MatMul (a cache "
                                      "attended in place, with the new token's own score apart, has no "
                                      "MultiHeadAttention form)")
        key_t = _producer(scores.inputs[1], "Transpose")
        add = sole_consumer(scores.outputs[0], "Add")
        softmax = sole_consumer(add.outputs[0], "Softmax") if add else None
        weighted = sole_consumer(softmax.outputs[0], "MatMul") if softmax else None
        back = sole_consumer(weighted.outputs[0], "Transpose") if weighted else None
        merge = sole_consumer(back.outputs[0], "Reshape") if back else None
        if key_t is None or merge is None:
            return self.decline(node, f"{unit}: no Transpose(K), Add(bias) -> Softmax -> MatMul(V) -> merge heads "
                                      "after the scores")
        bias = add.inputs[1] if add.inputs[0] is scores.outputs[0] else add.inputs[0]
        keys, values = key_t.inputs[0], weighted.inputs[1]
        perm = tuple(key_t.attributes["perm"].as_ints())
        merged = _producer(keys, "Reshape")  # the optimizer may fold split + K^T into one Transpose
        if merged is not None and perm == (0, 2, 3, 1):
            keys = None
        elif perm != (0, 1, 3, 2):
            return self.decline(node, f"{unit}: the keys are transposed by {perm}, not (0, 1, 3, 2)")

        inputs: list[ir.Value | None] = [query]
        cache = []  # (concat output, past input) for keys and values
        if keys is None:  # [B, T, H*Dh] -> Reshape -> Transpose(0, 2, 3, 1) = K^T
            inputs.append(merged.inputs[0])
        for kv in (keys, values):
            if kv is None:
                continue
            concat = _producer(kv, "Concat")
            if concat is not None:  # decoder self-attention: past + new
                new = _split_input(concat.inputs[1])
                if new is None:
                    return self.decline(node, f"{unit}: the cache's new part is not split into heads")
                inputs.append(new)
                cache.append((kv, concat.inputs[0]))
            elif kv.is_graph_input():  # cross-attention: [B, H, S, Dh] from the encoder
                inputs.append(kv)
            else:
                new = _split_input(kv)
                if new is None:
                    return self.decline(node, f"{unit}: the keys or values are not split into heads")
                inputs.append(new)
        if cache and len(cache) != 2:
            return self.decline(node, f"{unit}: only one of the keys and values comes from a cache")
        inputs[:3] = _pack_projections(graph, inputs[:3], merge, unit)
        inputs += [None, None, bias] + ([cache[0][1], cache[1][1]] if cache else [])
        mha = ir.node("MultiHeadAttention", inputs, attributes={"num_heads": heads, "scale": 1.0},
                      domain=MS_DOMAIN, num_outputs=3 if cache else 1, name=f"{unit}.attention")
        graph.insert_before(merge, mha)
        ir.convenience.replace_all_uses_with(merge.outputs[0], mha.outputs[0])
        for (old, _), new in zip(cache, mha.outputs[1:]):
            take_over(graph, old, new)
        return True


def _pack_projections(graph: ir.Graph, qkv: list[ir.Value], before: ir.Node, unit: str) -> list[ir.Value]:
    """Self-attention whose query, key and value are bare MatMuls of one input by three
    weights (T5): one MatMul by the concatenated weight, then a Split. Two fewer weight
    reads launched per layer; the same bytes."""
    nodes = [v.producer() for v in qkv]
    if any(n is None or n.op_type != "MatMul" for n in nodes):
        return qkv
    source = nodes[0].inputs[0]
    weights = [n.inputs[1] for n in nodes]
    if any(n.inputs[0] is not source for n in nodes) or any(
        w.const_value is None or len(w.uses()) != 1 for w in weights
    ):
        return qkv
    arrays = [w.const_value.numpy() for w in weights]
    packed = add_initializer(graph, f"{unit}.qkv.weight", np.concatenate(arrays, axis=1))
    split_sizes = add_initializer(graph, f"{unit}.qkv.split", np.array([a.shape[1] for a in arrays], dtype=np.int64))
    matmul = ir.node("MatMul", [source, packed], name=f"{unit}.qkv")
    split = ir.node("Split", [matmul.outputs[0], split_sizes], attributes={"axis": -1}, num_outputs=3,
                    name=f"{unit}.qkv_split")
    graph.insert_before(before, [matmul, split])
    return list(split.outputs)


def take_over(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """`new` replaces `old` everywhere, including as a named graph output."""
    for i, out in enumerate(graph.outputs):
        if out is old:
            name, shape, dtype = old.name, old.shape, old.type
            old.name = f"{name}.unfused"
            new.name, new.shape, new.type = name, shape, dtype
            graph.outputs[i] = new
    ir.convenience.replace_all_uses_with(old, new)
