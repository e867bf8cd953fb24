"""What `edgeseq inspect` and `bench` print for a PASTA artifact (its record's hooks)."""

from rich.console import Console
from rich.table import Table


def print_pasta_bench(console: Console, report: dict) -> None:
    p = report["pasta"]
    table = Table("schedule", "seconds", "steps")
    for schedule in ("sequential", "parallel"):
        table.add_row(schedule, f"{p[f'{schedule}_s']:.3f}", str(p["steps"][schedule]))
    console.print(table)
    console.print(
        f"{p['prompts']} prompts at batch 1, {p['tokens']} tokens, {report['rounds']} rounds (medians), "
        f"{report['threads']} threads: parallel {p['wall_speedup']:.2f}x the sequential schedule, "
        f"theoretical {p['theoretical_speedup']:.2f}x ({100 * p['fraction_of_theoretical']:.0f}% of it); "
        f"outputs identical: {p['identical_outputs']}"
    )


def print_pasta_section(console: Console, info: dict) -> None:
    """`inspect`: the tag ids and the vocabulary's size."""
    section = info["pasta"]
    tags = ", ".join(f"{name}={token}" for name, token in section["tags"].items())
    console.print(f"PASTA tags: {tags}", markup=False, highlight=False)
    vocabulary = section.get("vocabulary") or {}
    if vocabulary:
        console.print(f"PASTA vocabulary: {len(vocabulary)} named tokens (inspect --json lists them)")
