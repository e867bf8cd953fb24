"""Plain torch modules that re-express a folded transformers T5/BART for a clean export.

transformers' own forward carries cache objects, optional paths and flags that would
trace into a graph with dead branches; these modules take the weights (pre-transposed
to [in, out] so every initializer keeps a name the pruning plan can point at) and
compute exactly the same function with explicit tensors:

- the encoder graph returns, for every decoder layer, the cross-attention keys and
  values (computed once per request from the encoder output);
- the encoder also returns the source's padding bias, so that no decoder step recomputes it;
- the decoder step takes new token ids, their positions, that bias, the cross
  keys/values and a preallocated self-attention cache per layer (read in place; the
  step returns the new keys/values, models/layers.py `attend_cached`).

Heads are split with a -1 head count, so that stripping heads (passes/strip_pruned.py)
is a matter of slicing initializers, re-targeting the merge of heads and, for T5,
selecting each layer's kept heads from the shared relative position bias.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import attend_cached

NEG_INF = torch.finfo(torch.float32).min



def t5_scales_decoder_outputs(config) -> bool:
    """Whether the installed transformers' T5 multiplies the decoder output by d_model ** -0.5
    before the LM head. transformers 5 reads `scale_decoder_outputs` (and may save a v1.1
    checkpoint with `tie_word_embeddings: true`, its head still untied and unscaled); 4.x
    scales exactly when the embeddings are tied. Mirror the library that runs the reference."""
    from transformers import T5Config

    if hasattr(T5Config(), "scale_decoder_outputs"):  # a default config has it only in 5.x
        return bool(config.scale_decoder_outputs)
    return bool(config.tie_word_embeddings)

class Proj(nn.Module):
    """y = x @ weight (+ bias), weight [in, out], copied from an nn.Linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x):
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


