"""NASH on Hugging Face T5 (v1, v1.1) and BART: load, fold the masks in, select decoder layers.

A NASH checkpoint is a Hugging Face folder (config.json + weights) whose decoder
already has k layers, plus an optional `zs.pt` of soft masks (models/nash_masks.py).
`load_nash` returns the transformers model with the mask values folded into its
weights, as the official materialisation does before deleting zero units:
value-projection rows by head_z, output projection (and bias) by head_layer_z, FFN
output columns by intermediate_z, FFN output (and bias) by mlp_z, embeddings and LM
head by hidden_z. After the fold a pruned unit contributes exactly zero, so deleting
it (passes/strip_pruned.py) leaves the outputs unchanged.

Hidden-dimension pruning (hidden_z) follows the official materialised model: the
pruned dims no longer exist, so every norm averages over the kept dims only.
`reference_model` gives the transformers model with exactly those semantics, which
is what parity compares against.
"""

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgeseq.errors import CheckpointError

from .nash_masks import MASK_FILE, NashDims, kept, load_masks

SUPPORTED = {"t5": "T5 (v1 ReLU or v1.1 gated-GELU)", "bart": "BART"}
LAYER_SELECTIONS = ("unif", "low", "high")


def read_hf_config(folder: str | Path) -> dict:
    from .checkpoint import read_json

    path = Path(folder) / "config.json"
    raw = read_json(path, "pass a Hugging Face checkpoint folder (config.json + weights)")
    arch = raw.get("model_type") if isinstance(raw, dict) else None
    if arch not in SUPPORTED:
        raise CheckpointError(
            f"{path}: model_type {arch!r} is not a supported architecture",
            f"edgeseq compiles Hugging Face {' and '.join(SUPPORTED.values())} checkpoints "
            "(model_type 't5' or 'bart'), and its own red / stagformer checkpoints",
        )
    return raw


def is_hf_folder(folder: str | Path) -> bool:
    """A Hugging Face checkpoint folder: config.json with a model_type and no edgeseq family."""
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "model_type" in raw and "family" not in raw


