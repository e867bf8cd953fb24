"""RED -> ONNX: an encoder graph, a decoder-step graph and, for a causal encoder, an
encoder-extend graph (the source encoded block by block, which the prefix cache reuses).

The encoder emits, per decoder layer, the source keys and values that layer attends to.
The decoder step takes one new token per row, those source keys/values as a read-only
prefix, and a preallocated target cache of which each row's first `cache_length` slots
are valid; it reads the cache in place and returns only the new token's keys/values,
which the runtime writes at the row's next slot (edgeseq/graph_spec.py: the wiring). With
share_parameters the two graphs name the same weights, which the artifact stores once.
"""

import torch

from edgeseq.graph_spec import PREFIX_BLOCK, GraphSpec, TensorSpec

from .base import FamilyExporter


def kv_pair(prefix: str, layer: str, heads: int, length, head_dim: int, **wiring) -> tuple[TensorSpec, TensorSpec]:
    """The key and value tensors `{prefix}_key.{layer}` / `{prefix}_value.{layer}`, [batch, H, length, Dh].

    Wiring fields naming another tensor (`source`, `init`) are given as its prefix and get
    the same key/value suffix (`source="new"` -> `new_key.0` feeds `past_key.0`)."""
    dims = ("batch", heads, length, head_dim)

    def one(kind: str) -> TensorSpec:
        named = {k: f"{v}_{kind}.{layer}" if k in ("source", "init") and v else v for k, v in wiring.items()}
        return TensorSpec(f"{prefix}_{kind}.{layer}", "float32", dims, **named)

    return one("key"), one("value")


def encoder_spec(c) -> GraphSpec:
    h, dh = c.n_heads, c.d_model // c.n_heads
    return GraphSpec(
        name="encoder",
        role="encoder",
        inputs=(
            TensorSpec("source_ids", "int64", ("batch", "source"), "token_ids", role="token_ids"),
            TensorSpec("source_mask", "int64", ("batch", "source"), "mask", role="mask"),
        ),
        outputs=tuple(t for i in range(c.n_layers) for t in kv_pair("source", i, h, "source", dh, role="encoder_output")),
    )


def decoder_step_spec(c) -> GraphSpec:
    """One new token per row against preallocated target caches (only read; the step
    returns the new keys/values and the runtime writes them at each row's slot)."""
    h, dh = c.n_heads, c.d_model // c.n_heads
    return GraphSpec(
        name="decoder_step",
        role="decoder_step",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", 1), "token_ids", role="token_ids"),
            TensorSpec("positions", "int64", ("batch", 1), "positions", role="positions"),
            TensorSpec("source_mask", "int64", ("batch", "source"), "mask", role="encoder_output", source="source_mask"),
            TensorSpec("cache_length", "int64", ("batch",), "lengths", role="cache_length"),
            *(t for i in range(c.n_layers) for t in kv_pair("source", i, h, "source", dh, role="encoder_output", source="source")),
            *(t for i in range(c.n_layers) for t in kv_pair("past", i, h, "cache", dh, role="cache", source="new")),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", 1, c.vocab_size), role="logits"),
            *(t for i in range(c.n_layers) for t in kv_pair("new", i, h, 1, dh, role="new_cache")),
        ),
    )


def encoder_extend_spec(c) -> GraphSpec:
    """A causal encoder over a block of source tokens after earlier ones, whose encoder
    keys/values it reads at their exact length (`enc_past_*`, each naming with `source` the
    output holding the block's entries): how the runtime encodes a source block by block,
    so that blocks restored from the prefix cache hold what it would compute."""
    h, dh = c.n_heads, c.d_model // c.n_heads
    return GraphSpec(
        name="encoder_extend",
        role="extend",
        inputs=(
            TensorSpec("source_ids", "int64", ("batch", "new"), "token_ids", role="token_ids"),
            TensorSpec("positions", "int64", ("batch", "new"), "positions", role="positions"),
            *(t for i in range(c.n_layers) for t in kv_pair("enc_past", i, h, "past", dh, role="cache", source="enc_new")),
        ),
        outputs=(
            *(t for i in range(c.n_layers) for t in kv_pair("enc_new", i, h, "new", dh, role="new_cache")),
            *(t for i in range(c.n_layers) for t in kv_pair("source", i, h, "new", dh, role="encoder_output")),
        ),
    )


class RedEncoderExtendGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source_ids, positions, *past):
        past = [(past[2 * i], past[2 * i + 1]) for i in range(self.model.config.n_layers)]
        new, source_kv = self.model.encode_extend(source_ids, positions, past)
        return (*(t for kv in new for t in kv), *(t for kv in source_kv for t in kv))


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

    def forward(self, input_ids, positions, source_mask, cache_length, *caches):
        n = self.model.config.n_layers
        source_kv = [(caches[2 * i], caches[2 * i + 1]) for i in range(n)]
        cache = [(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1]) for i in range(n)]
        logits, new_kv = self.model.decode_step(input_ids, positions, source_kv, source_mask, cache_length, cache)
        return (logits, *(t for kv in new_kv for t in kv))


class RedExporter(FamilyExporter):
    def __init__(self):
        super().__init__(family="red", atol=1e-4)

    def graph_specs(self, config) -> list[GraphSpec]:
        extend = [encoder_extend_spec(config)] if config.causal_encoder else []
        return [encoder_spec(config), *extend, decoder_step_spec(config)]

    def graph_module(self, model, spec):
        return {"encoder": RedEncoderGraph, "extend": RedEncoderExtendGraph,
                "decoder_step": RedDecoderStepGraph}[spec.role](model)

    def sequential_depth_per_token(self, config, split: bool) -> int:
        return config.n_layers

    def decode(self, config, split: bool) -> dict:
        decode = {"shape": "encoder_decoder", "once": "encoder", "step": ["decoder_step"]}
        if config.causal_encoder:  # a causal encoder's prefix states do not depend on what follows
            decode |= {"extend": "encoder_extend", "prefix_block": PREFIX_BLOCK}
        return decode

    def schedule(self, config, split: bool) -> list[dict]:
        encode = (["encoder_extend"], f"once per request, one call per {PREFIX_BLOCK} source tokens") \
            if config.causal_encoder else (["encoder"], "once per request")
        return [
            {"stage": "encode", "graphs": encode[0], "runs": encode[1]},
            {"stage": "decode", "graphs": ["decoder_step"], "runs": "once per generated token"},
        ]
