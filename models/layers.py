"""Transformer building blocks shared by the model families.

Weights of linear maps are stored as [in, out], the layout ONNX MatMul reads: the
exporter then keeps them as named initializers instead of folding a transpose into an
anonymous copy, which is what lets weights shared between graphs be stored once.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = torch.finfo(torch.float32).min


class Linear(nn.Module):
    """y = x @ weight + bias with weight stored as [in, out]."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


def normal_embedding(num: int, dim: int) -> nn.Embedding:
    """A lookup table initialised like the linear weights (std 0.02)."""
    table = nn.Embedding(num, dim)
    nn.init.normal_(table.weight, std=0.02)
    return table


class MLP(nn.Module):
    """Position-wise feed-forward block (GELU)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = Linear(d_model, d_ff)
        self.down = Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, D/H]."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dh] -> [B, T, H*Dh]."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Masked softmax attention.

    q: [B, H, Tq, Dh], k/v: [B, H, Tk, Dh], allowed: bool broadcastable to [B, H, Tq, Tk].
    Written out (no SDPA) so the ONNX graph is plain MatMul/Softmax on every exporter and
    every row is guaranteed at least one allowed key by the callers.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, NEG_INF)
    return torch.matmul(scores.softmax(dim=-1), v)


def slots_before(length: torch.Tensor, capacity: int | torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Bool [B, 1, 1, C]: which slots of a preallocated cache row hold a value.

    length: [B] int64, the slots written so far in each row (+ offset); slots are filled
    from 0 without gaps, so a row's valid slots are exactly 0 .. length-1.
    """
    slots = torch.arange(capacity, device=length.device)[None, :]  # [1, C]
    return (slots < (length[:, None] + offset))[:, None, None, :]


def attend_cached(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new token per row attending, in ONE softmax, over read-only cache parts and itself.

    q, k_new, v_new: [B, H, 1, Dh]; parts: (keys [B, H, C_i, Dh], values, allowed bool
    broadcastable to [B, H, 1, C_i] or None), e.g. a source prefix and a preallocated
    target cache. The parts are read in place and never concatenated (no copy of a cache
    per step); only the [B, H, 1, sum C_i + 1] scores are, the new token's last. `bias`
    is added to those scores before the softmax (T5's relative positions).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = []
    for k, _, allowed in parts:
        s = torch.matmul(q, k.transpose(-1, -2))  # [B, H, 1, C_i]
        s = s * scale if scale != 1.0 else s
        scores.append(s.masked_fill(~allowed, NEG_INF) if allowed is not None else s)
    own = (q * k_new).sum(dim=-1, keepdim=True)  # [B, H, 1, 1]
    scores.append(own * scale if scale != 1.0 else own)
    scores = torch.cat(scores, dim=-1)
    probs = (scores + bias if bias is not None else scores).softmax(dim=-1)
    ctx = probs.narrow(-1, probs.shape[-1] - 1, 1) * v_new
    start = 0
    for k, v, _ in parts:
        ctx = ctx + torch.matmul(probs.narrow(-1, start, k.shape[2]), v)
        start += k.shape[2]
    return ctx


def causal_allowed(n_new: int, n_past: int | torch.Tensor, device=None) -> torch.Tensor:
    """Bool [n_new, n_past + n_new]: new token i (at absolute index n_past + i) sees j <= that."""
    rows = torch.arange(n_new, device=device).unsqueeze(1) + n_past
    cols = torch.arange(n_past + n_new, device=device).unsqueeze(0)
    return cols <= rows


class AttentionProjections(nn.Module):
    """Query/key/value/output projections of one multi-head attention sublayer."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q = Linear(d_model, d_model)
        self.k = Linear(d_model, d_model)
        self.v = Linear(d_model, d_model)
        self.o = Linear(d_model, d_model)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, T, D] -> k, v: [B, H, T, Dh]."""
        return split_heads(self.k(x), self.n_heads), split_heads(self.v(x), self.n_heads)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(self.q(x), self.n_heads)

    def output(self, context: torch.Tensor) -> torch.Tensor:
        return self.o(merge_heads(context))
