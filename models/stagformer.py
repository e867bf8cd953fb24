"""StagFormer: a decoder-only LM cut into p stacks staggered in time (docs/design.md §1).

Stack 1 is a causal transformer over the token embeddings. Stack k > 1 also reads the
token embeddings, and each of its layers adds a cross-attention sublayer over stack
k-1's final outputs at positions strictly before the current one, plus one learned null
memory slot that every position sees. Logits come from the last stack.

Decoding at cache index s: stack k needs stack k-1's output at s-1, produced in the
previous step, so the stacks of one step are independent and can run concurrently. The
caches make that explicit: each stack keeps its own self-attention cache and (k > 1) a
cross-attention cache over stack k-1's outputs that lags one slot behind; every step
appends the previous step's handoff `memory` to it. The deployed step (`step_cached`)
reads preallocated caches in place and returns only the new entries.

Batches are left-padded: `attention_mask` [B, T] marks real cache slots, `positions`
carry each row's own token positions.
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
    normal_embedding,
    slots_before,
)


@dataclass
class StagFormerConfig:
    vocab_size: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4  # total over all stacks
    n_stacks: int = 2  # p; 1 = a plain decoder-only LM (the baseline)
    d_ff: int = 256
    max_positions: int = 128
    shared_weights: bool = False  # stacks share all weights but their cross-attention
    cross_window: int = 0  # cross-attention sees the last w positions; 0 = all
    # layers per stack, comma-separated ("5,3"); "" = n_layers split evenly. The last stack
    # also runs the LM head and (like every stack but the first) a cross-attention per
    # layer, so an uneven split can balance the concurrent stages' work
    stack_layers: str = ""
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "n_stacks", "d_ff", "max_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1", f"set {name} >= 1")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}", "choose n_heads that divides d_model"
            )
        if self.stack_layers:
            try:
                sizes = [int(part) for part in self.stack_layers.split(",")]
            except ValueError:
                raise ConfigError(f"stack_layers={self.stack_layers!r} is not a comma-separated list of layer counts",
                                  'write one count per stack, e.g. stack_layers="5,3"') from None
            if len(sizes) != self.n_stacks or sum(sizes) != self.n_layers or min(sizes) < 1:
                raise ConfigError(f"stack_layers={self.stack_layers!r} does not cut n_layers={self.n_layers} into "
                                  f"n_stacks={self.n_stacks} stacks of at least one layer",
                                  f"give {self.n_stacks} counts of at least 1 that sum to {self.n_layers}")
            if self.shared_weights and len(set(sizes)) > 1:
                raise ConfigError("shared_weights=true needs stacks of equal depth", 'drop stack_layers or set it to equal counts')
        elif self.n_layers % self.n_stacks:
            raise ConfigError(
                f"n_layers={self.n_layers} cannot be cut into n_stacks={self.n_stacks} equal stacks",
                "choose n_stacks that divides n_layers, or set stack_layers (e.g. \"5,3\")",
            )
        if not 0 <= self.cross_window <= self.max_positions:
            raise ConfigError(
                f"cross_window={self.cross_window} is outside [0, max_positions={self.max_positions}]",
                "use 0 for no window, or a window no larger than max_positions",
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name}={getattr(self, name)} is outside the vocabulary", f"set {name} below vocab_size")

    @property
    def layers_per_stack(self) -> int:
        """The depth of the deepest stack (of every stack when split evenly)."""
        return max(self.stack_sizes)

    @property
    def stack_sizes(self) -> tuple[int, ...]:
        if self.stack_layers:
            return tuple(int(part) for part in self.stack_layers.split(","))
        return (self.n_layers // self.n_stacks,) * self.n_stacks

    def layers_in(self, stack: int) -> int:
        return self.stack_sizes[stack]


PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=32, d_model=64, n_heads=4, n_layers=4, n_stacks=2, d_ff=256, max_positions=128),
    "edge": dict(vocab_size=512, d_model=256, n_heads=4, n_layers=8, n_stacks=2, d_ff=1024, max_positions=512),
    "base": dict(vocab_size=8192, d_model=512, n_heads=8, n_layers=12, n_stacks=2, d_ff=2048, max_positions=1024),
}


class Block(nn.Module):
    """Causal self-attention + MLP: the part of a layer that shared-weight stacks share."""

    def __init__(self, c: StagFormerConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(c.d_model)
        self.attn = AttentionProjections(c.d_model, c.n_heads)
        self.mlp_norm = nn.LayerNorm(c.d_model)
        self.mlp = MLP(c.d_model, c.d_ff)


class CrossAttention(nn.Module):
    """Cross-attention of stack k > 1 over stack k-1's earlier outputs, with a null slot."""

    def __init__(self, c: StagFormerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model)
        self.memory_norm = nn.LayerNorm(c.d_model)
        self.proj = AttentionProjections(c.d_model, c.n_heads)

    def memory_kv(self, memory: torch.Tensor):
        """memory: [B, M, D] -> k, v: [B, H, M, Dh]."""
        return self.proj.keys_values(self.memory_norm(memory))


