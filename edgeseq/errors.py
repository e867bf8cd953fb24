"""One exception type per stage, each saying which stage failed, what was wrong and what to do.

Kept free of heavy imports: the torch-free runtime raises these too.
"""


class EdgeseqError(Exception):
    """Base of every error edgeseq raises on purpose; the CLI prints these as one line."""

    stage = "edgeseq"

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.stage}: {self.problem}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


class ConfigError(EdgeseqError):
    """A model family, preset or config value that does not exist or has the wrong type."""

    stage = "config"


class CheckpointError(EdgeseqError):
    """A checkpoint folder that is missing files, is corrupt, or names an unknown family."""

    stage = "checkpoint"


class ExportError(EdgeseqError):
    """torch -> ONNX tracing failed."""

    stage = "export"


class PassError(EdgeseqError):
    """An ONNX -> ONNX rewrite found a graph it cannot handle."""

    stage = "pass"


class BuildError(EdgeseqError):
    """Writing the artifact folder failed (target, precision, output folder)."""

    stage = "build"


class ParityError(EdgeseqError):
    """The compiled graphs disagree with the PyTorch model beyond the tolerance."""

    stage = "parity"


class LoadError(EdgeseqError):
    """An artifact folder that is incomplete, altered, or from a newer format."""

    stage = "load"


class GenerateError(EdgeseqError):
    """Bad generation input: empty, out-of-vocabulary ids, too long, bad sampling values."""

    stage = "generate"


# The kinds of GenerateError a server answers differently (edgeseq/serving maps them to HTTP
# statuses); each is still a GenerateError for callers that catch that.
class QueueFullError(GenerateError):
    """The scheduler's queue is at max_queue: retry later."""


class DeadlineError(GenerateError):
    """The request's deadline passed before it finished."""


class StepError(GenerateError):
    """A decode step failed inside the engine (a graph, a stage worker): not the caller's input."""


class ModelClosedError(GenerateError):
    """The model was closed, or its scheduler stopped, before the request finished."""
