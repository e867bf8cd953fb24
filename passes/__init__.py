"""ONNX -> ONNX rewrites on onnx-ir models, one pass per file, run as one pipeline per compile.

pipeline.py builds the compile's one onnx-ir PassManager from the family's own passes, the
target and the precision, and runs it over all of an artifact's graphs at once;
contracts.py holds what every pass's requires()/ensures() share and how a pass says why
it declined a candidate. No torch here: an edge box may rewrite graphs without it.
"""

from .contracts import ContractPass, Declined
from .pipeline import (
    EachGraph,
    GraphSet,
    GraphSetPass,
    SplitStepIntoStages,
    StripPrunedGraphs,
    compile_pipeline,
    explain,
    run_pipeline,
)

__all__ = ["ContractPass", "Declined", "EachGraph", "GraphSet", "GraphSetPass", "SplitStepIntoStages",
           "StripPrunedGraphs", "compile_pipeline", "explain", "run_pipeline"]
