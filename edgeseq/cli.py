"""The `edgeseq` command line: thin click shells over Python functions a service can call too.

Every command that reports takes --json. Errors raised on purpose (EdgeseqError) print
as one line on stderr with a non-zero exit and no traceback (--debug shows it).
torch is imported only by commands that need it, so `generate` and `inspect` run on an
edge box with numpy and onnxruntime alone.
"""

import functools
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeseq import __version__
from edgeseq.decoding_cli import decoding_options, decoding_values
from edgeseq.errors import BuildError, EdgeseqError, GenerateError
from edgeseq.extras import require

err_console = Console(stderr=True)
out_console = Console()


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except EdgeseqError as e:
            if ctx.find_root().params.get("debug"):
                raise
            # escaped: a message may hold brackets (`edgeseq[compile]`) that rich would read as markup
            err_console.print(f"[bold red]error[/] {escape(e.one_line())}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


@contextmanager
def stage_status(enabled: bool, title: str):
    """A spinner naming the current stage; silent with --json or when not on a terminal."""
    if not enabled:
        yield lambda _: None
        return
    with err_console.status(title) as status:
        yield lambda text: status.update(f"{title}: {text}")


def group_names(tensors) -> str:
    """'past_key.0', 'past_key.1', ... -> 'past_key.{0..1}': per-layer names on one line."""
    groups: dict[str, list[str]] = {}
    for t in tensors:
        stem, dot, index = t["name"].rpartition(".")
        key = stem if dot and index.isdigit() else t["name"]
        groups.setdefault(key, []).append(index if dot and index.isdigit() else "")
    return ", ".join(k if idx == [""] else f"{k}.{{{idx[0]}..{idx[-1]}}}" for k, idx in groups.items())


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=float))


@click.group()
@click.version_option(__version__, prog_name="edgeseq")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug):
    """ONNX export and edge-deployment compiler for RED, NASH, StagFormer and PASTA."""


@cli.command()
@click.argument("family")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
@click.option("--preset", default=None, help="Named size (red, stagformer: tiny, small/edge, base; nash: tiny, small, t5-small). Default: tiny.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value; repeatable.")
@click.option("--seed", default=0, show_default=True, help="Random-init seed.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the written config as JSON.")
@handle_errors
def init(family, out, preset, sets, seed, force, as_json):
    """Write a random-init checkpoint of FAMILY (config.json + model.safetensors).

    FAMILY nash writes a Hugging Face T5/BART folder instead: --preset tiny|small|t5-small,
    --set variant=t5-v1|t5-v1.1|bart, decoder_layers=K, selection=unif|low|high,
    sparsity=S (a zs.pt pruning that fraction of encoder heads and FFN neurons)."""
    require("compile", "init")
    from edgeseq.families import family as family_record

    path = family_record(family).init(out, preset, sets, seed=seed, force=force)
    config = json.loads((Path(path) / "config.json").read_text())
    if as_json:
        emit_json({"checkpoint": str(path), "family": family, "config": config})
    else:
        out_console.print(f"wrote {family} checkpoint to {path}")


@cli.command(name="compile")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Artifact folder to write.")
@click.option("--target", default="ort-cpu", show_default=True, help="ort-cpu (ort-cuda, ort-tensorrt, tensorrt: not yet).")
@click.option("--precision", default="fp32", show_default=True, help="fp32, or int8 (ort-cpu: int8 weights under the family's declared quality bounds); fp16, bf16: not on CPU.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check parity against PyTorch.")
@click.option("--split/--no-split", default=True, show_default=True, help="StagFormer: one graph per stack (--no-split keeps one step graph).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--explain", is_flag=True, help="List per graph pass what it rewrote and each candidate it declined, with why.")
@click.option("--task", default=None, help="Take the checkpoint's task_specific_params[TASK] (e.g. summarization) as the "
              "artifact's default decoding, its prefix for --text input.")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="Sign the artifact with this elliptic-curve private key (PEM; needs the sign extra).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@handle_errors
