"""RED's record: a decoder-only LM read as a regularized encoder-decoder (models/red.py)."""

from .native import native_family
from .record import lazy, register

register(native_family(
    "red", summary="decoder-only LM read as a regularized encoder-decoder",
    exporter=lazy("edgeseq.exporters.red:RedExporter"), parity=lazy("edgeseq.parity:encoder_decoder_parity"),
    presets="edgeseq.models.red:PRESETS", config_class="edgeseq.models.red:RedConfig",
    model_class="edgeseq.models.red:RedModel", torch_baseline=True,
))
