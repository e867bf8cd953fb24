"""What `compile` and `parity` start from: an edgeseq checkpoint or a Hugging Face T5/BART folder.

An edgeseq folder (config.json with "family") holds a red or stagformer model; a
Hugging Face folder (config.json with "model_type", optional zs.pt) is a NASH model.
Either way the caller gets the family, the object the family's exporter takes, and
the model_config the runtime will read from the manifest.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Source:
    family: str
    model: Any  # a torch model (red, stagformer) or exporters.nash.NashExportModel
    config: dict[str, Any]


def load_source(path: str | Path) -> Source:
    from edgeseq.models.nash import is_hf_folder

    if is_hf_folder(path):
        from edgeseq.exporters.nash import prepare, runtime_config
        from edgeseq.models.nash import load_nash

        model = prepare(load_nash(path))
        return Source("nash", model, runtime_config(model))
    from edgeseq.models.checkpoint import load_checkpoint
    from edgeseq.models.config import config_to_dict

    family, model = load_checkpoint(path)
    config = config_to_dict(model.config, family)
    config.pop("family")
    return Source(family, model, config)