class Norm(nn.Module):
    """T5's RMS norm (no mean, no bias) or BART's LayerNorm, from the transformers module."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.rms = not isinstance(norm, nn.LayerNorm)
        self.bias = None if self.rms else nn.Parameter(norm.bias.detach().clone())
        self.eps = norm.variance_epsilon if self.rms else norm.eps

    def forward(self, x):
        if self.rms:  # x / sqrt(...) (not rsqrt): the pattern ONNX Runtime fuses into one kernel
            return self.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class Attention(nn.Module):
    def __init__(self, unit, scale: float, position_bias: bool):
        super().__init__()
        self.q, self.k, self.v, self.o = Proj(unit.q), Proj(unit.k), Proj(unit.v), Proj(unit.o)
        self.head_dim = unit.head_dim
        self.scale = scale
        # T5 self-attention adds a bias with a heads axis (shared by every layer); the strip
        # pass gives each layer a Gather of its own kept heads from it
        self.position_bias = position_bias

    def split(self, x):  # [B, T, H*Dh] -> [B, H, T, Dh]
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)

    def keys_values(self, x):
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(self, x, key, value, bias):
        q = self.split(self.q(x) * self.scale if self.scale != 1.0 else self.q(x))
        scores = q @ key.transpose(-1, -2)  # [B, H, Tq, Tk]
        probs = torch.softmax(scores + bias, dim=-1)
        ctx = (probs @ value).transpose(1, 2)  # [B, Tq, H, Dh]
        return self.o(ctx.reshape(ctx.shape[0], ctx.shape[1], -1))


    def step(self, x, cache_k, cache_v, k_new, v_new, bias):
        """One new token per row: attention over a preallocated cache (read in place) and
        itself, in one softmax; bias [B, H|1, 1, C+1] masks the unused slots (and holds
        T5's relative positions), the new token's last."""
        q = self.split(self.q(x) * self.scale if self.scale != 1.0 else self.q(x))
        ctx = attend_cached(q, k_new, v_new, [(cache_k, cache_v, None)], scale=1.0, bias=bias).transpose(1, 2)
        return self.o(ctx.reshape(ctx.shape[0], ctx.shape[1], -1))


class FeedForward(nn.Module):
    def __init__(self, unit, act: nn.Module):
        super().__init__()
        self.inputs = nn.ModuleList(Proj(x) for x in unit.inputs)
        self.output = Proj(unit.output)
        self.act = act

    def forward(self, x):
        h = self.act(self.inputs[0](x))
        if len(self.inputs) == 2:  # T5 v1.1: gated
            h = h * self.inputs[1](x)
        return self.output(h)


class Sublayer(nn.Module):
    """x + f(norm(x)) (T5, pre-norm) or norm(x + f(x)) (BART, post-norm)."""

    def __init__(self, fn: nn.Module, norm: nn.Module, pre_norm: bool):
        super().__init__()
        self.fn, self.norm, self.pre_norm = fn, Norm(norm), pre_norm

    def inner(self, x):
        """What the sublayer's function reads."""
        return self.norm(x) if self.pre_norm else x

    def close(self, x, y):
        """Add the function's output y back onto the residual stream x."""
        return x + y if self.pre_norm else self.norm(x + y)

    def forward(self, x, *args):
        return self.close(x, self.fn(self.inner(x), *args))

    def self_attend(self, x, bias):
        """Self-attention over x itself (the encoder). Returns the new residual stream and the
        keys/values attended to."""
        h = self.inner(x)
        k, v = self.fn.keys_values(h)
        return self.close(x, self.fn(h, k, v, bias)), (k, v)


    def self_attend_cached(self, x, cache, bias):
        """The deployed step's self-attention: returns the new residual stream and the new
        token's keys/values [B, H, 1, Dh], which the runtime writes into the cache."""
        h = self.inner(x)
        k, v = self.fn.keys_values(h)
        return self.close(x, self.fn.step(h, cache[0], cache[1], k, v, bias)), (k, v)


def padding_bias(mask):
    """[B, S] 1/0 -> [B, 1, 1, S] additive: 0 for a real token, NEG_INF for padding."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * NEG_INF


def over_queries(bias, queries: int):
    """[B, 1, 1, S] -> [B, 1, queries, S] (the fused attention kernel broadcasts the batch
    and head axes of its bias, not the query axis)."""
    return bias.expand(-1, -1, queries, -1)


def _t5_bucket(relative, bidirectional: bool, config):
    from transformers.models.t5.modeling_t5 import T5Attention

    return T5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=config.relative_attention_num_buckets,
        max_distance=config.relative_attention_max_distance,
    )


def _causal_bias_by_distance(bias, config):
    """T5's causal relative bias [buckets, H] as a lookup by distance, [max_distance + 2, H]:
    row 0 masks a future key, row d + 1 holds the bias of a key d positions back.

    Precomputed because the bucket formula (log, divide, clamp: ~25 kernels) would otherwise
    run at every decoder step; past max_distance the bucket no longer changes, so the
    distance is clamped and the table stays small."""
    back = torch.arange(config.relative_attention_max_distance + 1)
    rows = F.embedding(_t5_bucket(-back, False, config), bias)
    return torch.cat([torch.full((1, bias.shape[1]), NEG_INF), rows])


class NashGraphs(nn.Module):
    """Both graphs' computation for one folded transformers T5/BART model."""

    def __init__(self, hf):
        super().__init__()
        from .nash import hf_layout

        c = hf.config
        self.config = c
        self.t5 = c.model_type == "t5"
        layout = hf_layout(hf)
        self.n_decoder = len(layout.decoder_self)
        # the LM head as [D, V] for MatMul; the lookup table stays [V, D] (for a tied model
        # a second copy: a Gather through the transposed head traces into an anonymous one)
        self.lm_head = nn.Parameter(hf.lm_head.weight.detach().t().contiguous())
        self.embed = nn.Parameter(hf.get_input_embeddings().weight.detach().clone())
        if self.t5:
            self._init_t5(hf, layout)
        else:
            self._init_bart(hf, layout)

    def _init_t5(self, hf, layout):
        c = hf.config
        act = hf.encoder.block[0].layer[1].DenseReluDense.act
        pre = True
        self.encoder_layers = nn.ModuleList(
            nn.ModuleList([Sublayer(Attention(a, 1.0, True), b.layer[0].layer_norm, pre),
                           Sublayer(FeedForward(f, act), b.layer[1].layer_norm, pre)])
            for a, f, b in zip(layout.encoder_attention, layout.encoder_ffn, hf.encoder.block)
        )
        self.decoder_layers = nn.ModuleList(
            nn.ModuleList([Sublayer(Attention(s, 1.0, True), b.layer[0].layer_norm, pre),
                           Sublayer(Attention(x, 1.0, False), b.layer[1].layer_norm, pre),
                           Sublayer(FeedForward(f, act), b.layer[2].layer_norm, pre)])
            for s, x, f, b in zip(layout.decoder_self, layout.decoder_cross, layout.decoder_ffn, hf.decoder.block)
        )
        self.encoder_final = Norm(hf.encoder.final_layer_norm)
        self.decoder_final = Norm(hf.decoder.final_layer_norm)
        self.encoder_bias = nn.Parameter(hf.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.detach().clone())
        decoder_bias = hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.detach()
        self.decoder_bias_by_distance = nn.Parameter(_causal_bias_by_distance(decoder_bias, c))
        self.embed_scale = 1.0
        self.output_scale = c.d_model**-0.5 if t5_scales_decoder_outputs(c) else 1.0

    def _init_bart(self, hf, layout):
        c = hf.config
        m = hf.model
        act = m.encoder.layers[0].activation_fn

        def scale(unit):  # each attention by its own head size: encoder and decoder may differ
            return unit.head_dim ** -0.5

        self.encoder_layers = nn.ModuleList(
            nn.ModuleList([Sublayer(Attention(a, scale(a), False), layer.self_attn_layer_norm, False),
                           Sublayer(FeedForward(f, act), layer.final_layer_norm, False)])
            for a, f, layer in zip(layout.encoder_attention, layout.encoder_ffn, m.encoder.layers)
        )
        self.decoder_layers = nn.ModuleList(
            nn.ModuleList([Sublayer(Attention(s, scale(s), False), layer.self_attn_layer_norm, False),
                           Sublayer(Attention(x, scale(x), False), layer.encoder_attn_layer_norm, False),
                           Sublayer(FeedForward(f, act), layer.final_layer_norm, False)])
            for s, x, f, layer in zip(layout.decoder_self, layout.decoder_cross, layout.decoder_ffn, m.decoder.layers)
        )
        self.encoder_positions = nn.Parameter(m.encoder.embed_positions.weight.detach().clone())
        self.decoder_positions = nn.Parameter(m.decoder.embed_positions.weight.detach().clone())
        self.position_offset = m.encoder.embed_positions.offset
        self.encoder_embed_norm = Norm(m.encoder.layernorm_embedding)
        self.decoder_embed_norm = Norm(m.decoder.layernorm_embedding)
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.output_scale = 1.0
        self.register_buffer("final_logits_bias", hf.final_logits_bias.detach().clone())

    # ----- pieces ---------------------------------------------------------------------------
    def tokens(self, ids):  # [B, T] -> [B, T, D]
        x = F.embedding(ids, self.embed)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def t5_encoder_bias(self, length):
        """[1, H, S, S] bidirectional relative position bias (computed once per request)."""
        positions = torch.arange(length, dtype=torch.long)
        bucket = _t5_bucket(positions[None, :] - positions[:, None], True, self.config)
        return F.embedding(bucket, self.encoder_bias).permute(2, 0, 1)[None]

    # ----- the two graphs -------------------------------------------------------------------
    def encode(self, source_ids, source_mask):
        """-> (per decoder layer (cross key, cross value), each [B, H, S, Dh]; the source's
        padding bias [B, 1, 1, S], which every decoder step's cross-attention adds)."""
        x = self.tokens(source_ids)
        s = source_ids.shape[1]
        source_bias = padding_bias(source_mask)
        bias = over_queries(source_bias, s)
        if self.t5:
            bias = self.t5_encoder_bias(s) + bias
        else:
            x = self.encoder_embed_norm(x + F.embedding(torch.arange(s) + self.position_offset, self.encoder_positions))
        for attn, ffn in self.encoder_layers:
            x, _ = attn.self_attend(x, bias)
            x = ffn(x)
        if self.t5:
            x = self.encoder_final(x)
        return [layer[1].fn.keys_values(x) for layer in self.decoder_layers], source_bias

    def decode_step(self, input_ids, positions, source_bias, cross, cache_length, cache, length_layer: int | None):
        """The deployed decoder step: one new token per row against preallocated self-attention
        caches [B, H, C, Dh] whose first cache_length[b] slots are valid (slot j holds
        decoder position j). Returns the logits and each layer's new keys/values. (The
        graph keeps a symbolic new-token axis, always 1 when run: with the batch the only
        dynamic axis the exporter would fold the head count into the head-split Reshape,
        which pruning changes per layer.)
        `length_layer` names a layer whose cache survives pruning (its capacity is read)."""
        x = self.tokens(input_ids)
        capacity = cache[length_layer][0].shape[2] if length_layer is not None else 0
        slots = torch.arange(capacity, dtype=torch.long)[None, :]  # [1, C]
        valid = (slots < cache_length[:, None])[:, None, None, :]  # [B, 1, 1, C]
        if self.t5:  # distance back + 1 (row 0 masks); the new token itself is 0 back
            table = self.decoder_bias_by_distance
            back = (positions[:, :, None] - slots[None] + 1).clamp(0, table.shape[0] - 1)  # [B, N, C]
            cache_bias = torch.where(valid, F.embedding(back, table).permute(0, 3, 1, 2), NEG_INF)  # [B, H, N, C]
            own = table[1][None, :, None, None].expand(cache_bias.shape[0], -1, cache_bias.shape[2], -1)  # [B, H, N, 1]
        else:
            cache_bias = torch.where(valid, 0.0, NEG_INF)  # [B, 1, 1, C]
            own = torch.zeros_like(cache_bias.narrow(-1, 0, 1)) if capacity else torch.zeros(x.shape[0], 1, 1, 1)
            x = self.decoder_embed_norm(x + F.embedding(positions + self.position_offset, self.decoder_positions))
        self_bias = torch.cat([cache_bias, own], dim=-1)  # [B, H|1, 1, C+1]
        cross_bias = over_queries(source_bias, x.shape[1])
        new_kv = []
        for (self_attn, cross_attn, ffn), layer_cache, (ck, cv) in zip(self.decoder_layers, cache, cross):
            x, kv = self_attn.self_attend_cached(x, layer_cache, self_bias)
            new_kv.append(kv)
            x = cross_attn(x, ck, cv, cross_bias)
            x = ffn(x)
        if self.t5:
            x = self.decoder_final(x)
        logits = (x * self.output_scale if self.output_scale != 1.0 else x) @ self.lm_head
        if not self.t5:
            logits = logits + self.final_logits_bias
        return logits, new_kv