class Stack(nn.Module):
    def __init__(self, c: StagFormerConfig, index: int, blocks: nn.ModuleList | None):
        super().__init__()
        self.index = index
        self.is_last = index == c.n_stacks - 1
        # shared weights: every stack registers the same Block objects (stored once)
        self.blocks = blocks if blocks is not None else nn.ModuleList(Block(c) for _ in range(c.layers_in(index)))
        if index > 0:
            self.cross = nn.ModuleList(CrossAttention(c) for _ in range(c.layers_in(index)))
            self.null_memory = nn.Parameter(torch.randn(c.d_model) * 0.02)
        if self.is_last:  # the LM head runs in the last stack only
            self.final_norm = nn.LayerNorm(c.d_model)
            self.lm_head = Linear(c.d_model, c.vocab_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        self_allowed: torch.Tensor,
        past: list,
        cross_allowed: torch.Tensor | None = None,
        cross_past: list | None = None,
        memory: torch.Tensor | None = None,
        cached: bool = False,
    ):
        """This stack over Tn new tokens. Everything it computes runs inside this module call,
        so every exported node carries this stack's name scope (`stacks.k`).

        x: [B, Tn, D] token+position embeddings; past[l]: [B, H, T, Dh];
        self_allowed: [B, 1, Tn, T+Tn]. For k > 0: cross_past[l]: [B, H, M, Dh] over stack
        k-1's outputs, memory: [B, Mn, D] new outputs of stack k-1 to append,
        cross_allowed: [B, 1, Tn, 1 + M + Mn] (slot 0 = null).
        Returns the stack's output [B, Tn, D], its caches, its cross caches, logits (last stack).
        With `cached`, see `_step_cached` (the deployed step): still inside this module call,
        so its nodes carry this stack's name scope too.
        """
        if cached:
            return self._step_cached(x, self_allowed, past, cross_allowed, cross_past, memory)
        presents, cross_presents = [], []
        for i, block in enumerate(self.blocks):
            h = block.attn_norm(x)
            k_new, v_new = block.attn.keys_values(h)
            key = torch.cat([past[i][0], k_new], dim=2)
            value = torch.cat([past[i][1], v_new], dim=2)
            presents.append((key, value))
            x = x + block.attn.output(attend(block.attn.query(h), key, value, self_allowed))
            if self.index > 0:
                cross = self.cross[i]
                mk, mv = cross.memory_kv(memory)
                ck = torch.cat([cross_past[i][0], mk], dim=2)
                cv = torch.cat([cross_past[i][1], mv], dim=2)
                cross_presents.append((ck, cv))
                # project the null slot before expanding it to the batch: it then depends on
                # weights alone and export folds it into a constant [1, H, 1, Dh]
                nk, nv = cross.memory_kv(self.null_memory.view(1, 1, -1))
                nk, nv = nk.expand(x.shape[0], -1, -1, -1), nv.expand(x.shape[0], -1, -1, -1)
                q = cross.proj.query(cross.norm(x))
                ctx = attend(q, torch.cat([nk, ck], dim=2), torch.cat([nv, cv], dim=2), cross_allowed)
                x = x + cross.proj.output(ctx)
            x = x + block.mlp(block.mlp_norm(x))
        logits = self.lm_head(self.final_norm(x)) if self.is_last else None
        return x, presents, cross_presents, logits


    def _step_cached(self, x, self_ok, cache, cross_ok, cross_cache, memory):
        """One new token per row against preallocated caches that are only read.

        x: [B, 1, D]; cache[l]: [B, H, C, Dh] valid where self_ok [B, 1, 1, C]; for k > 0,
        cross_cache[l]: [B, H, C, Dh] over stack k-1's outputs valid where cross_ok, and
        memory [B, 1, D]: stack k-1's output at the previous slot, appended this step.
        Returns the output [B, 1, D], the new keys/values per layer (self, then cross) for
        the runtime to write into the caches, and the logits (last stack).
        """
        new_kv, new_cross = [], []
        for i, block in enumerate(self.blocks):
            h = block.attn_norm(x)
            k_new, v_new = block.attn.keys_values(h)
            new_kv.append((k_new, v_new))
            x = x + block.attn.output(attend_cached(block.attn.query(h), k_new, v_new, [(*cache[i], self_ok)]))
            if self.index > 0:
                cross = self.cross[i]
                mk, mv = cross.memory_kv(memory)
                new_cross.append((mk, mv))
                # [1, H, 1, Dh]: broadcasts; weights alone, so export folds it to a constant.
                # Always visible: no mask (a mask of constant ones would still cost a kernel)
                nk, nv = cross.memory_kv(self.null_memory.view(1, 1, -1))
                q = cross.proj.query(cross.norm(x))
                ctx = attend_cached(q, mk, mv, [(nk, nv, None), (*cross_cache[i], cross_ok)])
                x = x + cross.proj.output(ctx)
            x = x + block.mlp(block.mlp_norm(x))
        logits = self.lm_head(self.final_norm(x)) if self.is_last else None
        return x, new_kv, new_cross, logits


