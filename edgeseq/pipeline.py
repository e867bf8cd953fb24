"""compile = export -> passes -> build -> parity, into a folder that appears only when complete.

Everything is written to a temporary sibling of the output folder and renamed into
place at the end; a failure at any stage (including failed parity) leaves nothing behind.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseq.atomic import atomic_folder
from edgeseq.build import write_artifact, write_manifest
from edgeseq.errors import BuildError, CheckpointError, ParityError
from edgeseq.exporters import export_graphs
from edgeseq.families import family_of_checkpoint
from edgeseq.generation_defaults import read_generation
from edgeseq.passes import compile_pipeline, explain, run_pipeline
from edgeseq.runtimes import load as load_artifact
from edgeseq.runtimes.backend import TARGETS, check_target
from edgeseq.runtimes.cpu_features import half_precision_note
from edgeseq.tokenizer_files import carry_tokenizer

# precision -> the targets that run it. int8 is ONNX Runtime CPU's DynamicQuantizeMatMul
# (passes/quantize_weights.py). fp16/bf16 would need AVX-512 FP16 / AVX-512 BF16 or AMX, and
# ONNX Runtime's CPU provider has no half-precision MatMul that beats fp32 even where the CPU
# has them (MLAS converts halves to floats), so they stay refused; the error names what the
# CPU has (runtimes/cpu_features.py).
PRECISIONS: dict[str, tuple[str, ...]] = {"fp32": TARGETS, "int8": ("ort-cpu",), "fp16": (), "bf16": ()}
PRECISION_CHOICES = "fp32, int8 (ort-cpu); fp16 and bf16 are not available on CPU"


def check_build_options(target: str, precision: str) -> None:
    try:
        check_target(target)
    except Exception as e:
        raise BuildError(e.problem if hasattr(e, "problem") else str(e), getattr(e, "fix", None)) from e
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r}", f"choose one of: {PRECISION_CHOICES}")
    if not PRECISIONS[precision]:
        raise BuildError(f"precision {precision!r} is not available yet: {half_precision_note(precision)}",
                         "use --precision fp32 or int8")
    if target not in PRECISIONS[precision]:
        raise BuildError(f"precision {precision!r} does not run on target {target!r}",
                         f"use --target {' or '.join(PRECISIONS[precision])}, or --precision fp32")


def compile_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    target: str = "ort-cpu",
    precision: str = "fp32",
    verify: bool = True,
    force: bool = False,
    on_stage: Callable[[str], None] | None = None,
    split: bool = True,
    on_explain: Callable[[list[dict]], None] | None = None,
    task: str | None = None,
    sign_key: str | Path | None = None,
) -> dict[str, Any]:
    """Compile a checkpoint folder into an artifact folder; returns the manifest. `on_explain`
    gets the pass pipeline's account (passes.explain) before the artifact is written; `task`
    takes the checkpoint's task_specific_params[task] as the artifact's default decoding;
    `sign_key` (an EC private key in PEM) signs the finished folder before it appears."""
    say = on_stage or (lambda _: None)
    out = Path(out)
    check_build_options(target, precision)
    if sign_key is not None and not Path(sign_key).is_file():  # before minutes of export
        raise BuildError(f"--sign-key {sign_key} is not a file", "pass the PEM file of an elliptic-curve private key")
    if out.exists() and not force:
        raise BuildError(f"output folder {out} already exists", "choose another -o folder or pass --force")
    say("loading checkpoint")
    record = family_of_checkpoint(checkpoint)
    source = record.load(Path(checkpoint))
    family, model = source.family, source.model
    exporter = record.exporter()
    try:
        bounds = exporter.bounds(precision)
    except ValueError:
        raise BuildError(f"the {family} family does not offer precision {precision!r}", "use --precision fp32") from None
    extras = record.manifest_extras(model)  # before the export: a refused checkpoint fails fast
    generation = read_generation(checkpoint, task, source.config["vocab_size"])
    if generation is not None:
        extras["generation"] = generation
    graphs = export_graphs(model, exporter, on_graph=lambda spec: say(f"exporting {spec.name}"))
    say("running graph passes" + (" (int8 weights last)" if precision == "int8" else ""))
    pipeline = compile_pipeline(record.passes(model, target, split), target, precision, exporter.int8_keep_fp32)
    rewritten = run_pipeline(pipeline, graphs)
    graphs, extras = rewritten.graphs, {**extras, **rewritten.sections}
    report = explain(pipeline)
    if on_explain:
        on_explain(report)
    extras["passes"] = pass_summary(report)
    with atomic_folder(out) as tmp:
        say("writing artifact")
        manifest = write_artifact(
            tmp, family, source.config, graphs, target, precision, exporter.decode(model.config, split),
            exporter.schedule(model.config, split), exporter.sequential_depth_per_token(model.config, split),
        )
        manifest.update(extras)
        tokenizer = carry_tokenizer(checkpoint, tmp, source.config["vocab_size"])
        if tokenizer:
            manifest["tokenizer"] = tokenizer
        write_manifest(tmp, manifest)
        if verify:
            say("checking parity against PyTorch")
            with load_artifact(tmp, target=target) as runtime:
                report = record.parity(runtime, model, bounds)
            manifest["parity"] = report
            write_manifest(tmp, manifest)
            if not report["passed"]:
                raise ParityError(
                    f"{precision} quality bounds broken ({'; '.join(report['failures']) or 'see the report'}): "
                    f"max abs logit difference {report['max_abs_logit_diff']:.2e} (bound {report['atol']:.1e}, PyTorch's own "
                        f"fp32-vs-fp64 error {report.get('reference_fp64_vs_fp32') or 0:.1e}), "
                    f"greedy agreement {report['greedy_token_agreement']:.3f}",
                    "report this model config; --no-verify skips the check at your own risk",
                )
        if sign_key is not None:
            from edgeseq.runtimes.signature import sign_artifact

            say("signing")
            sign_artifact(tmp, sign_key)
    return manifest


MAX_REASONS = 12  # per pass in the manifest: the most frequent


def pass_summary(report: list[dict]) -> list[dict]:
    """The manifest's "passes": per pass, rewrites per graph and declined candidates counted
    by reason (`compile --explain` prints every one)."""
    summary = []
    for entry in report:
        reasons: dict[str, int] = {}
        for d in entry["declined"]:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        top = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:MAX_REASONS])
        summary.append({"pass": entry["pass"], "rewrote": entry["rewrote"], "declined": top})
    return summary


def parity_report(artifact: str | Path, reference: str | Path, steps: int = 64) -> dict[str, Any]:
    """`edgeseq parity`: load both sides and run the family's parity check."""
    record = family_of_checkpoint(reference)
    with load_artifact(artifact) as runtime:
        if record.name != runtime.artifact.family:
            raise CheckpointError(
                f"reference is a {record.name} checkpoint but the artifact is {runtime.artifact.family}",
                "pass the checkpoint the artifact was compiled from",
            )
        source = record.load(Path(reference))
        bounds = record.exporter().bounds(runtime.artifact.manifest["precision"])
        return record.parity(runtime, source.model, bounds, steps=steps)
