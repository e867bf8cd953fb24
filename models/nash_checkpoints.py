"""Random-weight Hugging Face T5/BART checkpoints and NASH masks, made locally.

No hub downloads: tests, the benchmark and `edgeseq init nash` build transformers
models from a config of a named size with random weights, optionally shrink the
decoder to k layers (uniform selection) and write a `zs.pt` of masks beside them.
"""

from pathlib import Path

import torch

from edgeseq.atomic import atomic_folder
from edgeseq.errors import CheckpointError

from .nash import keep_decoder_layers, nash_dims, quiet_transformers, select_layers
from .nash_masks import MASK_FILE, NashDims

VARIANTS = ("t5-v1", "t5-v1.1", "bart")

# named sizes: t5-small is the real t5-small shape; tiny is for tests
SIZES = {
    "tiny": {"d_model": 32, "heads": 4, "d_kv": 8, "d_ff": 64, "layers": 2, "vocab": 96},
    "small": {"d_model": 64, "heads": 4, "d_kv": 16, "d_ff": 128, "layers": 3, "vocab": 256},
    "t5-small": {"d_model": 512, "heads": 8, "d_kv": 64, "d_ff": 2048, "layers": 6, "vocab": 32128},
}


def hf_config(variant: str, size: str = "tiny"):
    """A transformers config of `variant` at a named size."""
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown NASH variant {variant!r}", f"choose one of: {', '.join(VARIANTS)}")
    if size not in SIZES:
        raise CheckpointError(f"unknown size {size!r}", f"choose one of: {', '.join(SIZES)}")
    s = SIZES[size]
    if variant.startswith("t5"):
        from transformers import T5Config

        v11 = variant == "t5-v1.1"
        return T5Config(
            vocab_size=s["vocab"], d_model=s["d_model"], d_kv=s["d_kv"], d_ff=s["d_ff"], num_layers=s["layers"],
            num_decoder_layers=s["layers"], num_heads=s["heads"], relative_attention_num_buckets=32,
            relative_attention_max_distance=128, dropout_rate=0.0,
            feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    from transformers import BartConfig

    return BartConfig(
        vocab_size=s["vocab"], d_model=s["d_model"], encoder_layers=s["layers"], decoder_layers=s["layers"],
        encoder_attention_heads=s["heads"], decoder_attention_heads=s["heads"], encoder_ffn_dim=s["d_ff"],
        decoder_ffn_dim=s["d_ff"], max_position_embeddings=256, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=None, forced_eos_token_id=None, scale_embedding=False,
    )


def random_model(variant: str, size: str = "tiny", seed: int = 0, decoder_layers: int | None = None,
                 selection: str = "unif"):
    """A transformers model with random weights; optionally only k decoder layers kept."""
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(hf_config(variant, size)).eval()
    with torch.no_grad():  # BART's init leaves these at zero; make them matter in parity
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
            elif hasattr(module, "variance_epsilon"):
                module.weight.normal_(1.0, 0.1)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.02)
    if decoder_layers is not None:
        n = nash_dims(model.config).decoder_layers
        keep_decoder_layers(model, select_layers(n, decoder_layers, selection))
    return model


def random_masks(dims: NashDims, sparsity: float, seed: int = 0, hidden: bool = False) -> dict[str, torch.Tensor]:
    """Soft masks pruning round(sparsity * n) of the n heads and FFN neurons of every encoder
    layer (which ones at random), in NASH's training shapes; kept units get values in (0.5, 1]."""
    g = torch.Generator().manual_seed(seed)

    def soft(layers, n, shape):
        values = 0.5 + 0.5 * torch.rand(layers, n, generator=g)
        for row in values:
            row[torch.randperm(n, generator=g)[: round(sparsity * n)]] = 0
        return values.reshape(shape)

    L = dims.encoder_layers
    masks = {
        "head_z": soft(L, dims.encoder_heads, (L, 1, dims.encoder_heads, 1, 1)),
        "intermediate_z": soft(L, dims.encoder_ffn, (L, 1, 1, dims.encoder_ffn)),
        "head_layer_z": 0.5 + 0.5 * torch.rand(dims.encoder_layers, generator=g),
        "mlp_z": 0.5 + 0.5 * torch.rand(dims.encoder_layers, generator=g),
    }
    if hidden:
        masks["hidden_z"] = soft(1, dims.d_model, (dims.d_model,))
    return masks


def save_hf_checkpoint(model, out: str | Path, masks: dict[str, torch.Tensor] | None = None,
                       force: bool = False, tokenizer: bool = False) -> Path:
    """save_pretrained (safetensors) + zs.pt (+ a tokenizer.json at the model's vocabulary
    size, models/tokenizer.py), atomically."""
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists", "choose another -o folder or pass --force")
    quiet_transformers()
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if masks:
            torch.save(masks, tmp / MASK_FILE)
        if tokenizer:
            from .tokenizer import write_tokenizer

            kind = "bart" if model.config.model_type == "bart" else "t5"
            write_tokenizer(tmp, model.config.vocab_size, kind)
    return out


# `edgeseq init nash --set KEY=VALUE`: the keys and their types
INIT_KEYS = {"variant": str, "decoder_layers": int, "selection": str, "sparsity": float}


def init_nash_checkpoint(out: str | Path, preset: str | None = None, sets=(), seed: int = 0,
                         force: bool = False) -> Path:
    """Write a random-weight transformers checkpoint (and zs.pt when sparsity > 0)."""
    from .config import coerce_value, parse_overrides

    values = {"variant": "t5-v1", "decoder_layers": None, "selection": "unif", "sparsity": 0.0}
    for key, raw in parse_overrides(list(sets)).items():
        if key not in INIT_KEYS:
            raise CheckpointError(f"unknown nash init key {key!r}", f"valid keys are {', '.join(INIT_KEYS)}")
        values[key] = coerce_value(key, raw, INIT_KEYS[key])
    if not 0.0 <= values["sparsity"] < 1.0:
        raise CheckpointError(f"sparsity={values['sparsity']} is outside [0, 1)", "use e.g. --set sparsity=0.5")
    model = random_model(values["variant"], preset or "tiny", seed, values["decoder_layers"], values["selection"])
    masks = random_masks(nash_dims(model.config), values["sparsity"], seed) if values["sparsity"] else None
    return save_hf_checkpoint(model, out, masks, force=force, tokenizer=True)
