"""NASH mask files (`zs.pt`): the keys, their accepted shapes, validation, and what they keep.

The official NASH code saves a dict of soft mask tensors beside a Hugging Face
checkpoint (docs/design.md §1). Each key may come in its training shape ([L, 1, H, 1, 1]) or
its flat shape ([L, H]); both are normalised here to the flat one. Zeros mark pruned
units; other values are scales that `fold_masks` (models/nash.py) multiplies into
the weights. Loading never unpickles code: `torch.load(..., weights_only=True)`.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from edgeseq.errors import CheckpointError

MASK_FILE = "zs.pt"


@dataclass(frozen=True)
class NashDims:
    """The sizes a mask is checked against, read from the checkpoint's config."""

    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    d_model: int
    head_dim: int


# key -> (which stack, what it masks); "layer" keys hold one value per layer
MASK_KEYS: dict[str, tuple[str, str]] = {
    "head_z": ("encoder", "heads"),
    "head_layer_z": ("encoder", "layer"),
    "intermediate_z": ("encoder", "ffn"),
    "mlp_z": ("encoder", "layer"),
    "hidden_z": ("model", "hidden"),
    "dec_self_head_z": ("decoder", "heads"),
    "dec_cross_head_z": ("decoder", "heads"),
    "dec_self_head_layer_z": ("decoder", "layer"),
    "dec_cross_head_layer_z": ("decoder", "layer"),
    "dec_intermediate_z": ("decoder", "ffn"),
    "dec_mlp_z": ("decoder", "layer"),
}


def accepted_shapes(key: str, dims: NashDims) -> list[tuple[int, ...]]:
    """Every shape `key` may have for this checkpoint; the last one is the normal form."""
    stack, kind = MASK_KEYS[key]
    if kind == "hidden":
        return [(dims.d_model,)]
    layers = dims.encoder_layers if stack == "encoder" else dims.decoder_layers
    if kind == "layer":
        return [(layers, 1, 1, 1, 1), (layers, 1), (layers,)]
    if kind == "heads":
        heads = dims.encoder_heads if stack == "encoder" else dims.decoder_heads
        return [(layers, 1, heads, 1, 1), (layers, heads)]
    ffn = dims.encoder_ffn if stack == "encoder" else dims.decoder_ffn
    return [(layers, 1, 1, ffn), (layers, ffn)]


def _describe(key: str, dims: NashDims) -> str:
    stack, kind = MASK_KEYS[key]
    if kind == "hidden":
        return f"d_model = {dims.d_model}"
    layers = dims.encoder_layers if stack == "encoder" else dims.decoder_layers
    what = {
        "layer": "",
        "heads": f", {dims.encoder_heads if stack == 'encoder' else dims.decoder_heads} heads",
        "ffn": f", d_ff = {dims.encoder_ffn if stack == 'encoder' else dims.decoder_ffn}",
    }[kind]
    return f"{layers} {stack} layers{what}"


def normalize_masks(raw: object, dims: NashDims, source: str = MASK_FILE) -> dict[str, torch.Tensor]:
    """Validate a loaded mask dict and bring every entry to its flat float32 shape."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a dict of mask tensors",
                              "save the masks as a dict, e.g. torch.save({'head_z': ...}, 'zs.pt')")
    unknown = sorted(str(k) for k in raw if k not in MASK_KEYS)
    if unknown:
        raise CheckpointError(f"{source} has unknown mask key(s): {', '.join(unknown)}",
                              f"NASH mask keys are: {', '.join(MASK_KEYS)}")
    out = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor", "save masks as tensors")
        shapes = accepted_shapes(key, dims)
        shape = tuple(value.shape)
        if shape not in shapes:
            expected = " or ".join(str(list(s)) for s in shapes)
            layers_given = shape[0] if shape else None
            stack, kind = MASK_KEYS[key]
            layers = dims.encoder_layers if stack == "encoder" else dims.decoder_layers
            if kind != "hidden" and layers_given is not None and layers_given != layers:
                problem = (f"{source}: {key} has masks for {layers_given} layers but the checkpoint's "
                           f"{stack} has {layers} (shape {list(shape)}, expected {expected})")
            else:
                problem = f"{source}: {key} has shape {list(shape)}; expected {expected} ({_describe(key, dims)})"
            raise CheckpointError(problem, "use the zs.pt saved with this checkpoint (after decoder layer selection)")
        flat = value.detach().to(torch.float32).reshape(shapes[-1])
        if not torch.isfinite(flat).all() or (flat < 0).any():
            raise CheckpointError(f"{source}: {key} holds negative or non-finite values",
                                  "mask values are scales in [0, 1]; zeros mark pruned units")
        out[key] = flat
    return out


def load_masks(path: str | Path, dims: NashDims) -> dict[str, torch.Tensor]:
    """Read and validate a zs.pt without unpickling code."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path} is not a readable tensor file ({type(e).__name__}: {str(e)[:120]})",
                              "save the masks with torch.save(dict_of_tensors, 'zs.pt')") from e
    return normalize_masks(raw, dims, source=str(path))


def kept(values: torch.Tensor | None, size: int) -> list[int]:
    """Indices of the units a mask keeps (all of them without a mask)."""
    if values is None:
        return list(range(size))
    return torch.nonzero(values != 0).flatten().tolist()


def layer_kept(layer_values: torch.Tensor | None, layer: int) -> bool:
    return layer_values is None or bool(layer_values[layer] != 0)
