"""Charts of the committed benchmark results (matplotlib, the `plot` extra): what the tables say,
drawn so that scaling and rooflines read at a glance. `just bench` regenerates them.

- roofline.png: NASH t5-small shape, each engine's and precision's fraction of its bandwidth
  roofline at batch 1 (benchmarks/results/nash-t5-small.json);
- clients.png: tokens/s against concurrent clients, the runtime's continuous batching
  (engine.json) and `edgeseq serve` (serving.json);
- positions.png: decode step ms against the position, beside the roofline for the bytes the
  step reads (engine.json);
- pasta.png: PASTA's wall-clock speedup of the parallel schedule against its theoretical
  speedup (pasta.json).

    python benchmarks/plot.py [--results benchmarks/results] [--out docs/images]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
CHARTS = ("roofline.png", "clients.png", "positions.png", "pasta.png")


def _read(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_log2(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """A chart over a doubling x axis (clients, positions): labels, legend, written to `path`."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def roofline_chart(results: Path, out: Path) -> None:
    rows = _read(results, "nash-t5-small.json")["rows"]
    names = [r["engine"] for r in rows]
    fractions = [r["roofline_fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    colors = ["tab:blue" if "edgeseq" in n else "tab:gray" for n in names]
    ax.barh(names[::-1], fractions[::-1], color=colors[::-1])
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel("decode tok/s / roofline tok/s (batch 1)")
    ax.set_title("NASH, t5-small shape: fraction of the bandwidth roofline")
    _save(fig, out / "roofline.png")


def clients_chart(results: Path, out: Path) -> None:
    engine, serving = _read(results, "engine.json"), _read(results, "serving.json")
    fig, ax = plt.subplots(figsize=(7, 4))
    for model, c in engine["concurrency"].items():
        ax.plot([1, c["clients"]], [c["one_at_a_time_tokens_per_s"], c["tokens_per_s"]], marker="o",
                label=f"{model}: runtime, continuous batching")
    for model, s in serving.items():
        if not isinstance(s, dict) or "batching" not in s:
            continue
        b, load = s["batching"], s["load"]
        line, = ax.plot([1, b["clients"]], [b["one_client_tokens_per_s"], b["tokens_per_s"]], marker="s", linestyle="--",
                        label=f"{model}: edgeseq serve over HTTP")
        ax.plot([load["clients"]], [load["tokens_per_s"]], marker="^", linestyle="none", color=line.get_color(),
                label=f"{model}: serve load test ({load['requests']} requests, short outputs)")
    _save_log2(fig, ax, "concurrent clients", "generated tokens/s", "Throughput against concurrent clients (2 threads)",
               out / "clients.png")


def positions_chart(results: Path, out: Path) -> None:
    steps = _read(results, "engine.json")["step_ms_by_position"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for (model, points), color in zip(steps.items(), ("tab:blue", "tab:orange", "tab:green")):
        positions = [p["position"] for p in points]
        ax.plot(positions, [p["step_ms"] for p in points], marker="o", color=color, label=f"{model}: step")
        ax.plot(positions, [p["roofline_ms"] for p in points], linestyle=":", color=color, label=f"{model}: roofline")
    _save_log2(fig, ax, "position (tokens before the step)", "decode step ms, batch 1, 1 thread",
               "Step time against position, beside the bytes-read roofline", out / "positions.png")


def pasta_chart(results: Path, out: Path) -> None:
    models = _read(results, "pasta.json")["models"]
    names = list(models)
    wall = [models[n]["pasta"]["wall_speedup"] for n in names]
    theory = [models[n]["pasta"]["theoretical_speedup"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], wall, width=0.4, label="wall-clock (parallel / sequential schedule)")
    ax.bar([i + 0.2 for i in x], theory, width=0.4, label="theoretical (tokens / longest path)", color="tab:gray")
    for i, (w, t) in enumerate(zip(wall, theory)):
        ax.annotate(f"{w / t:.0%}", (i - 0.2, w), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_ylim(0, 1.35 * max(theory))
    ax.set_ylabel("speedup at batch 1, k = 4")
    ax.set_title("PASTA: parallel schedule against its theoretical speedup")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, out / "pasta.png")


def plot_all(results: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for chart in (roofline_chart, clients_chart, positions_chart, pasta_chart):
        chart(results, out)
    return [out / name for name in CHARTS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images")
    args = parser.parse_args()
    for path in plot_all(args.results, args.out):
        print(path)


if __name__ == "__main__":
    main()
