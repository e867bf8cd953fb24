"""Decoding policies (what a request's rows do after each step) and the decodings that make
requests for an artifact.

A `Decoding` is chosen once per loaded model from its manifest (a registry: the PASTA
decoding registers itself for manifests with a "pasta" section; every other artifact
decodes tokens). It checks a call's arguments, validates the options only it takes, and
turns prompts into requests, each with its policy:
- tokens: `single` (one row: greedy or seeded sampling) or `samples` (`n` rows, one prefill);
- pasta: one request per document, its threads the rows (runtimes/policies/pasta.py).
Beam search will be one more policy here. The scheduler, the model and the server know
only this interface.
"""

from .base import Policy, RowOps
from .decodings import DECODINGS, Decoding, decoding_for

__all__ = ["DECODINGS", "Decoding", "Policy", "RowOps", "decoding_for"]
