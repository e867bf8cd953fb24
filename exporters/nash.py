"""NASH (Hugging Face T5 / BART) -> ONNX: an encoder graph and one clean decoder-step graph,
plus the pruning plan: which heads, neurons and hidden dims the masks removed, by weight name.

The graphs have the same contract as RED's (exporters/red.py): the encoder returns each
decoder layer's cross-attention keys/values (`source_key.{l}`), the decoder step takes
them with preallocated self-attention caches of which each row's first `cache_length`
slots are valid, reads them in place and returns only the new token's keys/values.
No If node: the first step is the same graph with nothing valid in the cache.

The plan is data the strip pass (passes/strip_pruned.py) executes; it names initializers,
so the same plan applies to both graphs (cross keys/values are projected in the
encoder graph, queries and outputs in the decoder step).
"""

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from edgeseq.models.nash import NashCheckpoint, kept_units
from edgeseq.models.nash_masks import kept
from edgeseq.models.nash_modules import Attention, FeedForward, NashGraphs, Norm, Proj

from edgeseq.graph_spec import GraphSpec, TensorSpec

from .base import FamilyExporter
from .red import kv_pair

PREFIX = "nash"  # attribute holding NashGraphs in both graph modules; initializer names start with it


@dataclass
class NashExportConfig:
    """What the specs and example inputs need (vocab_size, max_positions) plus the sizes."""

    vocab_size: int
    max_positions: int
    decoder_layers: int
    decoder_heads: int
    head_dim: int
    length_layer: int | None  # a decoder layer whose self-attention survives pruning


@dataclass
class NashExportModel:
    """The export-side view of a NASH checkpoint."""

    checkpoint: NashCheckpoint
    graphs: NashGraphs
    config: NashExportConfig
    plan: dict[str, Any] = field(default_factory=dict)


# 0 / -inf per source token, from the encoder: the decoder steps' cross-attention adds it
NEG_INF = float(torch.finfo(torch.float32).min)
SOURCE_BIAS = TensorSpec("source_bias", "float32", ("batch", 1, 1, "source"), role="encoder_output")


def encoder_spec(c: NashExportConfig) -> GraphSpec:
    kv = lambda i: kv_pair("source", i, c.decoder_heads, "source", c.head_dim, role="encoder_output")  # noqa: E731
    return GraphSpec(
        name="encoder", role="encoder",
        inputs=(TensorSpec("source_ids", "int64", ("batch", "source"), "token_ids", role="token_ids"),
                TensorSpec("source_mask", "int64", ("batch", "source"), "mask", role="mask")),
        outputs=(*(t for i in range(c.decoder_layers) for t in kv(i)), SOURCE_BIAS),
    )


def decoder_step_spec(c: NashExportConfig) -> GraphSpec:
    n, h, dh = c.decoder_layers, c.decoder_heads, c.head_dim
    return GraphSpec(
        name="decoder_step", role="decoder_step",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "new"), "token_ids", role="token_ids"),
            TensorSpec("positions", "int64", ("batch", "new"), "positions", role="positions"),
            replace(SOURCE_BIAS, source="source_bias", pad=NEG_INF),
            TensorSpec("cache_length", "int64", ("batch",), "lengths", role="cache_length"),
            *(t for i in range(n) for t in kv_pair("source", i, h, "source", dh, role="encoder_output", source="source")),
            *(t for i in range(n) for t in kv_pair("past", i, h, "cache", dh, role="cache", source="new")),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", "new", c.vocab_size), role="logits"),
                 *(t for i in range(n) for t in kv_pair("new", i, h, "new", dh, role="new_cache"))),
    )


class NashEncoderGraph(torch.nn.Module):
    def __init__(self, graphs: NashGraphs):
        super().__init__()
        self.nash = graphs

    def forward(self, source_ids, source_mask):
        cross, source_bias = self.nash.encode(source_ids, source_mask)
        return (*(t for kv in cross for t in kv), source_bias)