def compile_cmd(checkpoint, out, target, precision, verify, split, force, explain, task, sign_key, as_json):
    """Export CHECKPOINT to ONNX, run the graph passes, write an artifact, check parity."""
    require("compile", "compile")
    from edgeseq.pipeline import compile_checkpoint
    from edgeseq.tokenizer_files import tokenizer_hint

    passes: list[dict] = []
    with stage_status(not as_json, f"compiling {checkpoint}") as say:
        manifest = compile_checkpoint(checkpoint, out, target, precision, verify, force, on_stage=say, split=split,
                                      on_explain=passes.extend, task=task, sign_key=sign_key)
    parity = manifest["parity"]
    if as_json:
        emit_json({"artifact": str(out), "family": manifest["family"], "stats": manifest["stats"], "parity": parity,
                   **({"passes": passes} if explain else {})})
        return
    if explain:
        from edgeseq.pass_report import print_pass_report

        print_pass_report(out_console, passes)
    out_console.print(f"wrote {manifest['family']} artifact to {out} ({manifest['stats']['weight_bytes'] / 1e6:.2f} MB of weights)")
    if manifest.get("tokenizer"):
        out_console.print(f"tokenizer carried ({manifest['tokenizer']['vocab_size']} tokens): --text works")
    if manifest.get("generation"):
        print_generation(manifest["generation"])
    elif hint := tokenizer_hint(checkpoint):
        err_console.print(f"[yellow]note[/] {escape(hint)}", highlight=False, soft_wrap=True)
    if parity:
        out_console.print(
            f"parity vs PyTorch: max |logit diff| {parity['max_abs_logit_diff']:.2e} ({bound_text(parity)}), "
            f"greedy agreement {parity['greedy_token_agreement']:.3f} over {parity['steps']} steps"
        )


def print_generation(generation: dict) -> None:
    """The artifact's default decoding (compile and inspect)."""
    defaults = ", ".join(f"{k}={v}" for k, v in generation["defaults"].items()) or "none"
    task = f" + task {generation['task']!r}" if generation.get("task") else ""
    out_console.print(f"default decoding (from {generation['source']}{task}): {escape(defaults)}", highlight=False)
    if generation.get("prefix"):
        out_console.print(f"text prefix: {escape(repr(generation['prefix']))}", highlight=False)
    if generation.get("ignored"):
        err_console.print(f"[yellow]note[/] not applied by edgeseq: {escape(', '.join(generation['ignored']))}",
                          highlight=False)


def bound_text(report: dict) -> str:
    """The bound a parity report used, and where it came from."""
    text = f"bound {report['atol']:.1e}"
    if report.get("reference_fp64_vs_fp32") is not None and report.get("calibration_multiple") is not None:
        text += (f"; PyTorch's own fp32 error {report['reference_fp64_vs_fp32']:.1e}, bound = max(declared "
                 f"{report['declared_atol']:.0e}, {report['calibration_multiple']:g}x that)")
    return text


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise GenerateError(f"--input-ids {text!r} is not a list of integers", 'write token ids like --input-ids "5 17 3"') from None


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input-ids", "inputs", multiple=True, help='Source token ids, e.g. "5 17 3"; repeat for a batch.')
@click.option("--text", "texts", multiple=True, help="Source text (needs an artifact with a tokenizer); repeat for a batch.")
@click.option("--max-new-tokens", default=None, type=int, help="Default 32 (PASTA: the whole spliced answer, default 160).")
@click.option("--num-samples", "n", default=1, show_default=True, type=int, help="Completions per prompt (one prefill, forked rows).")
@click.option("--do-sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", default=None, type=float, help="Default 1.0.")
@click.option("--top-k", default=None, type=int, help="Default 0 (off).")
@click.option("--top-p", default=None, type=float, help="Default 1.0 (off).")
@click.option("--seed", default=None, type=int, help="Sampling seed.")
@click.option("--stop-token", "stop_tokens", multiple=True, type=int, help="Stop ids (default: the model's eos).")
@click.option("--stop", "stop_strings", multiple=True, metavar="TEXT",
              help="End a row when its text holds TEXT (repeatable; needs a tokenizer). The text is cut before it.")
@click.option("--include-stop-str-in-output", is_flag=True, help="Keep the matched --stop string in the text.")
@click.option("--target", default="ort-cpu", show_default=True)
@click.option("--threads", default=None, type=int, help="Intra-op threads in all (default: all cores).")
@click.option("--schedule", type=click.Choice(["concurrent", "sequential", "recurrent", "parallel"]), default=None,
              help="StagFormer: a step's stages concurrently (default), in turn, or recurrent (shared weights: last stack "
                   "only). PASTA: its threads in parallel (default) or sequential (the interpreter's order).")
