"""StripPrunedUnitsPass: physically remove pruned heads, FFN neurons, sublayers and hidden dims.

It executes a pruning plan (exporters/nash.py `pruning_plan`, or `infer_kept` for graphs
exported elsewhere): per attention sublayer the initializers holding its heads and the
heads to keep; per FFN its neuron-carrying initializers and the neurons to keep;
optionally the hidden dims to keep and every (initializer, axis) that carries them.

- Kept heads: query/key/value columns and biases and output-projection rows are
  sliced; T5 layers gain a Gather of their kept heads from the shared relative
  position bias; the merge-heads Reshape gets its new width; the layer's cache inputs and
  outputs get their new head count. Every layer may keep different heads.
- No kept heads / neurons: the sublayer is cut out at its residual Add (its output
  bias, if non-zero, is kept as a constant); its caches leave the graph's inputs and
  outputs; what no longer feeds an output is removed.
- Hidden dims: every listed initializer is sliced on its hidden axis; norms then
  average over the kept dims, as the materialised NASH model does.

Requires: initializers named as in the plan (names absent from a graph are skipped, so
one plan serves the encoder and the decoder step), at their unpruned widths, and kept
indices inside them. Ensures: no input or output that was not there before (removed
units' caches leave), each kept attention's query projection as wide as its kept heads,
and (the compile's parity check) the same outputs as the folded model.
"""

from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from edgeseq.errors import PassError

from .contracts import ContractPass, postcondition, precondition


def _slice(value: ir.Value, index: list[int], axis: int) -> None:
    array = np.take(value.const_value.numpy(), index, axis=axis)
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(array.shape)


def _slice_own(value: ir.Value, index: list[int], axis: int, unit: str) -> None:
    """_slice for a tensor only this unit reads: one read by other nodes too (equal weights
    merged into one initializer by some optimizer) must not change under them."""
    readers = {id(node) for node, _ in value.uses()}
    if len(readers) > 1:
        raise PassError(f"{unit}: {value.name} is read by {len(readers)} nodes; slicing it for this unit would "
                        "change the others", "export without merging equal initializers (edgeseq's exporter does not merge them)")
    _slice(value, index, axis)