class NashDecoderStepGraph(torch.nn.Module):
    def __init__(self, graphs: NashGraphs, length_layer: int | None):
        super().__init__()
        self.nash = graphs
        self.length_layer = length_layer

    def forward(self, input_ids, positions, source_bias, cache_length, *caches):
        n = self.nash.n_decoder
        cross = [(caches[2 * i], caches[2 * i + 1]) for i in range(n)]
        cache = [(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1]) for i in range(n)]
        logits, new_kv = self.nash.decode_step(input_ids, positions, source_bias, cross, cache_length, cache,
                                               self.length_layer)
        return (logits, *(t for kv in new_kv for t in kv))


# ----- the pruning plan -------------------------------------------------------------------
def _names(root: torch.nn.Module) -> dict[int, str]:
    return {id(p): f"{PREFIX}.{name}" for name, p in root.named_parameters()} | {
        id(b): f"{PREFIX}.{name}" for name, b in root.named_buffers()
    }


def _attention_unit(a: Attention, names, unit: str, heads: int, keep: list[int], caches: list[str]) -> dict:
    projections = (a.q, a.k, a.v)
    return {
        "unit": unit,
        "heads": heads,
        "head_dim": a.head_dim,
        "kept": keep,
        "head_columns": [names[id(p.weight)] for p in projections],
        "head_biases": [names[id(p.bias)] for p in projections if p.bias is not None],
        "head_rows": names[id(a.o.weight)],
        "out_bias": names[id(a.o.bias)] if a.o.bias is not None else None,
        "position_bias": a.position_bias,
        "caches": caches,
    }


def _ffn_unit(f: FeedForward, names, unit: str, size: int, keep: list[int]) -> dict:
    return {
        "unit": unit,
        "size": size,
        "kept": keep,
        "columns": [names[id(p.weight)] for p in f.inputs],
        "column_biases": [names[id(p.bias)] for p in f.inputs if p.bias is not None],
        "rows": names[id(f.output.weight)],
        "out_bias": names[id(f.output.bias)] if f.output.bias is not None else None,
    }


def hidden_axes(graphs: NashGraphs, names) -> list[tuple[str, int]]:
    """Every initializer with a d_model axis, and which axis it is."""
    out = []
    for module in graphs.modules():
        if isinstance(module, Attention):
            out += [(names[id(p.weight)], 0) for p in (module.q, module.k, module.v)]
            out += [(names[id(module.o.weight)], 1)] + ([(names[id(module.o.bias)], 0)] if module.o.bias is not None else [])
        elif isinstance(module, FeedForward):
            out += [(names[id(p.weight)], 0) for p in module.inputs]
            out += [(names[id(module.output.weight)], 1)]
            out += [(names[id(module.output.bias)], 0)] if module.output.bias is not None else []
        elif isinstance(module, Norm):
            out += [(names[id(module.weight)], 0)] + ([(names[id(module.bias)], 0)] if module.bias is not None else [])
    out.append((names[id(graphs.lm_head)], 0))
    for table in ("embed", "encoder_positions", "decoder_positions"):
        if hasattr(graphs, table):
            out.append((names[id(getattr(graphs, table))], 1))
    return out


def pruning_plan(graphs: NashGraphs, ckpt: NashCheckpoint) -> dict[str, Any]:
    """What the masks removed, by initializer name (JSON-able; stored in the manifest)."""
    names = _names(graphs)
    m, d = ckpt.masks, ckpt.dims
    attention, ffn = [], []
    for i, (attn, feed) in enumerate(graphs.encoder_layers):
        attention.append(_attention_unit(attn.fn, names, f"encoder.{i}.self_attention", d.encoder_heads,
                                         kept_units(m, "head_z", "head_layer_z", i, d.encoder_heads), []))
        ffn.append(_ffn_unit(feed.fn, names, f"encoder.{i}.ffn", d.encoder_ffn,
                             kept_units(m, "intermediate_z", "mlp_z", i, d.encoder_ffn)))
    for i, (self_attn, cross, feed) in enumerate(graphs.decoder_layers):
        attention.append(_attention_unit(
            self_attn.fn, names, f"decoder.{i}.self_attention", d.decoder_heads,
            kept_units(m, "dec_self_head_z", "dec_self_head_layer_z", i, d.decoder_heads),
            [f"past_key.{i}", f"past_value.{i}", f"new_key.{i}", f"new_value.{i}"]))
        attention.append(_attention_unit(
            cross.fn, names, f"decoder.{i}.cross_attention", d.decoder_heads,
            kept_units(m, "dec_cross_head_z", "dec_cross_head_layer_z", i, d.decoder_heads),
            [f"source_key.{i}", f"source_value.{i}"]))
        ffn.append(_ffn_unit(feed.fn, names, f"decoder.{i}.ffn", d.decoder_ffn,
                             kept_units(m, "dec_intermediate_z", "dec_mlp_z", i, d.decoder_ffn)))
    hidden = None
    if "hidden_z" in m and bool((m["hidden_z"] == 0).any()):
        hidden = {"size": d.d_model, "kept": kept(m["hidden_z"], d.d_model), "axes": hidden_axes(graphs, names)}
    return {"attention": attention, "ffn": ffn, "hidden": hidden}