@click.option("--low-memory", is_flag=True, help="No weight prepacking: about half the memory, slower at batch > 1.")
@click.option("--trusted-key", type=click.Path(path_type=Path), default=None,
              help="Refuse the artifact unless it is signed by this public key (PEM) and unchanged since.")
@click.option("--timeline", type=click.Path(path_type=Path), default=None,
              help="PASTA: draw the threads over the steps into this .svg or .png (needs the plot extra).")
@decoding_options
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def generate(artifact, inputs, texts, max_new_tokens, n, do_sample, temperature, top_k, top_p, seed, stop_tokens,
             stop_strings, include_stop_str_in_output, target, threads, schedule, low_memory, trusted_key, timeline, as_json,
             **decoding):
    """Generate tokens from a compiled ARTIFACT (with its default decoding, where it has one;
    every decoding option below overrides it for this call)."""
    from edgeseq.generate_output import print_rows, rows_json
    from edgeseq.runtimes import SamplingOptions, load

    if bool(inputs) == bool(texts):
        raise GenerateError("give the input as --input-ids or as --text (one of them)",
                            'e.g. --input-ids "5 17 3" or --text "translate this"')
    if timeline is not None:
        from edgeseq.timeline import check_timeline_path

        check_timeline_path(timeline)
    sampled = do_sample or temperature is not None or top_k is not None or top_p is not None or seed is not None
    sampling = SamplingOptions(do_sample, temperature or 1.0, top_k or 0, top_p or 1.0, seed) if sampled else None
    options = decoding_values(decoding)
    if stop_strings:
        options |= {"stop_strings": list(stop_strings), "include_stop_str_in_output": include_stop_str_in_output}
    with load(artifact, target=target, threads=threads, schedule=schedule, low_memory=low_memory,
              trusted_key=trusted_key) as model:
        rows = [model.encode_text(model.text_prefix + t) for t in texts] if texts else [parse_ids(text) for text in inputs]
        result = model.generate(rows, max_new_tokens, list(stop_tokens) or None, sampling, n=n, **options)
        decoded = ([row.text if row.text is not None else model.decode_text(row.tokens) for row in result.rows]
                   if texts or stop_strings else None)
        names = {v: k for k, v in model.decoding.vocabulary.items()}
    if timeline is not None:
        from edgeseq.timeline import draw_timeline

        draw_timeline(result.rows, timeline)
    if as_json:
        emit_json(rows_json(result, decoded))
    else:
        print_rows(out_console, result, decoded, names)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--reference", required=True, type=click.Path(path_type=Path), help="The PyTorch checkpoint compiled.")
