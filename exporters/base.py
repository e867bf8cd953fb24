"""What every family's exporter shares: graph specs as data, example inputs, the dynamo export.

A family exporter is mostly data (optimum's OnnxConfig idea): which graphs it emits,
their inputs and outputs with symbolic dims, one torch module per graph, and the
family's quality bounds per precision. `export_graphs` does the tracing for all of them.
"""

import contextlib
import inspect
import io
import logging
import warnings
from dataclasses import dataclass

import onnx_ir as ir
import torch

from edgeseq.errors import ExportError
from edgeseq.graph_spec import ExportedGraph, GraphSpec, TensorSpec
from edgeseq.quality import INT8_BOUNDS, QualityBounds

# Sizes used for the example inputs of each symbolic dim. None may be 0 or 1: the
# exporter would specialise the graph to that size (docs/design.md §4).
EXAMPLE_DIM_SIZES = {"batch": 2, "source": 5, "past": 3, "new": 2, "history": 3, "prompt": 5, "cache": 4}


def split_dim(d: str) -> tuple[str, int]:
    """'history+2' -> ('history', 2): a dim derived from another by a constant offset."""
    name, plus, offset = d.partition("+")
    return name, int(offset) if plus else 0


@dataclass
class FamilyExporter:
    """Base for a family's exporter; subclasses fill in the graphs and their modules."""

    family: str
    atol: float = 1e-4  # max abs logit difference accepted at fp32
    int8: QualityBounds | None = INT8_BOUNDS  # what int8 weights may cost (None: int8 not offered)
    int8_keep_fp32: tuple[str, ...] = ()  # weight-name fragments whose MatMuls stay fp32 at int8

    def bounds(self, precision: str) -> QualityBounds:
        """The quality this family's artifacts promise at `precision` (edgeseq/quality.py)."""
        if precision == "int8" and self.int8 is not None:
            return self.int8
        if precision != "fp32":
            raise ValueError(f"the {self.family} exporter declares no bounds for precision {precision!r}")
        return QualityBounds("fp32", self.atol)

    def graph_specs(self, config) -> list[GraphSpec]:
        raise NotImplementedError

    def graph_module(self, model: torch.nn.Module, spec: GraphSpec) -> torch.nn.Module:
        raise NotImplementedError

    def sequential_depth_per_token(self, config, split: bool) -> int:
        """Layers a generated token must pass through one after another."""
        raise NotImplementedError

    def schedule(self, config, split: bool) -> list[dict]:
        """The stages the runtime runs, which graphs each uses, and how often."""
        raise NotImplementedError

    def decode(self, config, split: bool) -> dict:
        """The manifest's `decode` record: the decode shape (edgeseq.graph_spec.DECODE_SHAPES),
        the graph run once per request and the graphs of one step."""
        raise NotImplementedError


def example_input(t: TensorSpec, config, generator: torch.Generator) -> torch.Tensor:
    shape = [EXAMPLE_DIM_SIZES[split_dim(d)[0]] + split_dim(d)[1] if isinstance(d, str) else d for d in t.dims]
    if t.example == "token_ids":
        return torch.randint(3, config.vocab_size, shape, generator=generator)
    if t.example == "positions":
        return torch.randint(0, min(16, config.max_positions), shape, generator=generator)
    if t.example == "mask":
        return torch.ones(shape, dtype=torch.long)
    if t.example == "lengths":  # valid slots of a cache of EXAMPLE_DIM_SIZES["cache"]
        return torch.randint(0, EXAMPLE_DIM_SIZES["cache"], shape, generator=generator)
    return torch.randn(shape, generator=generator)


def dynamic_shapes(spec: GraphSpec, module: torch.nn.Module) -> tuple:
    """Per-input dynamic axes, shaped like forward's arguments (a *args tail is one tuple)."""
    dims: dict[str, torch.export.Dim] = {}
    out = []
    for t in spec.inputs:
        axes = {}
        for axis, d in enumerate(t.dims):
            if isinstance(d, str):
                name, offset = split_dim(d)
                base = dims.setdefault(name, torch.export.Dim(name, min=0))
                axes[axis] = base + offset if offset else base
        out.append(axes or None)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        named = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        return (*out[:named], tuple(out[named:]))
    return tuple(out)


def export_graph(module: torch.nn.Module, spec: GraphSpec, config) -> ir.Model:
    """Trace one graph with the dynamo exporter; errors name the graph and the stage."""
    generator = torch.Generator().manual_seed(0)
    args = tuple(example_input(t, config, generator) for t in spec.inputs)
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_torch_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dynamic_shapes(spec, module),
                optimize=False,  # optimize_graph below: the exporter's own would merge equal weights
                verbose=False,
            )
            optimize_graph(program.model)
    except Exception as e:  # the exporter raises many types; all mean the same thing here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"tracing graph {spec.name!r} failed (step 1/3 of compile): {first}",
            "check that the checkpoint loads and runs in PyTorch; report the full error with --debug",
        ) from e
    return program.model


def optimize_graph(model: ir.Model) -> None:
    """The exporter's optimizer (onnxscript's optimize_ir: inline, fold constants, rewrite,
    lift constants, CSE) without its DeduplicateInitializersPass, plus one fold that
    optimizer declines: what the graph computes from weights alone with a small result
    becomes a constant (passes/fold_weights.py; StagFormer's null memory slot).

    The deduplication pass merges initializers with equal contents into one, so a freshly initialised
    BART's zero biases, or any two equal weights, become one tensor read by many layers:
    the graph passes address weights by name and prune each layer's own (issue: slicing a
    shared bias for one layer's kept heads broke every other reader). The artifact writer
    still stores equal tensors once in weights.bin.
    """
    import onnxscript.optimizer
    import onnxscript.rewriter
    from edgeseq.passes.fold_weights import FoldWeightOnlyPass
    from onnx_ir.passes import common

    common.InlinePass()(model)
    for _ in range(2):
        folded = onnxscript.optimizer.fold_constants(model)
        onnxscript.rewriter.rewrite(model)
        common.RemoveUnusedNodesPass()(model)
        common.RemoveUnusedFunctionsPass()(model)
        common.RemoveUnusedOpsetsPass()(model)
        if not folded.modified:
            break
    FoldWeightOnlyPass()(model)
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


@contextlib.contextmanager
def _quiet_torch_logs():
    """The exporter and its optimizer log per-op notes (a missing torchvision, a constant
    they decline to fold) that mean nothing to a user and would pollute --json output."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous):
            logger.setLevel(level)


def export_graphs(model: torch.nn.Module, exporter: FamilyExporter, on_graph=None) -> list[ExportedGraph]:
    graphs = []
    for spec in exporter.graph_specs(model.config):
        if on_graph:
            on_graph(spec)
        graphs.append(ExportedGraph(spec, export_graph(exporter.graph_module(model, spec), spec, model.config)))
    return graphs
