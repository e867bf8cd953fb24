"""RED: a decoder-only LM read as a regularized encoder-decoder (docs/design.md §1).

Every one of RED's five constraints is a switch; with all five on, the model computes
exactly what a decoder-only LM computes on [source ; target] (tests/test_red_model.py
checks that against an independent LM forward).

The deployment split mirrors the export: `encode` runs once per source and returns, per
decoder layer, the source keys and values that layer attends to; `decode` takes those as
a read-only prefix beside its own growing target cache.
"""

from dataclasses import dataclass

import torch
from torch import nn

from edgeseq.errors import ConfigError

from .layers import (
    MLP,
    AttentionProjections,
    Linear,
    attend,
    attend_cached,
    causal_allowed,
    normal_embedding,
    slots_before,
)


@dataclass
class RedConfig:
    vocab_size: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256
    max_positions: int = 128
    # RED's constraints (docs/design.md §1); all on = a decoder-only LM.
    unidirectional_cross_attention: bool = True
    causal_encoder: bool = True
    share_parameters: bool = True
    layerwise_coordination: bool = True
    consecutive_positions: bool = True
    source_autoencoder_weight: float = 0.0  # training only
    pad_token_id: int = 0
    bos_token_id: int = 1  # first decoder input
    eos_token_id: int = 2  # default stop token

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1", f"set {name} >= 1")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}",
                "choose n_heads that divides d_model",
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})",
                    f"set {name} below vocab_size",
                )
        if self.source_autoencoder_weight < 0:
            raise ConfigError("source_autoencoder_weight must be >= 0", "set it to 0 or a positive weight")


SWITCHES = (
    "unidirectional_cross_attention",
    "causal_encoder",
    "share_parameters",
    "layerwise_coordination",
    "consecutive_positions",
)

PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=32, d_model=64, n_heads=4, n_layers=2, d_ff=256, max_positions=128),
    "small": dict(vocab_size=1024, d_model=256, n_heads=4, n_layers=4, d_ff=1024, max_positions=256),
    "base": dict(vocab_size=8192, d_model=512, n_heads=8, n_layers=8, d_ff=2048, max_positions=512),
}


