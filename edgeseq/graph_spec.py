"""Graph specs as data: each graph's inputs and outputs, their dims, and their wiring.

Torch-free (exporters write them, passes and the artifact writer read them, the manifest
stores them as JSON for the runtime). The wiring is what the runtime follows instead of
name conventions: every tensor has a `role`, and every piece of state names the output
that feeds it (`past_key.0 <- new_key.0`, `memory.1 <- handoff.0`).

Input roles:
  token_ids, positions    the new tokens and their per-row positions
  mask                    1 for a real source / prompt token, 0 for padding
  cache_length            [batch] valid slots of each row's self-attention cache
  cache                   a preallocated cache [batch, H, cache, Dh], only read by the step;
                          `source` names the step output written at slot cache_length - lag,
                          `init` the prefill output holding the prompt's entries
  encoder_output          per-request state from the encoder graph (`source` names the
                          encoder tensor); `pad` fills the slots past a row's source
  handoff                 state replaced every step (`source` names the output)
Output roles: logits, new_cache, cache (a prefill's full caches), encoder_output, handoff.

Graph roles: encoder, prefill, extend (a block of prompt tokens over exact-length caches),
decoder_step, step, stage.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

INPUT_ROLES = ("token_ids", "positions", "mask", "cache_length", "cache", "encoder_output", "handoff")
OUTPUT_ROLES = ("logits", "new_cache", "cache", "encoder_output", "handoff")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `dims` holds ints or symbolic names (dynamic axes).

    `example` says how to fill an example input at export (token_ids, positions, mask,
    lengths or hidden); `stack` names the StagFormer stack whose state an input is.
    """

    name: str
    dtype: str
    dims: tuple
    example: str = "hidden"
    role: str = ""
    source: str | None = None
    init: str | None = None
    lag: int = 0
    pad: float = 0.0
    stack: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "dims": list(self.dims), "role": self.role}
        for key, value, default in (("source", self.source, None), ("init", self.init, None), ("lag", self.lag, 0),
                                    ("pad", self.pad, 0.0), ("stack", self.stack, None)):
            if value != default:
                out[key] = value
        return out


STEP_ROLES = ("decoder_step", "step", "stage")  # graph roles a generated token runs through (B rows)


@dataclass(frozen=True)
class GraphSpec:
    name: str  # file stem and manifest key
    role: str  # what the runtime uses it for: encoder, prefill, decoder_step, step, stage
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self, file: str) -> dict[str, Any]:
        return {
            "file": file,
            "role": self.role,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    def state_owner(self) -> dict[str, int]:
        """Inputs that are one stack's state -> that stack (StagFormer stage splitting)."""
        return {t.name: t.stack for t in self.inputs if t.stack is not None}

    def output_owner(self) -> dict[str, int]:
        """Outputs that one stack produces -> that stack (even when the exporter's common
        subexpression elimination let another stack's identical node compute them)."""
        return {t.name: t.stack for t in self.outputs if t.stack is not None}


@dataclass
class ExportedGraph:
    spec: GraphSpec
    model: "ir.Model"


# The ways a compiled model decodes; the runtime picks its engine by this manifest field.
DECODE_SHAPES = ("encoder_decoder", "decoder_only")

# Prompt tokens per block of a blocked prefill (a decoder-only artifact with an `extend`
# graph): the first block runs the prefill graph, each further one the extend graph over
# the caches before it, and the prefix cache keeps whole blocks. Measured (benchmarks/
# prefix_cache.py): 32 keeps the per-block call overhead under the block's compute on the
# `edge` presets while a cut inside a block loses at most 31 tokens of reuse.
PREFIX_BLOCK = 32
