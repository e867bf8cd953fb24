"""What `edgeseq compile --explain` prints: per pass of the compile's pipeline, what it
rewrote in each graph and every candidate it declined, grouped by reason."""

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXAMPLES = 3  # nodes named per declined reason


def declined_by_reason(entry: dict[str, Any]) -> dict[str, list[str]]:
    """reason -> the "graph:node" candidates declined for it, in the pass's order."""
    grouped: dict[str, list[str]] = {}
    for d in entry["declined"]:
        grouped.setdefault(d["reason"], []).append(f"{d['graph']}:{d['node']}")
    return grouped


def print_pass_report(console: Console, report: list[dict[str, Any]]) -> None:
    table = Table("pass", "rewrote", "per graph", "declined")
    for entry in report:
        per_graph = ", ".join(f"{g} {n}" for g, n in entry["rewrote"].items() if n)
        table.add_row(entry["pass"], str(sum(entry["rewrote"].values())), escape(per_graph) or "-",
                      str(len(entry["declined"])))
    console.print(table)
    for entry in report:
        for reason, nodes in declined_by_reason(entry).items():
            more = f" and {len(nodes) - EXAMPLES} more" if len(nodes) > EXAMPLES else ""
            console.print(f"{entry['pass']} declined {len(nodes)}: {escape(reason)} "
                          f"({escape(', '.join(nodes[:EXAMPLES]))}{more})", highlight=False, soft_wrap=True)