class EncoderLayer(nn.Module):
    """Self-attention + MLP; also the first half of a decoder layer when parameters are shared."""

    def __init__(self, c: RedConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(c.d_model)
        self.attn = AttentionProjections(c.d_model, c.n_heads)
        self.mlp_norm = nn.LayerNorm(c.d_model)
        self.mlp = MLP(c.d_model, c.d_ff)


class DecoderLayer(EncoderLayer):
    """Adds a separate cross-attention sublayer when unidirectional cross-attention is off."""

    def __init__(self, c: RedConfig):
        super().__init__(c)
        if not c.unidirectional_cross_attention:
            self.cross_norm = nn.LayerNorm(c.d_model)
            self.cross_memory_norm = nn.LayerNorm(c.d_model)
            self.cross = AttentionProjections(c.d_model, c.n_heads)


KV = tuple[torch.Tensor, torch.Tensor]


class RedModel(nn.Module):
    def __init__(self, config: RedConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.embed = normal_embedding(c.vocab_size, c.d_model)
        self.pos = normal_embedding(c.max_positions, c.d_model)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_layers))
        # share_parameters: the encoder IS the decoder's self-attention + MLP stack, so
        # the weights exist once in the state dict, in the artifact and in memory.
        self.encoder_layers = None if c.share_parameters else nn.ModuleList(
            EncoderLayer(c) for _ in range(c.n_layers)
        )
        self.encoder_norm = None if c.layerwise_coordination else nn.LayerNorm(c.d_model)
        self.final_norm = nn.LayerNorm(c.d_model)
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False)

    def encoder_layer(self, i: int) -> EncoderLayer:
        return self.layers[i] if self.encoder_layers is None else self.encoder_layers[i]

    # ----- encoder -------------------------------------------------------------------------
    def encode(
        self, source_ids: torch.Tensor, source_mask: torch.Tensor
    ) -> tuple[list[KV], torch.Tensor]:
        """source_ids/source_mask: [B, S] (mask 1 = real token, right padding).

        Returns per decoder layer the (keys, values) it attends to over the source, each
        [B, H, S, Dh], and the encoder's last hidden states [B, S, D] (for the source
        auto-encoder loss).
        """
        c = self.config
        s = source_ids.shape[1]
        positions = torch.arange(s, device=source_ids.device).unsqueeze(0)
        x = self.embed(source_ids) + self.pos(positions)  # x: [B, S, D]
        key_ok = source_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        allowed = key_ok & causal_allowed(s, 0, x.device) if c.causal_encoder else key_ok
        memories = []
        for i in range(c.n_layers):
            layer = self.encoder_layer(i)
            memories.append(x)  # layerwise coordination: decoder layer i reads encoder layer i's input
            h = layer.attn_norm(x)
            k, v = layer.attn.keys_values(h)
            x = x + layer.attn.output(attend(layer.attn.query(h), k, v, allowed))
            x = x + layer.mlp(layer.mlp_norm(x))
        if not c.layerwise_coordination:
            memories = [self.encoder_norm(x)] * c.n_layers
        return [self._source_kv(i, memories[i]) for i in range(c.n_layers)], x

    def encode_extend(self, source_ids: torch.Tensor, positions: torch.Tensor, past: list[KV]
                      ) -> tuple[list[KV], list[KV]]:
        """A causal encoder over a block of Tn source tokens after P earlier ones (P may be 0),
        whose encoder keys/values past[l] [B, H, P, Dh] are given at their exact length: a
        source prefilled block by block (runtimes/prefix_cache.py). Returns the block's
        encoder keys/values per layer and the source keys/values each decoder layer reads
        for it, [B, H, Tn, Dh] each: `encode` over the whole source, cut into blocks."""
        c = self.config
        n_new, n_past = source_ids.shape[1], past[0][0].shape[2]
        x = self.embed(source_ids) + self.pos(positions)
        allowed = causal_allowed(n_new, n_past, x.device)[None, None]  # [1, 1, Tn, P+Tn]
        memories, new = [], []
        for i in range(c.n_layers):
            layer = self.encoder_layer(i)
            memories.append(x)
            h = layer.attn_norm(x)
            k, v = layer.attn.keys_values(h)
            new.append((k, v))
            key, value = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            x = x + layer.attn.output(attend(layer.attn.query(h), key, value, allowed))
            x = x + layer.mlp(layer.mlp_norm(x))
        if not c.layerwise_coordination:
            memories = [self.encoder_norm(x)] * c.n_layers
        return new, [self._source_kv(i, memories[i]) for i in range(c.n_layers)]

    def _source_kv(self, i: int, memory: torch.Tensor) -> KV:
        layer = self.layers[i]
        if self.config.unidirectional_cross_attention:
            return layer.attn.keys_values(layer.attn_norm(memory))
        return layer.cross.keys_values(layer.cross_memory_norm(memory))

    # ----- decoder -------------------------------------------------------------------------
    def decode(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        source_kv: list[KV],
        source_mask: torch.Tensor,
        past_kv: list[KV],
    ) -> tuple[torch.Tensor, list[KV]]:
        """One decoder call over Tn new target tokens.

        input_ids/positions: [B, Tn]; source_kv[l]: [B, H, S, Dh]; source_mask: [B, S];
        past_kv[l]: [B, H, T, Dh] (T may be 0). Returns logits [B, Tn, V] and the present
        target caches [B, H, T+Tn, Dh].
        """
        c = self.config
        n_new = input_ids.shape[1]
        n_past = past_kv[0][0].shape[2]
        x = self.embed(input_ids) + self.pos(positions)  # x: [B, Tn, D]
        source_ok = source_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        target_ok = causal_allowed(n_new, n_past, x.device)[None, None]  # [1, 1, Tn, T+Tn]
        if c.unidirectional_cross_attention:
            # one softmax over [source ; target so far]
            source_ok = source_ok.expand(-1, -1, n_new, -1)
            joint_ok = torch.cat([source_ok, target_ok.expand(source_ok.shape[0], -1, -1, -1)], dim=-1)
        presents = []
        for i, layer in enumerate(self.layers):
            h = layer.attn_norm(x)
            k_new, v_new = layer.attn.keys_values(h)
            k = torch.cat([past_kv[i][0], k_new], dim=2)  # k: [B, H, T+Tn, Dh]
            v = torch.cat([past_kv[i][1], v_new], dim=2)
            presents.append((k, v))
            q = layer.attn.query(h)
            if c.unidirectional_cross_attention:
                sk, sv = source_kv[i]
                ctx = attend(q, torch.cat([sk, k], dim=2), torch.cat([sv, v], dim=2), joint_ok)
                x = x + layer.attn.output(ctx)
            else:
                x = x + layer.attn.output(attend(q, k, v, target_ok))
                hc = layer.cross_norm(x)
                sk, sv = source_kv[i]
                x = x + layer.cross.output(attend(layer.cross.query(hc), sk, sv, source_ok))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.lm_head(self.final_norm(x)), presents

    def decode_step(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        source_kv: list[KV],
        source_mask: torch.Tensor,
        cache_length: torch.Tensor,
        cache: list[KV],
    ) -> tuple[torch.Tensor, list[KV]]:
        """One new target token per row against preallocated caches (the deployed step).

        input_ids/positions: [B, 1]; cache[l]: [B, H, C, Dh] of which each row's first
        cache_length[b] slots are valid. The caches are only read: the step returns the
        new token's keys/values [B, H, 1, Dh] per layer and the runtime writes them at slot
        cache_length[b], so rows of different ages share a step and no cache is copied.
        Computes what `decode` computes for the same token.
        """
        c = self.config
        x = self.embed(input_ids) + self.pos(positions)  # x: [B, 1, D]
        source_ok = source_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        target_ok = slots_before(cache_length, cache[0][0].shape[2])  # [B, 1, 1, C]
        new_kv = []
        for i, layer in enumerate(self.layers):
            h = layer.attn_norm(x)
            k_new, v_new = layer.attn.keys_values(h)  # [B, H, 1, Dh]
            new_kv.append((k_new, v_new))
            q = layer.attn.query(h)
            sk, sv = source_kv[i]
            target = (cache[i][0], cache[i][1], target_ok)
            if c.unidirectional_cross_attention:  # one softmax over [source ; target so far]
                x = x + layer.attn.output(attend_cached(q, k_new, v_new, [(sk, sv, source_ok), target]))
            else:
                x = x + layer.attn.output(attend_cached(q, k_new, v_new, [target]))
                hc = layer.cross_norm(x)
                x = x + layer.cross.output(attend(layer.cross.query(hc), sk, sv, source_ok))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.lm_head(self.final_norm(x)), new_kv

    # ----- helpers shared by training, parity and the eager baseline ------------------------
    def target_positions(self, source_mask: torch.Tensor, start: int, length: int) -> torch.Tensor:
        """[B, length] positions of target tokens start..start+length-1 for each row."""
        offsets = torch.arange(start, start + length, device=source_mask.device).unsqueeze(0)
        if self.config.consecutive_positions:
            return source_mask.sum(dim=1, keepdim=True).long() + offsets
        return offsets.expand(source_mask.shape[0], -1)

    def empty_cache(self, batch: int) -> list[KV]:
        c = self.config
        shape = (batch, c.n_heads, 0, c.d_model // c.n_heads)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.n_layers)]

    def forward(
        self, source_ids: torch.Tensor, source_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: returns target logits [B, T, V] and source LM logits [B, S, V]."""
        source_kv, source_states = self.encode(source_ids, source_mask)
        positions = self.target_positions(source_mask, 0, decoder_input_ids.shape[1])
        logits, _ = self.decode(
            decoder_input_ids, positions, source_kv, source_mask, self.empty_cache(source_ids.shape[0])
        )
        source_logits = self.lm_head(self.final_norm(source_states))
        return logits, source_logits

    @torch.inference_mode()
    def generate_greedy(
        self, source_ids: torch.Tensor, source_mask: torch.Tensor, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached greedy decoding (no stop tokens): tokens [B, N] and step logits [B, N, V]."""
        source_kv, _ = self.encode(source_ids, source_mask)
        b = source_ids.shape[0]
        token = torch.full((b, 1), self.config.bos_token_id, dtype=torch.long)
        past = self.empty_cache(b)
        tokens, logits = [], []
        for step in range(max_new_tokens):
            positions = self.target_positions(source_mask, step, 1)
            step_logits, past = self.decode(token, positions, source_kv, source_mask, past)
            logits.append(step_logits[:, -1])
            token = step_logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(token)
        return torch.cat(tokens, dim=1), torch.stack(logits, dim=1)