@click.option("--steps", default=64, show_default=True, help="Decode steps per case.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def parity(artifact, reference, steps, as_json):
    """Compare ARTIFACT with its PyTorch checkpoint: logit differences and greedy agreement."""
    require("compile", "parity")
    from edgeseq.pipeline import parity_report

    with stage_status(not as_json, "checking parity"):
        report = parity_report(artifact, reference, steps)
    if as_json:
        emit_json(report)
    else:
        if all("source_lengths" in case for case in report["cases"]):  # PASTA reports one teacher-forced case
            table = Table("source lengths", "max |logit diff|", "greedy agreement")
            for case in report["cases"]:
                table.add_row(str(case["source_lengths"]), f"{case['max_abs_logit_diff']:.2e}", f"{case['greedy_token_agreement']:.3f}")
            out_console.print(table)
        verdict = "[green]PASS[/]" if report["passed"] else "[red]FAIL[/]"
        out_console.print(f"{verdict} max |logit diff| {report['max_abs_logit_diff']:.2e} ({bound_text(report)}), "
                          f"{report['steps']} steps")
    if not report["passed"]:
        sys.exit(1)


@cli.command(name="inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def inspect_cmd(artifact, as_json):
    """Show an ARTIFACT's graphs, inputs/outputs, parameters, sizes, FLOPs and depth per token."""
    from edgeseq.inspect import inspect_artifact

    info = inspect_artifact(artifact)
    if as_json:
        emit_json(info)
        return
    s = info["stats"]
    signed = "signed (model.sig; `edgeseq verify` checks it)" if info["signed"] else "unsigned"
    out_console.print(f"[bold]{info['family']}[/] artifact {info['path']} (format {info['format_version']}, {info['target']}, "
                      f"{info['precision']}, {signed})")
    table = Table("graph", "file MB", "weights MB", "inputs", "outputs")
    for name, g in info["graphs"].items():
        table.add_row(
            name, f"{g['file_bytes'] / 1e6:.3f}", f"{g['weight_bytes'] / 1e6:.3f}",
            group_names(g["inputs"]), group_names(g["outputs"]),
        )
    out_console.print(table)
    cache = info["prefix_cache"]
    out_console.print(f"prefix cache: blocks of {cache['block_tokens']} prompt tokens (default bound {cache['default_mb']:g} MB; "
                      "--prefix-cache-mb 0 turns it off)" if cache["supported"] else f"prefix cache: off ({cache['reason']})",
                      highlight=False)
    out_console.print(
        f"parameters {s['parameters']:,} ({s['weight_bytes'] / 1e6:.2f} MB stored once), "
        f"artifact {info['total_bytes'] / 1e6:.2f} MB\n"
        f"per generated token: {s['flops_per_token'] / 1e6:.2f} MFLOPs in weights "
        f"+ {s['attention_flops_per_context_token']} FLOPs per context token in attention, "
        f"{s['weight_bytes_per_token'] / 1e6:.2f} MB of weights read ({info['precision']}), "
        f"sequential depth {s['sequential_depth_per_token']} layers\n"
        f"roofline at batch 1: {info['roofline']['tok_s_b1']:,.0f} tok/s "
        f"(bandwidth {info['roofline']['bandwidth_gb_s']:.1f} GB/s, measured here at the weights' size: "
        f"{info['roofline']['memory_level']}, / weight bytes per token)"
    )
    tokenizer = info.get("tokenizer")
    out_console.print(f"tokenizer: {tokenizer['file']} ({tokenizer['vocab_size']} tokens; --text works)" if tokenizer
                      else "tokenizer: none (token ids only)")
    for stage in info["schedule"]:
        out_console.print(f"stage {stage['stage']}: {', '.join(stage['graphs'])} ({stage['runs']})")
        for h in stage.get("handoffs", []):
            out_console.print(f"  {h['from']}:{h['output']} -> {h['to']}:{h['input']} ({h['when']}); every cache stays with its stage")
    if info["pruning"]:
        print_pruning(info["pruning"])
    if info["generation"]:
        print_generation(info["generation"])
    from edgeseq.families import family

    record = family(info["family"])
    if record.print_inspect is not None:
        record.print_inspect(out_console, info)
    if info["parity"]:
        p = info["parity"]
        quality = (f", mean {p['mean_abs_logit_diff']:.2e}, teacher-forced top-1 {p['top1_agreement']:.3f}"
                   if "top1_agreement" in p else "")
        out_console.print(f"parity at compile ({p.get('precision', 'fp32')}): max |logit diff| {p['max_abs_logit_diff']:.2e}"
                          f"{quality}, greedy agreement {p['greedy_token_agreement']:.3f}, "
                          f"{'within' if p['passed'] else 'OUTSIDE'} its bounds")


def print_pruning(pruning) -> None:
    """NASH: kept heads per attention sublayer, kept FFN width, and the cost before/after."""
    kept = pruning["kept"]
    table = Table("layer", "self-attention heads", "cross-attention heads", "FFN width")
    layers = sorted({u.rsplit(".", 1)[0] for u in [*kept["heads"], *kept["ffn"]]},
                    key=lambda name: (name.split(".")[0] != "encoder", int(name.split(".")[1])))
    for layer in layers:
        table.add_row(layer, kept["heads"].get(f"{layer}.self_attention", "-"),
                      kept["heads"].get(f"{layer}.cross_attention", "-"), kept["ffn"].get(f"{layer}.ffn", "-"))
    out_console.print(table)
    before, after = pruning["before"], pruning["after"]
    rows = [("parameters", "parameters", 1, ",.0f"), ("decoder MFLOPs per token", "flops_per_token", 1e6, ".2f"),
            ("encoder MFLOPs per source token", "encoder_flops_per_source_token", 1e6, ".2f"),
            ("weight MB read per token", "weight_bytes_per_token", 1e6, ".2f")]
    out_console.print(f"hidden dims kept: {kept['hidden']}")
    for label, key, scale, fmt in rows:
        out_console.print(f"{label}: {before[key] / scale:{fmt}} -> {after[key] / scale:{fmt}} "
                          f"({after[key] / before[key]:.2f}x)")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--vs-torch", type=click.Path(path_type=Path), default=None, help="Checkpoint to time in PyTorch eager, same run.")
@click.option("--source-len", default=32, show_default=True)
@click.option("--new-tokens", default=64, show_default=True)
@click.option("--rounds", default=5, show_default=True, help="Alternating rounds; figures are medians.")
@click.option("--threads", default=1, show_default=True, type=int, help="Intra-op threads for every engine.")
@click.option("--schedule", type=click.Choice(["concurrent", "sequential", "recurrent"]), default="concurrent", show_default=True, help="StagFormer: a step's stages concurrently, in turn, or recurrent (shared weights: last stack only).")
@click.option("--concurrency", default=None, type=int, help="Also time N client threads calling generate at once vs one at a time.")
@click.option("--shared-prefix", default=None, type=int, metavar="N",
              help="Instead: time to first token of --concurrency (16) requests sharing an N-token prefix, prefix cache on vs off.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def bench(artifact, vs_torch, source_len, new_tokens, rounds, threads, schedule, concurrency, shared_prefix, as_json):
    """Time prefill and decode of ARTIFACT (optionally against PyTorch eager), with the roofline."""
    from edgeseq.bench import bench_artifact

    if shared_prefix is not None:
        bench_shared_prefix(artifact, shared_prefix, concurrency or 16, threads, rounds, as_json)
        return
    if vs_torch is not None:
        require("compile", "bench --vs-torch")
    if concurrency is not None and concurrency < 1:
        raise BuildError(f"--concurrency {concurrency} must be at least 1", "pass e.g. --concurrency 16")
    with stage_status(not as_json, "benchmarking") as say:
        report = bench_artifact(
            artifact, vs_torch, source_len, new_tokens, rounds=rounds, threads=threads, on_progress=say, schedule=schedule,
            concurrency=concurrency,
        )
    if as_json:
        emit_json(report)
        return
    print_bench(report)


def bench_shared_prefix(artifact, prefix_tokens: int, clients: int, threads: int, rounds: int, as_json: bool) -> None:
    from edgeseq.bench_engine import shared_prefix_report

    if prefix_tokens < 1 or clients < 1:
        raise BuildError(f"--shared-prefix {prefix_tokens} with {clients} clients", "pass a prefix and a client count of at least 1")
    with stage_status(not as_json, "benchmarking the prefix cache") as say:
        report = shared_prefix_report(artifact, prefix_tokens, clients, threads=threads, rounds=rounds, on_progress=say)
    if as_json:
        emit_json(report)
        return
    ms = report["first_token_ms"]
    table = Table("prompts", "first token, cache on (ms)", "cache off (ms)", "on vs off")
    table.add_row(f"{clients} sharing a {prefix_tokens}-token prefix", f"{ms['shared_on']:.1f}", f"{ms['shared_off']:.1f}",
                  f"{report['shared_speedup']:.2f}x faster")
    table.add_row(f"{clients} sharing nothing", f"{ms['distinct_on']:.1f}", f"{ms['distinct_off']:.1f}",
                  f"{report['distinct_slowdown']:.3f}x the time")
    out_console.print(table)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (0.0.0.0: every interface; needs --api-key or --no-auth).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--name", default=None, help="Model name in the API (default: the artifact folder's name).")
@click.option("--max-batch", default=32, show_default=True, type=int, help="Rows that share a decode step at most.")
@click.option("--max-queue", default=256, show_default=True, type=int, help="Requests that may wait; more get 429.")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds a request may take; then 504.")
@click.option("--max-tokens", default=1024, show_default=True, type=int, help="Cap on a request's max_tokens.")
@click.option("--max-rows", default=16, show_default=True, type=int, help="Prompts per request at most.")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=int, help="Larger request bodies get 413.")
@click.option("--drain-timeout", default=30.0, show_default=True, type=float, help="On SIGTERM, seconds for requests in flight.")
@click.option("--threads", default=None, type=int, help="Intra-op threads in all (default: all cores).")
@click.option("--target", default="ort-cpu", show_default=True)
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="A key clients send as 'Authorization: Bearer KEY' (repeatable; also EDGESEQ_API_KEY).")
@click.option("--api-key-file", type=click.Path(path_type=Path), default=None, help="Keys, one a line (# comments).")
@click.option("--no-auth", is_flag=True, help="Serve a non-loopback --host without API keys (say so explicitly).")
@click.option("--public-metrics", is_flag=True, help="/metrics without a key (for a scraper inside the network).")
@click.option("--ssl-certfile", type=click.Path(path_type=Path), default=None, help="TLS certificate (PEM): https only.")
@click.option("--ssl-keyfile", type=click.Path(path_type=Path), default=None, help="The certificate's private key (PEM).")
@click.option("--ssl-keyfile-password", default=None, help="Password of an encrypted --ssl-keyfile.")
@click.option("--ssl-ca-certs", type=click.Path(path_type=Path), default=None, help="CA bundle for client certificates.")
@click.option("--ssl-client-cert", type=click.Choice(["none", "optional", "required"]), default="none", show_default=True,
              help="required: mutual TLS (a client without a certificate the CA signed is refused).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One stderr line per request: id, status, tokens, duration (never the prompt).")
@click.option("--trusted-key", type=click.Path(path_type=Path), default=None,
              help="Refuse the artifact unless it is signed by this public key (PEM) and unchanged since.")
@click.option("--prefix-cache-mb", type=float, default=None,
              help="Bound of the prefix cache in MB (0: off; default: 256 where the artifact supports it).")
@handle_errors
def serve(artifact, host, port, name, max_batch, max_queue, timeout, max_tokens, max_rows, max_body_bytes,
          drain_timeout, threads, target, api_keys, api_key_file, no_auth, public_metrics, ssl_certfile, ssl_keyfile,
          ssl_keyfile_password, ssl_ca_certs, ssl_client_cert, access_log, trusted_key, prefix_cache_mb):
    """Serve ARTIFACT over HTTP: OpenAI-style /v1/completions and /v1/models, Open Inference Protocol v2, /metrics."""
    require("serve", "serve")
    from edgeseq.serving import ServeLimits, run_server
    from edgeseq.serving.auth import ApiKeys, AuthPolicy
    from edgeseq.serving.tls import TLSOptions

    try:
        limits = ServeLimits(max_body_bytes, max_rows, max_tokens, timeout, drain_timeout)
    except ValueError as e:
        raise BuildError(str(e), "pass positive limits") from None
    auth = AuthPolicy(ApiKeys.gather(api_keys, api_key_file), public_metrics)
    tls = TLSOptions(ssl_certfile, ssl_keyfile, ssl_keyfile_password, ssl_ca_certs, ssl_client_cert)

    def ready(model_name):
        guarded = f"{len(auth.keys)} API key(s)" if auth.keys else "no API key"
        err_console.print(f"serving {model_name!r} on {tls.scheme}://{host}:{port} with {guarded} "
                          "(SIGTERM or Ctrl-C stops it)", highlight=False)

    run_server(artifact, host, port, name, limits, threads, max_batch, max_queue, target, on_ready=ready, auth=auth,
               no_auth=no_auth, tls=tls, access_log=access_log, trusted_key=trusted_key, prefix_cache_mb=prefix_cache_mb)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--key", "private_key", required=True, type=click.Path(path_type=Path),
              help="Elliptic-curve private key (PEM), e.g. from `openssl ecparam -name prime256v1 -genkey -noout`.")
@click.option("--key-password", default=None, help="Password of an encrypted --key.")
@handle_errors
def sign(artifact, private_key, key_password):
    """Sign every file of ARTIFACT (manifest included) into ARTIFACT/model.sig (OpenSSF model-signing, offline)."""
    from edgeseq.runtimes.signature import sign_artifact

    path = sign_artifact(artifact, private_key, key_password)
    out_console.print(f"signed {artifact}: {path}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--trusted-key", required=True, type=click.Path(path_type=Path), help="The signer's public key (PEM).")
@handle_errors
def verify(artifact, trusted_key):
    """Check that ARTIFACT is signed by TRUSTED-KEY and that no file changed, was added or removed."""
    from edgeseq.runtimes.signature import verify_artifact

    verify_artifact(artifact, trusted_key)
    out_console.print(f"[green]verified[/] {artifact}: signed by {trusted_key}, every file unchanged")


@cli.group()
def deploy():
    """Write the deployment config of an artifact for a serving platform."""


@deploy.command(name="ray")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Folder for serve_config.yaml.")
@click.option("--replicas", default=1, show_default=True, type=int, help="Replicas, each with its own model and scheduler.")
@click.option("--threads", default=1, show_default=True, type=int, help="Intra-op threads per replica (its num_cpus).")
@click.option("--name", default=None, help="Model name in the API (default: the artifact folder's name).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where Ray's HTTP proxy binds (0.0.0.0 for a cluster).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Replicas read their API keys from this variable (never written into the config).")
@click.option("--no-auth", is_flag=True, help="A non-loopback --host without API keys (say so explicitly).")
@click.option("--public-metrics", is_flag=True, help="/metrics without a key.")
@handle_errors
def deploy_ray(artifact, out, replicas, threads, name, host, port, force, api_key_env, no_auth, public_metrics):
    """Write a Ray Serve config (DIR/serve_config.yaml) that `serve run` accepts."""
    from edgeseq.serving.ray_deployment import write_serve_config

    path = write_serve_config(artifact, out, replicas, threads, name, host, port, force, api_key_env, no_auth,
                              public_metrics)
    out_console.print(f"wrote {path}: `serve run {path}` on a Ray cluster with the `ray` extra "
                      f"({replicas} replicas x {threads} threads)")


def print_bench(report) -> None:
    from edgeseq.families import family

    record = family(report["family"])
    if record.print_bench is not None:
        record.print_bench(out_console, report)
        return
    table = Table("engine", "prefill ms", "decode tok/s b1", "decode tok/s b8", "resident MB", "roofline b1")
    for r in report["results"]:
        table.add_row(
            r["engine"], f"{r['prefill_ms']:.2f}", f"{r['decode_tok_s_b1']:.0f}", f"{r['decode_tok_s_b8']:.0f}",
            f"{r['resident_mb']:.0f}", f"{100 * r['roofline_fraction_b1']:.0f}%",
        )
    out_console.print(table)
    out_console.print(
        f"{report['threads']} threads, source {report['source_len']}, {report['new_tokens']} new tokens, "
        f"{report['rounds']} rounds (medians); DRAM copy bandwidth {report['bandwidth_gb_s']:.1f} GB/s; "
        f"{report['weight_bytes_per_token'] / 1e6:.2f} MB weights/token ({report.get('precision', 'fp32')}) read at "
        f"{report['roofline_bandwidth_gb_s']:.1f} GB/s (its {report['memory_level']}) -> roofline {report['roofline_tok_s_b1']:.0f} tok/s at b1"
    )
    table = Table("position", "step ms", "weights MB", "cache MB", "read at", "roofline ms", "roofline fraction")
    for r in report["step_ms_by_position"]:
        table.add_row(str(r["position"]), f"{r['step_ms']:.3f}", f"{r['weight_bytes'] / 1e6:.2f}", f"{r['cache_bytes'] / 1e6:.2f}",
                      f"{r['roofline_bandwidth_gb_s']:.0f} GB/s ({r['memory_level']})",
                      f"{r['roofline_ms']:.3f}", f"{100 * r['roofline_fraction']:.0f}%")
    out_console.print(table)
    if "concurrency" in report:
        c = report["concurrency"]
        out_console.print(
            f"{c['clients']} clients at once: {c['tokens_per_s']:.0f} tok/s vs {c['one_at_a_time_tokens_per_s']:.0f} tok/s "
            f"one at a time ({c['speedup']:.2f}x; mean batch {c['mean_batch_size']:.1f})"
        )
    if "speedup_vs_torch" in report:
        s = report["speedup_vs_torch"]
        out_console.print(
            f"vs PyTorch eager: decode b1 {s['decode_tok_s_b1']:.2f}x, b8 {s['decode_tok_s_b8']:.2f}x, prefill {s['prefill']:.2f}x"
        )


def main():
    cli(prog_name="edgeseq")


if __name__ == "__main__":
    main()
