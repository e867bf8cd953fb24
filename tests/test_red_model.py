"""RED in PyTorch: the all-switches-on equivalence with a decoder-only LM, and cache consistency."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_OFF, ALL_ON, red_model
from edgeseq.models.red import SWITCHES


def decoder_only_lm_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """An independent causal LM forward over `tokens` [B, N] with RED's decoder weights."""
    b, n = tokens.shape
    x = model.embed(tokens) + model.pos(torch.arange(n))[None]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer in model.layers:
        h = layer.attn_norm(x)
        heads = layer.attn.n_heads

        def split(t, heads=heads):
            return t.view(b, n, heads, -1).transpose(1, 2)

        q, k, v = split(layer.attn.q(h)), split(layer.attn.k(h)), split(layer.attn.v(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        ctx = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
        x = x + layer.attn.o(ctx.transpose(1, 2).reshape(b, n, -1))
        x = x + layer.mlp(layer.mlp_norm(x))
    return model.lm_head(model.final_norm(x))


@torch.inference_mode()
def test_all_switches_on_equals_decoder_only_lm():
    model = red_model(seed=3, **ALL_ON)
    source = torch.randint(3, 48, (2, 9))
    target_in = torch.randint(3, 48, (2, 6))
    red_logits, _ = model(source, torch.ones_like(source), target_in)
    lm_logits = decoder_only_lm_logits(model, torch.cat([source, target_in], dim=1))[:, 9:]
    torch.testing.assert_close(red_logits, lm_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("switch", SWITCHES)
@torch.inference_mode()
def test_turning_any_switch_off_breaks_the_equivalence(switch):
    """The equivalence test above can fail: each constraint matters on its own."""
    on = red_model(seed=3, **ALL_ON)
    off = red_model(seed=3, **{**ALL_ON, switch: False})
    off.load_state_dict(on.state_dict(), strict=False)  # same weights wherever names match
    source = torch.randint(3, 48, (1, 9))
    target_in = torch.randint(3, 48, (1, 6))
    lm = decoder_only_lm_logits(on, torch.cat([source, target_in], dim=1))[:, 9:]
    red_logits, _ = off(source, torch.ones_like(source), target_in)
    assert (red_logits - lm).abs().max() > 1e-3


@pytest.mark.parametrize("switches", [ALL_ON, ALL_OFF], ids=["all-on", "all-off"])
@torch.inference_mode()
def test_cached_decoding_matches_teacher_forcing(switches):
    model = red_model(seed=1, **switches)
    source = torch.randint(3, 48, (3, 7))
    mask = torch.ones_like(source)
    mask[1, 4:] = 0  # rows of different lengths
    mask[2, 2:] = 0
    tokens, step_logits = model.generate_greedy(source, mask, 10)
    full, _ = model(source, mask, torch.cat([torch.ones(3, 1, dtype=torch.long), tokens[:, :-1]], dim=1))
    torch.testing.assert_close(step_logits, full, rtol=0, atol=1e-5)


def test_share_parameters_halves_the_layer_weights():
    shared = sum(p.numel() for p in red_model(**ALL_ON).parameters())
    separate = sum(p.numel() for p in red_model(**{**ALL_ON, "share_parameters": False}).parameters())
    embeddings = sum(p.numel() for n, p in red_model(**ALL_ON).named_parameters() if not n.startswith("layers"))
    assert separate - embeddings == pytest.approx(2 * (shared - embeddings), rel=0.01)
