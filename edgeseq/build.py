"""Write an artifact folder from exported graphs: graphs, one deduplicated weights file, manifest.

Every distinct weight (by content) is written once to weights.bin, 64-byte aligned; each
graph's initializers point into it as ONNX external data, and the manifest maps each
graph's initializer names to the shared tensor records so the runtime loads each once.
Tiny constants and int64 tensors (shapes, split sizes, indices) stay inline in their graph.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeseq import __version__
from edgeseq.graph_spec import STEP_ROLES, ExportedGraph
from edgeseq.runtimes.artifact import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHT_ALIGNMENT,
    WEIGHTS_FILE,
    sha256_file,
)

INLINE_BELOW_BYTES = 64


class WeightStore:
    """Appends distinct tensors to one file and hands back their records."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.offset = 0
        self.tensors: dict[str, dict[str, Any]] = {}

    def add(self, array: np.ndarray) -> str:
        data = np.ascontiguousarray(array)
        raw = data.tobytes()
        key = hashlib.sha256(raw + str((data.dtype.str, data.shape)).encode()).hexdigest()[:16]
        if key not in self.tensors:
            pad = -self.offset % WEIGHT_ALIGNMENT
            self.file.write(b"\0" * pad)
            self.offset += pad
            self.tensors[key] = {
                "offset": self.offset, "bytes": len(raw), "dtype": data.dtype.str, "shape": list(data.shape),
            }
            self.file.write(raw)
            self.offset += len(raw)
        return key

    def close(self) -> None:
        self.file.close()


def externalize(graph: ExportedGraph, store: WeightStore, folder: Path) -> dict[str, str]:
    """Move a graph's initializers into the store; returns initializer name -> tensor key."""
    names = {}
    for value in graph.model.graph.initializers.values():
        tensor = value.const_value
        # integer tensors are shapes, sizes and indices (ONNX Runtime's shape inference reads
        # a Split's sizes at load time, and cannot from external data): they stay inline
        if tensor is None or tensor.nbytes < INLINE_BELOW_BYTES or tensor.dtype == ir.DataType.INT64:
            continue
        key = store.add(tensor.numpy())
        record = store.tensors[key]
        value.const_value = ir.ExternalTensor(
            WEIGHTS_FILE, record["offset"], record["bytes"], tensor.dtype,
            shape=tensor.shape, name=value.name, base_dir=folder,
        )
        names[value.name] = key
    return names


def matmul_weight_elements(model: ir.Model) -> int:
    """Multiply-adds per new token spent on weights: MatMuls whose right operand is a weight
    (int8 ones included)."""
    total = 0
    for node in model.graph:
        if node.op_type in ("MatMul", "Gemm", "DynamicQuantizeMatMul") and len(node.inputs) > 1:
            right = node.inputs[1]
            if right is not None and right.is_initializer() and right.shape is not None:
                total += int(np.prod([int(d) for d in right.shape]))
    return total


def bytes_read_per_token(model: ir.Model) -> int:
    """Weight bytes one decode step reads at batch 1: every initializer except lookup tables,
    of which a Gather reads one row (negligible)."""
    total = 0
    for value in model.graph.initializers.values():
        consumers = [node.op_type for node, _ in value.uses()]
        if value.const_value is not None and consumers and any(op != "Gather" for op in consumers):
            total += value.const_value.nbytes
    return total


def step_graphs(graphs: list[ExportedGraph]) -> list[ExportedGraph]:
    """The graphs a generated token runs through."""
    return [g for g in graphs if g.spec.role in STEP_ROLES]


def graph_stats(graphs: list[ExportedGraph]) -> dict[str, int]:
    """Parameters (each named weight once) and per-token work of a set of graphs; compile
    records them before and after pruning."""
    seen: dict[str, int] = {}
    for g in graphs:
        for name, value in g.model.graph.initializers.items():
            if value.const_value is not None and value.const_value.dtype.is_floating_point():
                seen[name] = int(np.prod([int(d) for d in value.const_value.shape]))
    steps = step_graphs(graphs)
    encoders = [g for g in graphs if g.spec.role == "encoder"]
    return {
        "parameters": sum(seen.values()),
        "weight_bytes_per_token": sum(bytes_read_per_token(g.model) for g in steps),
        "flops_per_token": 2 * sum(matmul_weight_elements(g.model) for g in steps),
        "encoder_flops_per_source_token": 2 * sum(matmul_weight_elements(g.model) for g in encoders),
    }


def write_artifact(
    folder: Path,
    family: str,
    model_config: dict[str, Any],
    graphs: list[ExportedGraph],
    target: str,
    precision: str,
    decode: dict[str, Any],
    schedule: list[dict[str, Any]],
    depth_per_token: int,
) -> dict[str, Any]:
    """Write everything but the parity report into `folder` (which must exist and be empty)."""
    store = WeightStore(folder / WEIGHTS_FILE)
    manifest_graphs = {}
    per_graph_bytes = {}
    try:
        for g in graphs:
            initializers = externalize(g, store, folder)
            file = f"{g.spec.name}.onnx"
            ir.save(g.model, folder / file)
            manifest_graphs[g.spec.name] = {**g.spec.to_json(file), "initializers": initializers}
            per_graph_bytes[g.spec.name] = sum(store.tensors[k]["bytes"] for k in set(initializers.values()))
    finally:
        store.close()
    work = graph_stats(graphs)
    stats = {
        "parameters": int(sum(np.prod(t["shape"]) for t in store.tensors.values())),
        "weight_bytes": int(sum(t["bytes"] for t in store.tensors.values())),
        "weight_bytes_per_graph": per_graph_bytes,
        # at batch 1 the decoder step multiplies each weight once: 2 FLOPs per element
        "weight_bytes_per_token": work["weight_bytes_per_token"],
        "flops_per_token": work["flops_per_token"],
        "attention_flops_per_context_token": 4 * model_config["d_model"] * model_config["n_layers"],
        "weight_bytes_per_token_per_graph": {g.spec.name: bytes_read_per_token(g.model) for g in step_graphs(graphs)},
        "sequential_depth_per_token": depth_per_token,
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "edgeseq_version": __version__,
        "family": family,
        "model_config": model_config,
        "target": target,
        "precision": precision,
        "graphs": manifest_graphs,
        "decode": decode,
        "weights": {"file": WEIGHTS_FILE, "tensors": store.tensors},
        "schedule": schedule,
        "stats": stats,
        "parity": None,
        "files": {},
    }
    if precision == "int8":  # the runtime picks 8 or 7 bits for the CPU it runs on (runtimes/cpu_features.py)
        from edgeseq.passes.quantize_weights import STORED_BITS

        manifest["int8_weights"] = {"stored_bits": STORED_BITS}
    write_manifest(folder, manifest)
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """(Re)write manifest.json with the checksum of every other file in the folder."""
    manifest["files"] = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