def nash_dims(config) -> NashDims:
    if config.model_type == "t5":
        return NashDims(config.num_layers, config.num_decoder_layers, config.num_heads, config.num_heads,
                        config.d_ff, config.d_ff, config.d_model, config.d_kv)
    # head_dim is the decoder's: what its self and cross caches hold (BART's encoder and
    # decoder may split d_model into different head counts)
    return NashDims(config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
                    config.decoder_attention_heads, config.encoder_ffn_dim, config.decoder_ffn_dim,
                    config.d_model, config.d_model // config.decoder_attention_heads)


# ----- where each prunable unit lives in a transformers model ------------------------------
@dataclass
class AttentionUnit:
    """One attention sublayer: projections as nn.Linear ([out, in] weights) and its size."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    heads: int
    head_dim: int


@dataclass
class FfnUnit:
    inputs: list[nn.Linear]  # wi (or wi_0, wi_1), fc1
    output: nn.Linear  # wo, fc2


@dataclass
class HfLayout:
    """Every prunable unit of a transformers T5/BART model, by stack and layer."""

    encoder_attention: list[AttentionUnit] = field(default_factory=list)
    encoder_ffn: list[FfnUnit] = field(default_factory=list)
    decoder_self: list[AttentionUnit] = field(default_factory=list)
    decoder_cross: list[AttentionUnit] = field(default_factory=list)
    decoder_ffn: list[FfnUnit] = field(default_factory=list)
    norms: list[nn.Module] = field(default_factory=list)  # every norm on the residual stream


def _t5_ffn(layer) -> FfnUnit:
    dense = layer.DenseReluDense
    inputs = [dense.wi_0, dense.wi_1] if hasattr(dense, "wi_0") else [dense.wi]
    return FfnUnit(inputs, dense.wo)


def hf_layout(model) -> HfLayout:
    c = model.config
    out = HfLayout()
    if c.model_type == "t5":
        def attn(a):
            return AttentionUnit(a.q, a.k, a.v, a.o, a.n_heads, a.key_value_proj_dim)

        for block in model.encoder.block:
            out.encoder_attention.append(attn(block.layer[0].SelfAttention))
            out.encoder_ffn.append(_t5_ffn(block.layer[1]))
        for block in model.decoder.block:
            out.decoder_self.append(attn(block.layer[0].SelfAttention))
            out.decoder_cross.append(attn(block.layer[1].EncDecAttention))
            out.decoder_ffn.append(_t5_ffn(block.layer[2]))
        out.norms = [m for m in model.modules() if type(m).__name__ == "T5LayerNorm"]
        return out

    def attn(a):
        return AttentionUnit(a.q_proj, a.k_proj, a.v_proj, a.out_proj, a.num_heads, a.head_dim)

    for layer in model.model.encoder.layers:
        out.encoder_attention.append(attn(layer.self_attn))
        out.encoder_ffn.append(FfnUnit([layer.fc1], layer.fc2))
    for layer in model.model.decoder.layers:
        out.decoder_self.append(attn(layer.self_attn))
        out.decoder_cross.append(attn(layer.encoder_attn))
        out.decoder_ffn.append(FfnUnit([layer.fc1], layer.fc2))
    out.norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    return out


# ----- folding -------------------------------------------------------------------------------
def _scale_output(linear: nn.Linear, scale: torch.Tensor) -> None:
    """Scale the whole output of a linear map (weight and bias)."""
    linear.weight.mul_(scale)
    if linear.bias is not None:
        linear.bias.mul_(scale)


def _fold_attention(units: list[AttentionUnit], head_z, layer_z) -> None:
    for i, a in enumerate(units):
        if head_z is not None:
            rows = head_z[i].repeat_interleave(a.head_dim)  # one scale per value-projection row
            a.v.weight.mul_(rows[:, None])
            if a.v.bias is not None:
                a.v.bias.mul_(rows)
        if layer_z is not None:
            _scale_output(a.o, layer_z[i])


def _fold_ffn(units: list[FfnUnit], neuron_z, layer_z) -> None:
    for i, f in enumerate(units):
        if neuron_z is not None:
            f.output.weight.mul_(neuron_z[i][None, :])
        if layer_z is not None:
            _scale_output(f.output, layer_z[i])


def _embeddings(model) -> list[torch.Tensor]:
    """The token (and BART position) tables whose columns are hidden dims."""
    if model.config.model_type == "t5":
        return [model.shared.weight]
    m = model.model
    return [m.shared.weight, m.encoder.embed_positions.weight, m.decoder.embed_positions.weight]


def _fold_hidden(model, layout: HfLayout, hidden_z: torch.Tensor) -> None:
    """Scale embeddings and LM head by hidden_z, and make the residual stream exactly zero
    in pruned dims (every writer's output and every norm's affine), so deleting those dims
    changes nothing."""
    shared = model.get_input_embeddings().weight  # encoder and decoder tables are tied to it
    shared.mul_(hidden_z)
    if model.lm_head.weight.data_ptr() != shared.data_ptr():
        model.lm_head.weight.mul_(hidden_z)
    keep = (hidden_z != 0).to(torch.float32)
    for table in _embeddings(model)[1:]:
        table.mul_(keep)
    writers = [a.o for a in layout.encoder_attention + layout.decoder_self + layout.decoder_cross]
    writers += [f.output for f in layout.encoder_ffn + layout.decoder_ffn]
    for linear in writers:
        linear.weight.mul_(keep[:, None])
        if linear.bias is not None:
            linear.bias.mul_(keep)
    for norm in layout.norms:
        norm.weight.mul_(keep)
        if getattr(norm, "bias", None) is not None:
            norm.bias.mul_(keep)


@torch.no_grad()
def fold_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Multiply the soft mask values into the weights, in place."""
    layout = hf_layout(model)
    _fold_attention(layout.encoder_attention, masks.get("head_z"), masks.get("head_layer_z"))
    _fold_attention(layout.decoder_self, masks.get("dec_self_head_z"), masks.get("dec_self_head_layer_z"))
    _fold_attention(layout.decoder_cross, masks.get("dec_cross_head_z"), masks.get("dec_cross_head_layer_z"))
    _fold_ffn(layout.encoder_ffn, masks.get("intermediate_z"), masks.get("mlp_z"))
    _fold_ffn(layout.decoder_ffn, masks.get("dec_intermediate_z"), masks.get("dec_mlp_z"))
    if "hidden_z" in masks:
        _fold_hidden(model, layout, masks["hidden_z"])


# ----- the reference with pruned hidden dims --------------------------------------------------
class KeptDimsNorm(nn.Module):
    """A T5 RMS norm or a LayerNorm computed over the kept hidden dims only (zeros elsewhere),
    which is what the materialised model with those dims deleted computes."""

    def __init__(self, norm: nn.Module, keep: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.register_buffer("index", torch.nonzero(keep).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # at least float32, as T5's norm computes (a float64 reference stays float64)
        kept_x = x.index_select(-1, self.index).to(torch.promote_types(x.dtype, torch.float32))
        weight = self.norm.weight.index_select(0, self.index)
        if isinstance(self.norm, nn.LayerNorm):
            bias = self.norm.bias.index_select(0, self.index)
            y = nn.functional.layer_norm(kept_x, (kept_x.shape[-1],), weight, bias, self.norm.eps)
        else:  # T5LayerNorm: no mean, no bias
            y = weight * (kept_x * torch.rsqrt(kept_x.pow(2).mean(-1, keepdim=True) + self.norm.variance_epsilon))
        return torch.zeros_like(x).index_copy(-1, self.index, y.to(x.dtype))


def reference_model(model, masks: dict[str, torch.Tensor]):
    """The folded transformers model parity compares against: itself, or with hidden_z a copy
    whose norms see only the kept dims."""
    if "hidden_z" not in masks or bool((masks["hidden_z"] != 0).all()):
        return model
    ref = copy.deepcopy(model)
    keep = masks["hidden_z"] != 0
    norm_ids = {id(n) for n in hf_layout(ref).norms}
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in norm_ids:
                setattr(parent, name, KeptDimsNorm(child, keep))
    return ref.eval()


# ----- loading --------------------------------------------------------------------------------
@dataclass
class NashCheckpoint:
    """A loaded NASH checkpoint: the folded transformers model, its masks and sizes."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    dims: NashDims
    arch: str  # "t5" or "bart"
    variant: str  # "t5-v1", "t5-v1.1", "bart"
    path: Path | None = None

    @property
    def config(self):
        return self.model.config

    def reference(self):
        return reference_model(self.model, self.masks)


def t5_variant(config) -> str:
    return "t5-v1.1" if getattr(config, "is_gated_act", False) else "t5-v1"


def quiet_transformers() -> None:
    """No progress bars or info lines from transformers (5.x draws a bar per load and save on
    stderr): edgeseq reports its own progress, and `--json` output must stay JSON."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_nash(folder: str | Path) -> NashCheckpoint:
    """Load a Hugging Face T5/BART folder (local files only) and its zs.pt, masks folded in."""
    folder = Path(folder)
    raw = read_hf_config(folder)
    from transformers import AutoModelForSeq2SeqLM

    quiet_transformers()
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise CheckpointError(f"{folder} has config.json but no weights (model.safetensors)",
                              "save the model with save_pretrained(folder)")
    try:
        # local files only, never code from the folder; .bin files load with weights_only
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                                      dtype=torch.float32)
    except Exception as e:
        raise CheckpointError(f"transformers could not load {folder}: {str(e).splitlines()[0][:200]}",
                              "check that config.json matches the weights (save_pretrained writes both)") from e
    model.eval()
    dims = nash_dims(model.config)
    mask_path = folder / MASK_FILE
    masks = load_masks(mask_path, dims) if mask_path.exists() else {}
    fold_masks(model, masks)
    variant = t5_variant(model.config) if raw["model_type"] == "t5" else "bart"
    return NashCheckpoint(model, masks, dims, raw["model_type"], variant, folder)


# ----- decoder layer selection (for users pruning from scratch) -------------------------------
def select_layers(n_layers: int, k: int, how: str = "unif") -> list[int]:
    """Which k of n decoder layers to keep: `unif` spreads them evenly
    (floor((n-1)/(k-1)*d), docs/design.md §1), `low` keeps the first k, `high` the last k."""
    if how not in LAYER_SELECTIONS:
        raise CheckpointError(f"unknown layer selection {how!r}", f"choose one of: {', '.join(LAYER_SELECTIONS)}")
    if not 1 <= k <= n_layers:
        raise CheckpointError(f"cannot keep {k} of {n_layers} decoder layers", f"choose k from 1 to {n_layers}")
    if how == "low":
        return list(range(k))
    if how == "high":
        return list(range(n_layers - k, n_layers))
    if k == 1:
        return [0]
    return [int((n_layers - 1) / (k - 1) * d) for d in range(k)]


@torch.no_grad()
def keep_decoder_layers(model, layers: list[int]) -> None:
    """Shrink a transformers T5/BART decoder to `layers` (in order), in place. T5's relative
    position bias lives in layer 0 only; it moves to the new first layer."""
    if model.config.model_type == "t5":
        blocks = model.decoder.block
        bias = blocks[0].layer[0].SelfAttention.relative_attention_bias
        new = nn.ModuleList([blocks[i] for i in layers])
        first = new[0].layer[0].SelfAttention
        if not first.has_relative_attention_bias:
            first.has_relative_attention_bias = True
            first.relative_attention_bias = bias
        for i, block in enumerate(new):
            block.layer[0].SelfAttention.layer_idx = i
            block.layer[1].EncDecAttention.layer_idx = i
        model.decoder.block = new
        model.config.num_decoder_layers = len(layers)
    else:
        decoder = model.model.decoder
        decoder.layers = nn.ModuleList([decoder.layers[i] for i in layers])
        for i, layer in enumerate(decoder.layers):
            layer.self_attn.layer_idx = i
            layer.encoder_attn.layer_idx = i
        model.config.decoder_layers = len(layers)


def kept_units(masks: dict[str, torch.Tensor], key: str, layer_key: str, layer: int, size: int) -> list[int]:
    """Heads (or FFN neurons) a sublayer keeps: none when its layer mask is zero."""
    if layer_key in masks and bool(masks[layer_key][layer] == 0):
        return []
    return kept(masks[key][layer] if key in masks else None, size)
