"""Artifact loading and decoding; torch-free (an edge box installs numpy and onnxruntime only).

    with edgeseq.runtimes.load("artifacts/red-tiny") as model:
        model.generate([[5, 17, 3]], max_new_tokens=8).tokens
        for token in model.stream([5, 17, 3], max_new_tokens=8): ...

The layers, bottom up: a backend runs one graph (backend.py, ort_backend.py); the cache
manager owns every row's buffers (kv_cache.py); the engine admits rows and steps them,
following the manifest's wiring (engine.py); a request owns one or more rows
(requests.py) and its policy says what they do after each step (policies/: single,
samples, pasta); the one scheduler batches every caller's rows continuously
(scheduler.py); the loaded model checks requests and hands out results (model.py).
"""

import os
from pathlib import Path

from edgeseq.errors import EdgeseqError, LoadError
from edgeseq.graph_spec import DECODE_SHAPES

from .artifact import FORMAT_VERSION, Artifact, read_artifact
from .backend import TARGETS, make_backend
from .decoding import GenerateResult
from .engine import Engine
from .model import LoadedModel, TokenStream
from .policies import Decoding, decoding_for
from .policies.pasta import SCHEDULES as PASTA_SCHEDULES
from .prefix_cache import DEFAULT_PREFIX_CACHE_MB, PrefixCache, check_bound, unsupported_reason
from .requests import RowResult, TokenEvent
from .sampling import SamplingOptions
from .scheduler import Scheduler

# how a decoder-only model's stages run; encoder-decoder models have one schedule
SCHEDULES = Decoding.schedules


def load(path: str | Path, target: str = "ort-cpu", threads: int | None = None, verify: bool = True,
         schedule: str | None = None, low_memory: bool = False, max_batch: int = 32,
         max_queue: int = 256, trusted_key: str | Path | None = None,
         prefix_cache_mb: float | None = None) -> LoadedModel:
    """Load a compiled artifact: verify it, create every session, start its scheduler.

    `threads` is the total intra-op thread budget (default: all cores); `schedule`
    (decoder-only models split into stages) runs the stages of a step `concurrent`ly
    (the default), `sequential`ly, or `recurrent`ly (shared weights: the last stack
    only); for a PASTA artifact it is how its threads run: "parallel" (the default; split
    stages run concurrently) or "sequential" (the interpreter's order). `low_memory`
    turns off ONNX Runtime's weight prepacking (about half the resident memory, slower at
    batch > 1); `max_batch` rows share a step at most, `max_queue` requests may wait.
    `trusted_key` (a PEM public key): refuse, before reading anything, an artifact that is
    not signed by it or whose files changed since (runtimes/signature.py; the sign extra).
    `prefix_cache_mb` bounds the prefix cache (runtimes/prefix_cache.py): whole blocks of
    prompt tokens computed once and reused by every later prompt that starts with them;
    None: DEFAULT_PREFIX_CACHE_MB where the artifact supports it, 0: off (outputs are the
    same either way). Asking for one where the artifact cannot share prefixes says why.
    Use it as a context manager, or call `close()`, to stop its threads.
    """
    if trusted_key is not None:
        from .signature import verify_artifact

        verify_artifact(path, trusted_key)
    artifact = read_artifact(path, verify=verify)
    if prefix_cache_mb is not None:
        check_bound(prefix_cache_mb, 0)  # not a number, or negative: refused before any session is made
    try:
        model = _build(artifact, target, threads, schedule, low_memory, max_batch, max_queue)
    except EdgeseqError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        # the checksums cover the graphs and weights, not the manifest itself: a hand-edited
        # or damaged manifest is named as such, never a traceback from deep in the engine
        raise LoadError(f"the manifest of {artifact.path} is malformed ({type(e).__name__}: {e})",
                        "recompile the artifact with `edgeseq compile`") from e
    try:
        attach_prefix_cache(model.engine, artifact, prefix_cache_mb)
    except BaseException:
        model.close()
        raise
    return model


