"""PyTorch reference models, checkpoints, the synthetic task and tiny training loops.

Each family has one file (red.py, ...), registered in `FAMILIES` so the CLI, the
exporters and the parity checks can find its config class, presets and model class.
"""

from .registry import FAMILIES, family_spec

__all__ = ["FAMILIES", "family_spec"]
