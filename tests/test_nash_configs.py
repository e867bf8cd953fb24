"""The NASH config space, not a handful of configs: hypothesis draws T5 and BART configs
(encoder and decoder head counts and FFN widths that differ, d_kv other than d_model /
heads, relative-attention buckets and max distance, relu / gated-gelu / gated-relu /
gelu_new, tied and untied heads, `scale_embedding`, one-layer encoders, more decoder than
encoder layers, soft masks on top); each compiles with parity and greedy equal to
transformers, or is refused before export with a one-line reason. A derandomized subset
runs by default; `-m slow` draws more."""

import os

import pytest
import torch
from edgeseq.models.nash_checkpoints import nash_dims, random_masks, save_hf_checkpoint
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgeseq.errors import EdgeseqError
from edgeseq.pipeline import compile_checkpoint


@st.composite
def t5_configs(draw):
    from transformers import T5Config

    heads = draw(st.sampled_from([1, 2, 4]))
    return T5Config(
        vocab_size=64, d_model=draw(st.sampled_from([32, 48])), d_kv=draw(st.sampled_from([8, 12, 16])),
        d_ff=draw(st.sampled_from([32, 64])), num_layers=draw(st.integers(1, 2)),
        num_decoder_layers=draw(st.integers(1, 3)), num_heads=heads,
        relative_attention_num_buckets=draw(st.sampled_from([8, 16, 32])),
        relative_attention_max_distance=draw(st.sampled_from([20, 64, 128])), dropout_rate=0.0,
        feed_forward_proj=draw(st.sampled_from(["relu", "gated-gelu", "gated-relu", "gelu_new"])),
        tie_word_embeddings=draw(st.booleans()), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


@st.composite
def bart_configs(draw):
    from transformers import BartConfig

    d_model = draw(st.sampled_from([32, 64]))
    return BartConfig(
        vocab_size=64, d_model=d_model, encoder_layers=draw(st.integers(1, 2)), decoder_layers=draw(st.integers(1, 3)),
        encoder_attention_heads=draw(st.sampled_from([1, 2, 4])), decoder_attention_heads=draw(st.sampled_from([1, 2, 4])),
        encoder_ffn_dim=draw(st.sampled_from([32, 64])), decoder_ffn_dim=draw(st.sampled_from([48, 96])),
        activation_function=draw(st.sampled_from(["gelu", "relu", "gelu_new"])),
        scale_embedding=draw(st.booleans()), max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )


def compiles_or_is_refused(tmp_path, config, seed: int) -> None:
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    folder = tmp_path / f"case-{seed}-{abs(hash(config.to_json_string())) % 10**8}"
    ckpt = save_hf_checkpoint(model, folder / "ckpt", random_masks(nash_dims(model.config), 0.3, seed=seed), force=True)
    try:
        manifest = compile_checkpoint(ckpt, folder / "art", force=True)
    except EdgeseqError as e:  # a refusal must come before export and say why in one line
        assert e.stage in ("checkpoint", "config"), f"{type(e).__name__} at {e.stage}: {e}"
        assert "\n" not in str(e), str(e)
        return
    parity = manifest["parity"]
    assert parity["passed"] and parity["greedy_token_agreement"] == 1.0, (config.to_diff_dict(), parity)


SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@settings(max_examples=2, **SETTINGS)
@given(config=t5_configs(), seed=st.integers(0, 100))
def test_drawn_t5_configs_compile_with_parity(tmp_path_factory, config, seed):
    compiles_or_is_refused(tmp_path_factory.mktemp("t5"), config, seed)


@settings(max_examples=2, **SETTINGS)
@given(config=bart_configs(), seed=st.integers(0, 100))
def test_drawn_bart_configs_compile_with_parity(tmp_path_factory, config, seed):
    compiles_or_is_refused(tmp_path_factory.mktemp("bart"), config, seed)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("EDGESEQ_CONFIG_EXAMPLES", "40")), **{**SETTINGS, "derandomize": False})
@given(config=st.one_of(t5_configs(), bart_configs()), seed=st.integers(0, 10_000))
def test_many_drawn_configs_compile_with_parity(tmp_path_factory, config, seed):
    compiles_or_is_refused(tmp_path_factory.mktemp("drawn"), config, seed)