KV = tuple[torch.Tensor, torch.Tensor]


class StagFormerModel(nn.Module):
    def __init__(self, config: StagFormerConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.embed = normal_embedding(c.vocab_size, c.d_model)
        self.pos = normal_embedding(c.max_positions, c.d_model)
        shared = nn.ModuleList(Block(c) for _ in range(c.layers_per_stack)) if c.shared_weights else None
        self.stacks = nn.ModuleList(Stack(c, k, shared) for k in range(c.n_stacks))

    # ----- masks ---------------------------------------------------------------------------
    def masks(self, attention_mask: torch.Tensor, n_new: int):
        """attention_mask: [B, T+Tn] real cache slots. Returns self_allowed [B, 1, Tn, T+Tn] and
        cross_allowed [B, 1, Tn, 1 + T+Tn-1] (null slot, then stack k-1's outputs at slots
        0..T+Tn-2: new token at slot s sees slots t <= s-1, within the window)."""
        total = attention_mask.shape[1]
        valid = attention_mask.bool()[:, None, None, :]
        rows = torch.arange(n_new, device=valid.device).unsqueeze(1) + (total - n_new)  # slot of each new token
        cols = torch.arange(total, device=valid.device).unsqueeze(0)
        self_allowed = valid & (cols <= rows)[None, None]
        # explicit lengths (not [:, :-1]): the exporter mis-derives negative-end slices at length 1
        memory_cols = torch.arange(total - 1, device=valid.device).unsqueeze(0)
        seen = memory_cols <= rows - 1
        if self.config.cross_window:
            seen = seen & (memory_cols >= rows - self.config.cross_window)
        memory_valid = attention_mask.narrow(1, 0, total - 1).bool()[:, None, None, :]
        memory_allowed = memory_valid & seen[None, None]
        null = torch.ones(*memory_allowed.shape[:-1], 1, dtype=torch.bool, device=valid.device)  # always visible
        return self_allowed, torch.cat([null, memory_allowed], dim=-1)

    # ----- whole-sequence pass (training, prefill, the parity reference) ---------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor,
                allowed: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Stacks one after another over the whole sequence (no cache).

        `allowed` replaces the causal masks (PASTA's, models/pasta.py): (self_allowed
        [B, 1, N, N], cross_allowed [B, 1, N, 1 + N-1]), in the layout `masks` returns.

        Returns logits [B, N, V], per stack its self caches, per stack k > 0 its cross
        caches over stack k-1's outputs at slots 0..N-2, and the handoffs: per stack, its
        output at the last slot [B, 1, D], which stack k+1 appends next step (and which the
        last stack appends to its own memory under recurrent decoding).
        """
        b, n = input_ids.shape
        x0 = self.embed(input_ids) + self.pos(positions)
        self_allowed, cross_allowed = allowed if allowed is not None else self.masks(attention_mask, n)
        c = self.config
        empty = self.empty_cache(b)
        previous = None
        caches, cross_caches, handoffs = [], [], []
        logits = None
        for k in range(c.n_stacks):
            memory = previous.narrow(1, 0, n - 1) if k > 0 else None  # stack k-1's outputs at slots 0..N-2
            out, presents, cross_presents, logits_k = self.stacks[k](
                x0, self_allowed, empty, cross_allowed, empty if k > 0 else None, memory
            )
            caches.append(presents)
            cross_caches.append(cross_presents)
            handoffs.append(out[:, -1:])  # the last stack's feeds recurrent decoding
            previous = out
            logits = logits_k
        return logits, caches, cross_caches, handoffs

    def step_cached(self, input_ids, positions, cache_length, caches, cross_caches, memories, stacks=None):
        """The deployed step: one new token per row against preallocated caches.

        cache_length: [B] valid self-cache slots per row (the new token goes to that slot);
        caches[k][l]: [B, H, C, Dh]; cross_caches[k][l] (k > 0): [B, H, C', Dh] holding stack
        k-1's outputs at slots 0 .. cache_length-2; memories[k-1]: [B, 1, D] stack k-1's
        output at slot cache_length-1. `stacks` limits the step to some stacks (recurrent
        decoding runs the last one alone). Returns the logits, per stack the new self and
        cross keys/values, and each stack's output (the next step's memory).
        """
        c = self.config
        x0 = self.embed(input_ids) + self.pos(positions)
        outs, new_caches, new_cross, logits = {}, {}, {}, None
        for k in stacks if stacks is not None else range(c.n_stacks):
            self_ok = slots_before(cache_length, caches[k][0][0].shape[2])
            cross_ok = None
            if k > 0:
                # stack k-1's outputs strictly before the new token's slot, within the window
                capacity = cross_caches[k][0][0].shape[2]
                cross_ok = slots_before(cache_length, capacity, offset=-1)
                if c.cross_window:
                    slots = torch.arange(capacity, device=x0.device)[None, :]
                    cross_ok = cross_ok & (slots >= (cache_length[:, None] - c.cross_window))[:, None, None, :]
            out, new_caches[k], new_cross[k], logits_k = self.stacks[k](
                x0, self_ok, caches[k], cross_ok, cross_caches[k] if k > 0 else None,
                memories[k - 1] if k > 0 else None, cached=True,
            )
            outs[k] = out
            if logits_k is not None:
                logits = logits_k
        return logits, new_caches, new_cross, outs

    def extend(self, input_ids, positions, caches, cross_caches, memories):
        """Tn new tokens per row after a past of P >= 1 tokens whose caches are given at their
        exact length (no padding): a prompt prefilled block by block (runtimes/prefix_cache.py).

        caches[k][l]: [B, H, P, Dh]; cross_caches[k][l] (k > 0): [B, H, P-1, Dh], stack k-1's
        outputs at slots 0..P-2; memories[k-1]: [B, 1, D], its output at slot P-1. Returns the
        logits at the last new token [B, 1, V], per stack the new self entries (slots P..P+Tn-1)
        and cross entries (stack k-1's outputs at slots P-1..P+Tn-2), and each stack's output
        at the last new slot: what a step, or the next block, continues from.
        """
        b, n = input_ids.shape
        past = caches[0][0][0].shape[2]
        x0 = self.embed(input_ids) + self.pos(positions)
        self_allowed, cross_allowed = self.masks(torch.ones(b, past + n, dtype=torch.long, device=x0.device), n)
        new_caches, new_cross, handoffs, previous, logits = [], [], [], None, None
        for k in range(self.config.n_stacks):
            memory = torch.cat([memories[k - 1], previous.narrow(1, 0, n - 1)], dim=1) if k > 0 else None
            out, presents, cross_presents, logits_k = self.stacks[k](
                x0, self_allowed, caches[k], cross_allowed, cross_caches[k] if k > 0 else None, memory)
            new_caches.append([(key.narrow(2, past, n), value.narrow(2, past, n)) for key, value in presents])
            new_cross.append([(key.narrow(2, past - 1, n), value.narrow(2, past - 1, n)) for key, value in cross_presents])
            handoffs.append(out.narrow(1, n - 1, 1))
            previous = out
            if logits_k is not None:
                logits = logits_k.narrow(1, n - 1, 1)
        return logits, new_caches, new_cross, handoffs

    @torch.inference_mode()
    def generate_recurrent(self, prompt: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Recurrent decoding (shared weights): prefill with every stack, then one pass of the
        last stack per token, its cross-attention appending its own previous output."""
        c = self.config
        if not c.shared_weights or c.n_stacks < 2:
            raise ConfigError("recurrent decoding needs shared_weights=true and n_stacks >= 2",
                              "use the concurrent or sequential schedule for this model")
        b, n = prompt.shape
        logits, caches, cross_caches, handoffs = self(prompt, torch.arange(n).expand(b, -1), torch.ones_like(prompt))
        last = c.n_stacks - 1
        cache, cross, memory = caches[last], cross_caches[last], handoffs[last]
        tokens, step_logits = [], []
        out_logits = logits[:, -1]
        for step in range(max_new_tokens):
            step_logits.append(out_logits)
            token = out_logits.argmax(-1, keepdim=True)
            tokens.append(token)
            if step == max_new_tokens - 1:
                break
            slot = n + step
            x = self.embed(token) + self.pos(torch.full((b, 1), slot))
            self_allowed, cross_allowed = self.masks(torch.ones(b, slot + 1, dtype=torch.long), 1)
            memory, cache, cross, lg = self.stacks[last](x, self_allowed, cache, cross_allowed, cross, memory)
            out_logits = lg[:, -1]
        return torch.cat(tokens, dim=1), torch.stack(step_logits, dim=1)

    def empty_cache(self, batch: int) -> list[KV]:
        """Empty caches for the deepest stack (a shallower one reads its first layers')."""
        c = self.config
        shape = (batch, c.n_heads, 0, c.d_model // c.n_heads)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.layers_per_stack)]

    @torch.inference_mode()
    def generate_greedy(self, prompt: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference greedy decoding by whole-sequence passes (no caches): tokens, step logits."""
        seq = prompt
        tokens, logits = [], []
        for _ in range(max_new_tokens):
            n = seq.shape[1]
            out, *_ = self(seq, torch.arange(n).expand(seq.shape[0], -1), torch.ones_like(seq))
            logits.append(out[:, -1])
            nxt = out[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            seq = torch.cat([seq, nxt], dim=1)
        return torch.cat(tokens, dim=1), torch.stack(logits, dim=1)
