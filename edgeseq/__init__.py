"""edgeseq: ONNX export and edge-deployment compiler for RED, NASH, StagFormer and PASTA.

The driver package (CLI, compile pipeline) lives here; the stage packages
edgeseq.models, edgeseq.exporters, edgeseq.passes and edgeseq.runtimes live in the
repository's top-level folders. This module stays import-light (no torch, no onnx) so
that `edgeseq.runtimes` can be used on an edge box that has only numpy and onnxruntime.
"""

__version__ = "0.1.0"
