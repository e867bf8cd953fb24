"""What `edgeseq generate` prints: every output row's tokens (or text), and the extra fields
a decoding reports beside them (PASTA: its outcome and each thread's timeline), as JSON
or as text. Nothing here knows a family: it prints what the result rows carry."""

from rich.console import Console
from rich.table import Table

from edgeseq.runtimes import GenerateResult


def rows_json(result: GenerateResult, decoded: list[str] | None) -> dict:
    """`tokens` per output row (prompt-major, n per prompt), and per row its finish reason,
    text and extra fields under `results`."""
    rows = []
    for i, row in enumerate(result.rows):
        out = {"tokens": row.tokens, "finish_reason": row.finish_reason, **row.extras()}
        if row.stop_reason is not None:
            out["stop_reason"] = row.stop_reason
        if row.token_logprobs is not None:
            out["token_logprobs"] = row.token_logprobs
            out["top_logprobs"] = [[[t, lp] for t, lp in step] for step in row.top_logprobs]
        if decoded is not None:
            out["text"] = decoded[i]
        rows.append(out)
    return {"tokens": result.tokens, **({"text": decoded} if decoded is not None else {}), "results": rows}


def print_rows(console: Console, result: GenerateResult, decoded: list[str] | None, names: dict[int, str]) -> None:
    """One line per output row (token names where the artifact names its tokens); a row with
    a thread timeline gets its table and a summary line."""
    for i, row in enumerate(result.rows):
        text = decoded[i] if decoded is not None else " ".join(names.get(t, str(t)) for t in row.tokens)
        extras = row.extras()
        if "score" in extras:  # a beam hypothesis: its sequence score, as transformers' sequences_scores
            text = f"{text}  (score {extras['score']:.4f})"
        console.print(text, markup=False, highlight=False)
        if "threads" in extras:
            print_threads(console, extras["threads"])
        if "outcome" in extras:
            console.print(f"outcome {extras['outcome']}; {len(row.tokens)} tokens in {extras['steps']} steps "
                          f"(longest path {extras['longest_path']}: theoretical speedup "
                          f"{extras['theoretical_speedup']:.2f}x)")


def print_threads(console: Console, threads: list[dict]) -> None:
    table = Table("thread", "tokens", "promised", "forked at step", "finished at step", "waited steps", "ended")
    for t in threads:
        waited = sum((w[1] or w[0]) - w[0] for w in t["waits"])
        table.add_row(str(t["thread"]), str(t["tokens"]), str(t.get("promised", "-")), str(t["forked_step"] or 0),
                      str(t["finished_step"]), str(waited), t["stopped"] or "done")
    console.print(table)