def attach_prefix_cache(engine: Engine, artifact: Artifact, prefix_cache_mb: float | None) -> None:
    """Give the engine its prefix cache, where the artifact supports one and the bound is not 0."""
    reason = unsupported_reason(artifact.manifest)
    if prefix_cache_mb is not None:
        capacity = check_bound(prefix_cache_mb, engine.blocked.block_bytes if reason is None else 0)
        if capacity and reason is not None:
            raise LoadError(f"prefix caching does not apply to {artifact.path}: {reason}",
                            "load it without prefix_cache_mb (or with 0)")
    elif reason is None:
        capacity = check_bound(DEFAULT_PREFIX_CACHE_MB, engine.blocked.block_bytes)
    else:
        capacity = 0
    if capacity:
        engine.prefix_cache = PrefixCache(artifact.digest, engine.blocked.block_tokens, capacity)


def _build(artifact: Artifact, target: str, threads: int | None, schedule: str | None, low_memory: bool,
           max_batch: int, max_queue: int) -> LoadedModel:
    decode = artifact.manifest["decode"]
    if decode["shape"] not in DECODE_SHAPES:
        raise LoadError(f"artifact decode shape {decode['shape']!r} has no engine in this edgeseq",
                        f"this edgeseq runs: {', '.join(DECODE_SHAPES)}; upgrade edgeseq")
    decoding = decoding_for(artifact)
    schedule = decoding.engine_schedule(schedule)
    steps, handoffs = list(decode["step"]), {}
    if schedule == "recurrent":
        steps, handoffs = recurrent_step(artifact)
    concurrent = schedule == "concurrent" and len(steps) > 1
    rows = max(max_batch, decoding.min_rows)
    return _assemble(artifact, target, threads, low_memory, steps, concurrent, rows, handoffs,
                     lambda backend, engine: LoadedModel(artifact, backend, engine,
                                                         Scheduler(engine, rows, max_queue), decoding))


def _assemble(artifact: Artifact, target: str, threads: int | None, low_memory: bool, steps: list[str],
              concurrent: bool, rows: int, handoffs: dict[str, str], make_model):
    """Sessions for the step graphs (the thread budget split between concurrent stages), the
    engine over them, then `make_model(backend, engine)`; what was built is closed on failure."""
    total = threads or os.cpu_count() or 1
    per_stage = max(1, total // len(steps)) if concurrent else total
    # one session at a time may spin its threads between kernels; concurrent stages must not
    # (an idle stage's spinning threads would steal the busy one's cores)
    backend = make_backend(artifact, target, total, {g: per_stage for g in steps}, low_memory, spin=not concurrent)
    try:
        engine = Engine(artifact, backend, rows, steps, concurrent, handoffs)
    except BaseException:
        backend.close()
        raise
    try:
        return make_model(backend, engine)
    except BaseException:
        engine.close()
        backend.close()
        raise


def recurrent_step(artifact: Artifact) -> tuple[list[str], dict[str, str]]:
    """Recurrent decoding (shared-weight StagFormer): each step runs the last stage alone, and
    its own output, not the previous stack's, becomes its next memory."""
    c, decode = artifact.config, artifact.manifest["decode"]
    if not c.get("shared_weights") or c.get("n_stacks", 1) < 2:
        raise LoadError("recurrent decoding needs a model with shared_weights=true and n_stacks >= 2",
                        "use --schedule concurrent or sequential")
    if len(decode["step"]) < 2:
        raise LoadError("recurrent decoding needs a split artifact (one graph per stack)", "recompile without --no-split")
    last = decode["step"][-1]
    inputs = artifact.manifest["graphs"][last]["inputs"]
    memory = [t for t in inputs if t["role"] == "handoff"]
    outputs = {t["name"] for t in artifact.manifest["graphs"][last]["outputs"] if t["role"] == "handoff"}
    if len(memory) != 1 or len(outputs) != 1:
        raise LoadError("the last stage does not read and write exactly one handoff", "recompile the artifact")
    return [last], {memory[0]["name"]: outputs.pop()}


__all__ = ["SCHEDULES", "PASTA_SCHEDULES", "FORMAT_VERSION", "TARGETS", "Artifact", "GenerateResult", "LoadedModel",
           "RowResult", "SamplingOptions", "TokenEvent", "TokenStream", "load", "read_artifact"]
