"""The family registry: one record per model family, everything the driver needs to know.

How a checkpoint of the family is recognised and loaded, its exporter, its graph passes
for a target, its parity check against PyTorch, how `edgeseq init` makes one, and
whether `bench --vs-torch` can time it in PyTorch eager. The decode shape is the
exporter's (`FamilyExporter.decode`); compile writes it into the manifest and the
runtime reads it from there, never from the family name.

Importing this module is cheap: every record's functions import torch and the family's
modules only when called.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseq.errors import BuildError, CheckpointError, ConfigError


@dataclass
class Source:
    """What compile and parity start from: the family, the object its exporter takes, and the
    model_config the runtime will read from the manifest."""

    family: str
    model: Any
    config: dict[str, Any]


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    recognises: Callable[[Path], bool]  # is this checkpoint folder one of ours?
    load: Callable[[Path], Source]
    exporter: Callable[[], Any]  # -> exporters.base.FamilyExporter
    passes: Callable[[list, Any, str, bool], tuple[list, dict]]  # graphs, model, target, split -> graphs, manifest extras
    parity: Callable[..., dict]  # (runtime, model, atol, steps=...) -> report
    init: Callable[..., Path]  # (out, preset, sets, seed=, force=) -> checkpoint folder
    presets: Callable[[], list[str]]
    torch_baseline: bool = False  # `bench --vs-torch` can time its checkpoint in PyTorch eager
    notes: dict[str, str] = field(default_factory=dict)
    # optional hooks for what only some families have (torch-free: an edge box runs them)
    bench: Callable[..., dict] | None = None  # (artifact path, rounds, threads, on_progress) -> report
    print_bench: Callable[[Any, dict], None] | None = None  # (console, report)
    print_inspect: Callable[[Any, dict], None] | None = None  # (console, inspect info): its own section


# ----- edgeseq checkpoints (config.json with "family") ----------------------------------------
def _has_family(name: str) -> Callable[[Path], bool]:
    def recognises(path: Path) -> bool:
        from edgeseq.models.checkpoint import CONFIG_FILE

        try:
            raw = json.loads((Path(path) / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(raw, dict) and raw.get("family") == name

    return recognises


def _load_edgeseq(path: Path) -> Source:
    from edgeseq.models.checkpoint import load_checkpoint
    from edgeseq.models.config import config_to_dict

    family, model = load_checkpoint(path)
    config = config_to_dict(model.config, family)
    config.pop("family")
    return Source(family, model, config)


def _init_edgeseq(name: str) -> Callable[..., Path]:
    def init(out, preset=None, sets=(), seed: int = 0, force: bool = False) -> Path:
        from edgeseq.models.checkpoint import init_checkpoint

        return init_checkpoint(name, out, preset, sets, seed=seed, force=force)

    return init


def _edgeseq_presets(name: str) -> Callable[[], list[str]]:
    def presets() -> list[str]:
        from edgeseq.models.registry import family_spec

        return list(family_spec(name).presets)

    return presets


def _no_passes(graphs, model, target, split):
    return graphs, {}


def _split_stages(graphs, model, target, split):
    from edgeseq.passes import split_stagformer_steps

    return (split_stagformer_steps(graphs, model.config.n_stacks) if split else graphs), {}


PASTA_BENCH_SEED = 31_337


def _pasta_passes(graphs, model, target, split):
    """StagFormer's stage split, and the manifest's "pasta" section: the tag ids the
    runtime's parser and scheduler read, and the task vocabulary `inspect` shows."""
    from edgeseq.models.pasta_task import TAGS, PastaTask, pasta_examples

    task = PastaTask()
    if model.config.vocab_size != task.vocab_size:  # the tags, parity documents and bench prompts are the task's
        raise BuildError(f"this PASTA checkpoint has vocab_size={model.config.vocab_size}, not the PASTA task's "
                         f"{task.vocab_size}", "train it with scripts/train_pasta.py, or `edgeseq init pasta` without "
                         "setting vocab_size")
    graphs, _ = _split_stages(graphs, model, target, split)
    return graphs, {"pasta": {"tags": TAGS.as_dict(), "vocabulary": task.vocabulary(),
                              "bench_prompts": [e.prompt for e in pasta_examples(8, PASTA_BENCH_SEED, k=4)]}}


def _pasta_exporter():
    from edgeseq.exporters.stagformer import StagFormerExporter

    return StagFormerExporter(family="pasta")


def _pasta_bench(*args, **kwargs):
    from edgeseq.pasta_bench import pasta_bench

    return pasta_bench(*args, **kwargs)


