"""What `edgeseq generate`, `inspect` and `bench` print for a PASTA artifact."""

from rich.console import Console
from rich.table import Table

from edgeseq.runtimes.pasta import PastaResult


def pasta_generate_json(results: list[PastaResult], decoded: list[str] | None) -> dict:
    """Per prompt: the spliced tokens, the outcome, the longest path and each thread's timeline."""
    rows = []
    for b, r in enumerate(results):
        row = {"tokens": r.tokens, "outcome": r.outcome, "steps": r.steps, "longest_path": r.longest_path,
               "theoretical_speedup": r.theoretical_speedup, "threads": r.threads}
        if decoded is not None:
            row["text"] = decoded[b]
        rows.append(row)
    return {"results": rows, "tokens": [r.tokens for r in results]}


def print_pasta_results(console: Console, results: list[PastaResult], decoded: list[str] | None,
                        vocabulary: dict[str, int]) -> None:
    """The spliced output (token names when the artifact has the task vocabulary) and, per
    thread, its token count, fork and finish steps."""
    names = {v: k for k, v in vocabulary.items()}
    for b, r in enumerate(results):
        text = decoded[b] if decoded is not None else " ".join(names.get(t, str(t)) for t in r.tokens)
        console.print(text, markup=False, highlight=False)
        table = Table("thread", "tokens", "promised", "forked at step", "finished at step", "waited steps", "ended")
        for t in r.threads:
            waited = sum((w[1] or w[0]) - w[0] for w in t["waits"])
            table.add_row(str(t["thread"]), str(t["tokens"]), str(t.get("promised", "-")), str(t["forked_step"] or 0),
                          str(t["finished_step"]), str(waited), t["stopped"] or "done")
        console.print(table)
        console.print(f"outcome {r.outcome}; {len(r.tokens)} tokens in {r.steps} steps "
                      f"(longest path {r.longest_path}: theoretical speedup {r.theoretical_speedup:.2f}x)")


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


def print_pasta_section(console: Console, section: dict) -> None:
    """`inspect`: the tag ids and the vocabulary's size."""
    tags = ", ".join(f"{name}={token}" for name, token in section["tags"].items())
    console.print(f"PASTA tags: {tags}", markup=False, highlight=False)
    vocabulary = section.get("vocabulary") or {}
    if vocabulary:
        console.print(f"PASTA vocabulary: {len(vocabulary)} named tokens (inspect --json lists them)")
