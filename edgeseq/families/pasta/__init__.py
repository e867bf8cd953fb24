"""PASTA's record: a StagFormer over the PASTA task's vocabulary that writes its own
parallelism (models/pasta.py, runtimes/pasta_lang.py); its threads are rows of the one
scheduler (runtimes/policies/pasta.py). Its parity, bench and printing live beside this
record (parity.py, bench.py, present.py)."""

from typing import Any

from edgeseq.errors import BuildError

from ..native import native_family
from ..record import lazy, register
from ..stagformer import stage_split

BENCH_SEED = 31_337


def manifest_sections(model: Any) -> dict:
    """The manifest's "pasta" section: the tag ids the runtime's parser and scheduler read,
    the task vocabulary `inspect` shows, and the prompts `bench` decodes (torch-free there)."""
    from edgeseq.models.pasta_task import TAGS, PastaTask, pasta_examples

    task = PastaTask()
    if model.config.vocab_size != task.vocab_size:  # the tags, parity documents and bench prompts are the task's
        raise BuildError(f"this PASTA checkpoint has vocab_size={model.config.vocab_size}, not the PASTA task's "
                         f"{task.vocab_size}", "train it with scripts/train_pasta.py, or `edgeseq init pasta` without "
                         "setting vocab_size")
    return {"pasta": {"tags": TAGS.as_dict(), "vocabulary": task.vocabulary(),
                      "bench_prompts": [e.prompt for e in pasta_examples(8, BENCH_SEED, k=4)]}}


register(native_family(
    "pasta", summary="writes its own parallelism (promise/async/sync); its threads are rows of the one scheduler",
    exporter=lazy("edgeseq.exporters.stagformer:StagFormerExporter", family="pasta"),
    parity=lazy("edgeseq.families.pasta.parity:pasta_parity"),
    presets="edgeseq.models.pasta:PRESETS", config_class="edgeseq.models.stagformer:StagFormerConfig",
    model_class="edgeseq.models.stagformer:StagFormerModel", passes=stage_split, manifest_extras=manifest_sections,
    bench=lazy("edgeseq.families.pasta.bench:pasta_bench"),
    print_bench=lazy("edgeseq.families.pasta.present:print_pasta_bench"),
    print_inspect=lazy("edgeseq.families.pasta.present:print_pasta_section"),
))
