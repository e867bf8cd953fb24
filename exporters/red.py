"""RED -> ONNX: an encoder graph and a decoder-step graph.

The encoder emits, per decoder layer, the source keys and values that layer attends to.
The decoder step takes them as a read-only prefix beside its own target cache (which
may be zero-length on the first step) and returns the grown cache. With
share_parameters the two graphs name the same weights, which the artifact stores once.
"""

import torch

from .base import FamilyExporter, GraphSpec, TensorSpec


def _kv(prefix: str, i: int, length_dim: str, c) -> tuple[TensorSpec, TensorSpec]:
    dims = ("batch", c.n_heads, length_dim, c.d_model // c.n_heads)
    return (TensorSpec(f"{prefix}_key.{i}", "float32", dims), TensorSpec(f"{prefix}_value.{i}", "float32", dims))


def encoder_spec(c) -> GraphSpec:
    return GraphSpec(
        name="encoder",
        role="encoder",
        inputs=(
            TensorSpec("source_ids", "int64", ("batch", "source"), "token_ids"),
            TensorSpec("source_mask", "int64", ("batch", "source"), "mask"),
        ),
        outputs=tuple(t for i in range(c.n_layers) for t in _kv("source", i, "source", c)),
    )


def decoder_step_spec(c) -> GraphSpec:
    return GraphSpec(
        name="decoder_step",
        role="decoder_step",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "new"), "token_ids"),
            TensorSpec("positions", "int64", ("batch", "new"), "positions"),
            TensorSpec("source_mask", "int64", ("batch", "source"), "mask"),
            *(t for i in range(c.n_layers) for t in _kv("source", i, "source", c)),
            *(t for i in range(c.n_layers) for t in _kv("past", i, "past", c)),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", "new", c.vocab_size)),
            *(t for i in range(c.n_layers) for t in _kv("present", i, "total", c)),
        ),
    )


class RedEncoderGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source_ids, source_mask):
        source_kv, _ = self.model.encode(source_ids, source_mask)
        return tuple(t for kv in source_kv for t in kv)


class RedDecoderStepGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, source_mask, *caches):
        n = self.model.config.n_layers
        source_kv = [(caches[2 * i], caches[2 * i + 1]) for i in range(n)]
        past_kv = [(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1]) for i in range(n)]
        logits, present = self.model.decode(input_ids, positions, source_kv, source_mask, past_kv)
        return (logits, *(t for kv in present for t in kv))


class RedExporter(FamilyExporter):
    def __init__(self):
        super().__init__(family="red", atol=1e-4)

    def graph_specs(self, config) -> list[GraphSpec]:
        return [encoder_spec(config), decoder_step_spec(config)]

    def graph_module(self, model, spec):
        return {"encoder": RedEncoderGraph, "decoder_step": RedDecoderStepGraph}[spec.role](model)

    def sequential_depth_per_token(self, config, split: bool) -> int:
        return config.n_layers

    def schedule(self, config, split: bool) -> list[dict]:
        return [
            {"stage": "encode", "graphs": ["encoder"], "runs": "once per request"},
            {"stage": "decode", "graphs": ["decoder_step"], "runs": "once per generated token"},
        ]