def _print_pasta_bench(console, report) -> None:
    from edgeseq.pasta_cli import print_pasta_bench

    print_pasta_bench(console, report)


def _print_pasta_section(console, info) -> None:
    from edgeseq.pasta_cli import print_pasta_section

    print_pasta_section(console, info["pasta"])


def _pasta_parity(*args, **kwargs):
    from edgeseq.pasta_parity import pasta_parity

    return pasta_parity(*args, **kwargs)


def _red_exporter():
    from edgeseq.exporters.red import RedExporter

    return RedExporter()


def _stagformer_exporter():
    from edgeseq.exporters.stagformer import StagFormerExporter

    return StagFormerExporter()


def _red_parity(*args, **kwargs):
    from edgeseq.parity import encoder_decoder_parity

    return encoder_decoder_parity(*args, **kwargs)


def _decoder_only_parity(*args, **kwargs):
    from edgeseq.parity import decoder_only_parity

    return decoder_only_parity(*args, **kwargs)


# ----- NASH: Hugging Face T5/BART folders (+ zs.pt) --------------------------------------------
def _is_hf_folder(path: Path) -> bool:
    from edgeseq.models.nash import is_hf_folder

    return is_hf_folder(path)


def _load_nash(path: Path) -> Source:
    from edgeseq.exporters.nash import prepare, runtime_config
    from edgeseq.models.nash import load_nash

    model = prepare(load_nash(path))
    return Source("nash", model, runtime_config(model))


def _nash_exporter():
    from edgeseq.exporters.nash import NashExporter

    return NashExporter()


def _strip_pruned(graphs, model, target, split):
    from edgeseq.build import graph_stats
    from edgeseq.exporters.nash import plan_summary
    from edgeseq.passes import strip_pruned_units

    before = graph_stats(graphs)
    graphs = strip_pruned_units(graphs, model.plan, fuse_kernels=target.startswith("ort"))
    return graphs, {"pruning": {"kept": plan_summary(model.plan), "before": before, "after": graph_stats(graphs)}}


def _nash_parity(*args, **kwargs):
    from edgeseq.parity import hf_parity

    return hf_parity(*args, **kwargs)


def _init_nash(out, preset=None, sets=(), seed: int = 0, force: bool = False) -> Path:
    from edgeseq.models.nash_checkpoints import init_nash_checkpoint

    return init_nash_checkpoint(out, preset, sets, seed=seed, force=force)


def _nash_presets() -> list[str]:
    from edgeseq.models.nash_checkpoints import SIZES

    return list(SIZES)


FAMILIES: dict[str, Family] = {
    "red": Family(
        "red", "decoder-only LM read as a regularized encoder-decoder",
        _has_family("red"), _load_edgeseq, _red_exporter, _no_passes, _red_parity,
        _init_edgeseq("red"), _edgeseq_presets("red"), torch_baseline=True,
    ),
    "nash": Family(
        "nash", "pruned Hugging Face T5/BART (narrow encoder, shallow decoder)",
        _is_hf_folder, _load_nash, _nash_exporter, _strip_pruned, _nash_parity,
        _init_nash, _nash_presets,
    ),
    "stagformer": Family(
        "stagformer", "decoder stacks staggered in time",
        _has_family("stagformer"), _load_edgeseq, _stagformer_exporter, _split_stages, _decoder_only_parity,
        _init_edgeseq("stagformer"), _edgeseq_presets("stagformer"),
    ),
    "pasta": Family(
        "pasta", "writes its own parallelism (promise/async/sync); its threads are rows of the one scheduler",
        _has_family("pasta"), _load_edgeseq, _pasta_exporter, _pasta_passes, _pasta_parity,
        _init_edgeseq("pasta"), _edgeseq_presets("pasta"),
        bench=_pasta_bench, print_bench=_print_pasta_bench, print_inspect=_print_pasta_section,
    ),
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}", f"choose one of: {', '.join(sorted(FAMILIES))}") from None


def family_of_checkpoint(path: str | Path) -> Family:
    """The family whose checkpoints look like `path`, or a CheckpointError saying what was found."""
    path = Path(path)
    for record in FAMILIES.values():
        if record.recognises(path):
            return record
    from edgeseq.models.checkpoint import read_config

    read_config(path)  # raises the precise problem (missing folder, bad JSON, no or unknown family)
    raise CheckpointError(f"{path} is not a checkpoint of any family edgeseq knows",
                          f"families: {', '.join(sorted(FAMILIES))}")


def load_source(path: str | Path) -> Source:
    return family_of_checkpoint(path).load(Path(path))