def plan_summary(plan: dict[str, Any]) -> dict[str, Any]:
    """Kept heads per attention sublayer and kept width per FFN, for `edgeseq inspect`."""
    return {
        "heads": {u["unit"]: f"{len(u['kept'])}/{u['heads']}" for u in plan["attention"]},
        "ffn": {u["unit"]: f"{len(u['kept'])}/{u['size']}" for u in plan["ffn"]},
        "hidden": f"{len(plan['hidden']['kept'])}/{plan['hidden']['size']}" if plan.get("hidden") else "all",
    }


def prepare(ckpt: NashCheckpoint) -> NashExportModel:
    """Build the export modules and the plan for a loaded (folded) checkpoint."""
    graphs = NashGraphs(ckpt.model).eval()
    for p in graphs.parameters():
        p.requires_grad_(False)
    plan = pruning_plan(graphs, ckpt)
    self_kept = [u for u in plan["attention"] if u["unit"].endswith("self_attention") and u["unit"].startswith("decoder")]
    length_layer = next((i for i, u in enumerate(self_kept) if u["kept"]), None)
    c = ckpt.config
    config = NashExportConfig(
        vocab_size=c.vocab_size,
        max_positions=getattr(c, "max_position_embeddings", 1 << 20) if c.model_type == "bart" else 1 << 20,
        decoder_layers=ckpt.dims.decoder_layers,
        decoder_heads=ckpt.dims.decoder_heads,
        head_dim=ckpt.dims.head_dim,
        length_layer=length_layer,
    )
    return NashExportModel(ckpt, graphs, config, plan)


def runtime_config(model: NashExportModel) -> dict[str, Any]:
    """The manifest's model_config: what the torch-free runtime needs to decode."""
    c = model.checkpoint.config
    d = model.checkpoint.dims
    return {
        "arch": model.checkpoint.arch,
        "variant": model.checkpoint.variant,
        "vocab_size": c.vocab_size,
        "d_model": d.d_model,
        "n_layers": d.decoder_layers,
        "encoder_layers": d.encoder_layers,
        "decoder_layers": d.decoder_layers,
        "pad_token_id": c.pad_token_id,
        "eos_token_id": c.eos_token_id,
        "bos_token_id": c.decoder_start_token_id,  # what the decoder starts from
        "max_positions": model.config.max_positions,
        "consecutive_positions": False,  # the decoder counts its own positions from 0
    }


class NashExporter(FamilyExporter):
    def __init__(self):
        super().__init__(family="nash", atol=1e-4)

    def graph_specs(self, config) -> list[GraphSpec]:
        return [encoder_spec(config), decoder_step_spec(config)]

    def graph_module(self, model: NashExportModel, spec):
        if spec.role == "encoder":
            return NashEncoderGraph(model.graphs)
        return NashDecoderStepGraph(model.graphs, model.config.length_layer)

    def sequential_depth_per_token(self, config, split: bool) -> int:
        return config.decoder_layers

    def decode(self, config, split: bool) -> dict:
        return {"shape": "encoder_decoder", "once": "encoder", "step": ["decoder_step"]}

    def schedule(self, config, split: bool) -> list[dict]:
        return [
            {"stage": "encode", "graphs": ["encoder"], "runs": "once per request"},
            {"stage": "decode", "graphs": ["decoder_step"], "runs": "once per generated token"},
        ]


__all__ = ["NashExporter", "Proj", "prepare", "runtime_config", "plan_summary"]
