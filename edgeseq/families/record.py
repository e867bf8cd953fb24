"""What a family's record holds, the one table of records, and `lazy`, which keeps records torch-free.

A record is data: keyword fields naming the family's checkpoint test, loader, exporter,
parity check, init, presets and (edgeseq checkpoints) its torch config and model
classes, plus optional hooks for what only some families have. Everything that needs
torch or the family's modules is a `lazy` reference, imported on first call, so the
edge install (numpy and onnxruntime, no torch) imports every record and runs the
torch-free hooks (`bench`, `print_bench`, `print_inspect`).

A family registers its record from its own module (edgeseq/families/<name>.py) with
`register`, as optimum's TasksManager registers an exporter config beside its code.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Lazy:
    """`module:attribute`, imported on first use, with leading arguments bound (a lazy partial).

    Calling it calls the attribute with the bound arguments followed by the call's;
    `target` is the attribute itself (a class, a dict)."""

    def __init__(self, reference: str, *args: Any, **kwargs: Any):
        module, sep, attribute = reference.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"lazy reference {reference!r} must be 'module:attribute'")
        self.reference, self.args, self.kwargs = reference, args, kwargs

    @property
    def target(self) -> Any:
        module, _, attribute = self.reference.partition(":")
        value = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*self.args, *args, **{**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        return f"lazy({self.reference!r})"


def lazy(reference: str, *args: Any, **kwargs: Any) -> Lazy:
    return Lazy(reference, *args, **kwargs)


@dataclass
class Source:
    """What compile and parity start from: the family, the object its exporter takes, and the
    model_config the runtime will read from the manifest."""

    family: str
    model: Any
    config: dict[str, Any]


def no_family_passes(model: Any, target: str, split: bool) -> list:
    return []


def no_manifest_extras(model: Any) -> dict:
    return {}


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    summary: str
    recognises: Callable[[Path], bool]  # is this checkpoint folder one of ours?
    load: Callable[[Path], Source]
    exporter: Callable[[], Any]  # -> exporters.base.FamilyExporter
    parity: Callable[..., dict]  # (runtime, model, bounds, steps=...) -> report
    init: Callable[..., Path]  # (out, preset, sets, seed=, force=) -> checkpoint folder
    presets: Lazy  # .target: {preset name: config values}
    default_preset: str = "tiny"
    # edgeseq checkpoints (config.json with "family"): the torch config dataclass and model
    config_class: Lazy | None = None
    model_class: Lazy | None = None
    # the family's own graph passes, run first in the compile's one pass pipeline
    # (passes/pipeline.py): (model, target, split) -> graph-set passes
    passes: Callable[[Any, str, bool], list] = no_family_passes
    manifest_extras: Callable[[Any], dict] = no_manifest_extras  # (model) -> manifest sections
    torch_baseline: bool = False  # `bench --vs-torch` can time its checkpoint in PyTorch eager
    # optional hooks for what only some families have (torch-free: an edge box runs them)
    bench: Callable[..., dict] | None = None  # (artifact path, rounds, threads, on_progress) -> report
    print_bench: Callable[[Any, dict], None] | None = None  # (console, report)
    print_inspect: Callable[[Any, dict], None] | None = None  # (console, inspect info): its own section

    def preset_names(self) -> list[str]:
        return list(self.presets.target)


FAMILIES: dict[str, Family] = {}


def register(record: Family) -> Family:
    """Add a family's record to the table; a second record of one name is a bug."""
    if record.name in FAMILIES:
        raise ValueError(f"family {record.name!r} is registered twice")
    FAMILIES[record.name] = record
    return record
