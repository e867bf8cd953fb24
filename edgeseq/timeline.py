"""`edgeseq generate --timeline FILE.svg|.png`: PASTA's threads drawn over the steps.

One lane per thread (main at the top, then chunk j in promise order): a thin mark where a
chunk was promised, a bar while it ran (forked to finished), a hatched bar while the main
thread waited at a sync, and a dot where a finished chunk was spliced into the main thread.
matplotlib comes from the optional `plot` extra; without it the command says which extra
it needs before it decodes anything.
"""

from pathlib import Path

from edgeseq.errors import GenerateError

SUFFIXES = (".svg", ".png")


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GenerateError("--timeline needs matplotlib, which edgeseq's `plot` extra installs",
                            'pip install "edgeseq[plot]"') from None
    return plt


def check_timeline_path(path: Path) -> None:
    """Refuse a bad target before the decode: the suffix, and the plot extra."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise GenerateError(f"--timeline {path}: the file must end in .svg or .png", "e.g. --timeline threads.svg")
    _matplotlib()


def draw_timeline(rows: list, path: Path) -> Path:
    """Draw the first output row that has a thread timeline (the first prompt's) into `path`."""
    row = next((r for r in rows if "threads" in r.extras()), None)
    if row is None:
        raise GenerateError("--timeline draws PASTA threads, and this artifact's results have none",
                            "drop --timeline, or generate from a PASTA artifact")
    plt = _matplotlib()
    threads = row.extras()["threads"]
    end = max(t["finished_step"] or 0 for t in threads) + 1
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(threads) + 1.4))
    for lane, t in enumerate(threads):
        y = len(threads) - 1 - lane
        start = t["forked_step"] or 0
        finished = t["finished_step"] if t["finished_step"] is not None else end
        ax.barh(y, finished - start, left=start, height=0.5, color="tab:blue" if lane == 0 else "tab:green")
        for w in t["waits"]:
            ax.barh(y, (w[1] if w[1] is not None else end) - w[0], left=w[0], height=0.5, color="white",
                    edgecolor="tab:blue", hatch="//")
        if lane:
            ax.plot([t["promised_step"]] * 2, [y - 0.3, y + 0.3], color="black", lw=1)
            ax.plot(finished, len(threads) - 1, "o", color="tab:green", ms=4)
    ax.set_yticks(range(len(threads)), [("chunk " + str(t["thread"])) if lane else "main"
                                        for lane, t in reversed(list(enumerate(threads)))])
    ax.set_xlabel("step")
    ax.set_title(f"{len(row.tokens)} tokens in {row.extras()['steps']} steps; longest path {row.extras()['longest_path']} "
                 f"(| promised, bar running, hatched waiting, dot spliced)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