def _head_index(kept: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + j for h in kept for j in range(head_dim)]


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer holding `array` (of its own dtype and shape), registered in `graph`."""
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def remove_unused(model: ir.Model) -> None:
    """Drop the nodes nothing reads, then the initializers nothing reads (weights a rewrite
    replaced); graph outputs stay."""
    graph = model.graph
    common.RemoveUnusedNodesPass()(model)
    for name in [n for n, v in graph.initializers.items() if not v.uses() and v not in graph.outputs]:
        graph.initializers.pop(name)


def bias_add(value: ir.Value, columns: int) -> tuple[ir.Node, ir.Value] | None:
    """The Add that alone reads `value` and adds a constant bias vector of `columns`
    entries to it, and that bias; else None (a projection's bias, for a kernel to absorb)."""
    add = sole_consumer(value, "Add")
    if add is None:
        return None
    bias = next((v for v in add.inputs if v is not value), None)
    tensor = ir.convenience.get_const_tensor(bias) if bias is not None else None
    if tensor is None or list(tensor.shape) != [columns]:
        return None
    return add, bias


def sole_consumer(value: ir.Value, op: str | None = None) -> ir.Node | None:
    """The one node reading `value` (of type `op`, if given), or None."""
    users = [node for node, _ in value.uses()]
    if len(users) != 1 or (op is not None and users[0].op_type != op):
        return None
    return users[0]


def _only_consumer(value: ir.Value, op: str | None, unit: str) -> ir.Node:
    """sole_consumer, or a PassError naming what the plan expected."""
    node = sole_consumer(value, op)
    if node is None:
        found = ", ".join(n.op_type for n, _ in value.uses()) or "nothing"
        raise PassError(f"{unit}: expected one {op} after {value.name}, found {found}",
                        "the graph does not have the layout this plan describes; re-export it with edgeseq")
    return node


def _width(graph: ir.Graph, name: str, axis: int) -> int | None:
    value = graph.initializers.get(name)
    return value.const_value.shape[axis] if value is not None and value.const_value is not None else None


class StripPrunedUnitsPass(ContractPass):
    keeps_interface = False  # removed units' caches leave the graph (checked in ensures)

    def __init__(self, plan: dict[str, Any]):
        super().__init__()
        self.plan = plan
        self._io: dict[int, set[str]] = {}

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        graph = model.graph
        for unit in self.plan.get("attention", []):
            width, full = _width(graph, unit["head_columns"][0], 1), unit["heads"] * unit["head_dim"]
            if width is not None and width != full:
                raise precondition(f"{unit['unit']}: the query projection is {width} wide, not {unit['heads']} heads "
                                   f"of {unit['head_dim']}: the graph is stripped already or the plan is another model's",
                                   "strip the graph the plan was made from, once")
            if any(not 0 <= h < unit["heads"] for h in unit["kept"]):
                raise precondition(f"{unit['unit']}: kept heads {unit['kept']} outside 0..{unit['heads'] - 1}")
        for unit in self.plan.get("ffn", []):
            width = _width(graph, unit["rows"], 0)
            if width is not None and (width != unit["size"] or any(not 0 <= i < width for i in unit["kept"])):
                raise precondition(f"{unit['unit']}: the FFN is {width} wide, the plan says {unit['size']} "
                                   f"(kept up to {max(unit['kept'], default=-1)})", "strip the graph the plan was made from, once")
        self._io[id(model)] = {v.name for v in [*graph.inputs, *graph.outputs]}

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        graph = model.graph
        before = self._io.pop(id(model), None)
        new = sorted({v.name for v in [*graph.inputs, *graph.outputs]} - before) if before is not None else []
        if new:
            raise postcondition(f"the strip added graph inputs or outputs: {', '.join(new[:3])}")
        for unit in self.plan.get("attention", []):
            width = _width(graph, unit["head_columns"][0], 1)
            if width is not None and unit["kept"] and width != len(unit["kept"]) * unit["head_dim"]:
                raise postcondition(f"{unit['unit']}: the query projection is {width} wide after the strip, "
                                    f"not {len(unit['kept'])} kept heads of {unit['head_dim']}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.graph = graph
        self.inits = graph.initializers
        modified = False
        for unit in self.plan.get("attention", []):
            if len(unit["kept"]) < unit["heads"]:
                self.count(int(unit["head_rows"] in self.inits or unit["head_columns"][0] in self.inits))
                modified |= self._strip_attention(graph, unit)
        for unit in self.plan.get("ffn", []):
            if len(unit["kept"]) < unit["size"]:
                self.count(int(unit["rows"] in self.inits))
                modified |= self._strip_ffn(unit)
        hidden = self.plan.get("hidden")
        if hidden and len(hidden["kept"]) < hidden["size"]:
            for name, axis in hidden["axes"]:
                if name in self.inits:
                    _slice(self.inits[name], hidden["kept"], axis)
                    modified = True
        if modified:
            _forget_inner_shapes(graph)
            common.RemoveUnusedNodesPass()(model)
            _drop_unused_inputs(graph)
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)

    # ----- attention ------------------------------------------------------------------------
    def _strip_attention(self, graph: ir.Graph, unit: dict) -> bool:
        kept, dh = unit["kept"], unit["head_dim"]
        if not kept:
            if unit["head_rows"] in self.inits:
                self._cut_sublayer(unit["head_rows"], unit["out_bias"], unit["unit"])
            _drop_io(graph, unit["caches"])
            return True
        columns = _head_index(kept, dh)
        for name in unit["head_columns"]:
            if name in self.inits:
                _slice_own(self.inits[name], columns, 1, unit["unit"])
        for name in unit["head_biases"]:
            if name in self.inits:
                _slice_own(self.inits[name], columns, 0, unit["unit"])
        if unit["head_rows"] in self.inits:
            rows = self.inits[unit["head_rows"]]
            self._retarget_merge(rows, unit["heads"] * dh, len(kept) * dh, unit["unit"])
            _slice_own(rows, columns, 0, unit["unit"])
        query = unit["head_columns"][0]
        if unit.get("position_bias") and query in self.inits:
            self._select_bias_heads(self.inits[query], kept, unit["unit"])
        for io in [*graph.inputs, *graph.outputs]:
            if io.name in unit["caches"] and io.shape is not None:
                io.shape = ir.Shape([len(kept) if i == 1 else d for i, d in enumerate(io.shape)])
        return True

    def _retarget_merge(self, rows: ir.Value, old: int, new: int, unit: str) -> None:
        """The Reshape that merges heads before the output projection names the width
        (heads x head_dim) as a constant: give it the kept width."""
        matmul = _only_consumer(rows, "MatMul", unit)
        merge = matmul.inputs[0].producer()
        if merge is None or merge.op_type != "Reshape":
            return  # a width the runtime infers needs no change
        shape_value = merge.inputs[1]
        if shape_value.const_value is not None:
            shape = shape_value.const_value.numpy().copy()
            shape[shape == old] = new
            merge.replace_input_with(1, self._constant(shape, f"{shape_value.name}.{unit}.kept"))
            return
        concat = shape_value.producer()
        if concat is None or concat.op_type != "Concat":
            raise PassError(f"{unit}: cannot read the merge-heads shape before {rows.name}",
                            "re-export the graph with edgeseq")
        # the optimizer shares one shape Concat between layers: give this layer its own
        parts = list(concat.inputs)
        for i, part in enumerate(parts):
            if part is not None and part.const_value is not None and old in part.const_value.numpy():
                array = part.const_value.numpy().copy()
                array[array == old] = new
                parts[i] = self._constant(array, f"{part.name}.{unit}.kept")
        own = ir.node("Concat", parts, attributes={"axis": 0}, name=f"{unit}.merge_shape")
        self.graph.insert_before(merge, own)
        merge.replace_input_with(1, own.outputs[0])

    def _select_bias_heads(self, query: ir.Value, kept: list[int], unit: str) -> None:
        """T5: layer 0 computes the relative position bias for all heads and every layer
        adds it to its scores; this layer must add only the rows of its kept heads.
        Follows the query from its projection to its Softmax; the Add feeding it adds the bias
        (the scores over a cache and the new token's own score are concatenated first)."""
        softmax = _first_downstream(_only_consumer(query, "MatMul", unit).outputs[0], "Softmax")
        node = softmax.inputs[0].producer() if softmax is not None else None
        if node is None or node.op_type != "Add":
            raise PassError(f"{unit}: expected the position-bias Add before the attention softmax, "
                            f"found {node.op_type if node else 'none'}", "re-export the graph with edgeseq")
        # the bias is the operand not computed from this layer's query
        from_query = _downstream_ids(_only_consumer(query, "MatMul", unit).outputs[0])
        slot = 1 if node.inputs[0].producer() is not None and id(node.inputs[0].producer()) in from_query else 0
        index = self._constant(np.array(kept), f"{unit}.kept_heads")
        gather = ir.node("Gather", [node.inputs[slot], index], attributes={"axis": 1}, name=f"{unit}.bias_heads")
        self.graph.insert_before(node, gather)
        node.replace_input_with(slot, gather.outputs[0])

    # ----- feed-forward ---------------------------------------------------------------------
    def _strip_ffn(self, unit: dict) -> bool:
        kept = unit["kept"]
        if not kept:
            if unit["rows"] in self.inits:
                self._cut_sublayer(unit["rows"], unit["out_bias"], unit["unit"])
            return True
        for name in unit["columns"]:
            if name in self.inits:
                _slice_own(self.inits[name], kept, 1, unit["unit"])
        for name in unit["column_biases"]:
            if name in self.inits:
                _slice_own(self.inits[name], kept, 0, unit["unit"])
        if unit["rows"] in self.inits:
            _slice_own(self.inits[unit["rows"]], kept, 0, unit["unit"])
        return True

    def _constant(self, array: np.ndarray, name: str) -> ir.Value:
        """A new int64 initializer (shared constants are replaced, never edited in place)."""
        return add_initializer(self.graph, name, array.astype(np.int64))

    # ----- whole sublayers ------------------------------------------------------------------
    def _cut_sublayer(self, out_weight: str, out_bias: str | None, unit: str) -> None:
        """Replace the sublayer's output by its (constant) output bias, or cut the residual
        Add so the stream passes straight through."""
        matmul = _only_consumer(self.inits[out_weight], "MatMul", unit)
        out = matmul.outputs[0]
        bias = self.inits.get(out_bias) if out_bias else None
        if bias is not None:
            add_bias = _only_consumer(out, "Add", unit)
            if np.any(bias.const_value.numpy() != 0):
                ir.convenience.replace_all_uses_with(add_bias.outputs[0], bias)
                return
            out = add_bias.outputs[0]
        residual_add = _only_consumer(out, "Add", unit)
        stream = next(v for v in residual_add.inputs if v is not out)
        ir.convenience.replace_all_uses_with(residual_add.outputs[0], stream)


def _downstream_ids(start: ir.Value, limit: int = 64) -> set[int]:
    """ids of the nodes reached from `start` (at most `limit`), breadth first."""
    seen: set[int] = set()
    work = [start]
    while work and len(seen) < limit:
        for node, _ in work.pop(0).uses():
            if id(node) not in seen:
                seen.add(id(node))
                work.extend(node.outputs)
    return seen


def _first_downstream(start: ir.Value, op: str, limit: int = 64) -> ir.Node | None:
    """The first node of type `op` reached from `start`, breadth first (None past `limit`)."""
    seen: set[int] = set()
    work = [start]
    while work and len(seen) < limit:
        for node, _ in work.pop(0).uses():
            if node.op_type == op:
                return node
            if id(node) not in seen:
                seen.add(id(node))
                work.extend(node.outputs)
    return None


def _drop_io(graph: ir.Graph, names: list[str]) -> None:
    """Remove a removed sublayer's cache outputs now and mark its inputs for removal."""
    for i in reversed(range(len(graph.outputs))):
        if graph.outputs[i].name in names:
            graph.outputs.pop(i)


def _drop_unused_inputs(graph: ir.Graph) -> None:
    """Inputs for what the pass removed (caches, cross keys/values, the padding bias they
    needed) leave the graph's signature once nothing reads them."""
    for i in reversed(range(len(graph.inputs))):
        value = graph.inputs[i]
        if not value.uses() and (value.name.startswith(("past_", "source_key", "source_value", "source_bias"))):
            graph.inputs.pop(i)


def _forget_inner_shapes(graph: ir.Graph) -> None:
    """Shapes the exporter recorded for intermediate values may now be wrong; ONNX Runtime
    infers them again (a stale one would be an error)."""
    outputs = {id(v) for v in graph.outputs}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None


# ----- graphs from elsewhere: what the zeros say --------------------------------------------
def _all_zero(arrays: list[np.ndarray]) -> bool:
    return all(not np.any(a) for a in arrays)


def infer_kept(models: list[ir.Model], plan: dict[str, Any]) -> dict[str, Any]:
    """Fill each unit's `kept` from all-zero weight slices (a folded model's pruned units),
    reading each initializer from whichever graph holds it."""
    arrays = {}
    for model in models:
        for name, value in model.graph.initializers.items():
            if value.const_value is not None:
                arrays.setdefault(name, value.const_value)

    def get(name):
        return arrays[name].numpy() if name and name in arrays else None

    for unit in plan["attention"]:
        dh, keep = unit["head_dim"], []
        v_cols, v_bias, rows = get(unit["head_columns"][2]), None, get(unit["head_rows"])
        if len(unit["head_biases"]) == 3:
            v_bias = get(unit["head_biases"][2])
        for h in range(unit["heads"]):
            part = slice(h * dh, (h + 1) * dh)
            dead_v = v_cols is not None and _all_zero([v_cols[:, part]] + ([v_bias[part]] if v_bias is not None else []))
            dead_o = rows is not None and _all_zero([rows[part]])
            if not (dead_v or dead_o):
                keep.append(h)
        unit["kept"] = keep
    for unit in plan["ffn"]:
        rows = get(unit["rows"])
        columns = [get(n) for n in unit["columns"]]
        biases = [get(n) for n in unit["column_biases"]]
        keep = []
        for i in range(unit["size"]):
            dead_out = rows is not None and _all_zero([rows[i]])
            dead_in = all(c is not None for c in columns) and _all_zero(
                [c[:, i] for c in columns] + [b[i : i + 1] for b in biases if b is not None])
            if not (dead_out or dead_in):
                keep.append(i)
        unit["kept"] = keep
    return plan
