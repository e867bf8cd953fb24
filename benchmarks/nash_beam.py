"""NASH beam-search benchmark: the t5-small shape (random weights), source 32, 64 new tokens
(forced with min_new_tokens), batch 1, beam 4, one run.

Rows, timed side by side in rounds (each round starting from the next engine; a round's
figure is the best of `--repeats` back-to-back calls, the reported one the median of rounds):
  (a) transformers eager `generate(num_beams=4)`
  (b) optimum-onnx `ORTModelForSeq2SeqLM.generate(num_beams=4)`
  (c) CTranslate2 `translate_batch(beam_size=4)` float32 and (d) int8
  (e) edgeseq fp32 and (f) edgeseq int8, `generate(num_beams=4)`
Each row: the request's wall time and generated tokens/s (64 / time). Beside them, for
edgeseq fp32 with `no_repeat_ngram_size 3, repetition_penalty 1.2`: the share of the
request's time its logits processors take (timed around Processors.apply and advance),
and the cache memory a beam-4 request holds (self-attention cache rows and encoder
output copies, in bytes, at this request's lengths).

    .venv-bench/bin/python benchmarks/nash_beam.py [--workdir .cache/bench] [--rounds 5] [--repeats 3] [--threads 2]

Needs the NASH benchmark's peers (`bash scripts/setup_bench.sh`: optimum-onnx pins
transformers 4.57, so they live in .venv-bench). Writes benchmarks/results/nash-beam.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from edgeseq.runtimes import load
from edgeseq.runtimes import processors as processors_module
from nash import CTranslate2Engine, HfEngine, OptimumEngine, build, convert_ctranslate2

from edgeseq.bench import best_time

RESULTS = Path(__file__).parent / "results" / "nash-beam.json"
BEAMS = 4


class HfBeams:
    def __init__(self, engine):
        self.name, self.model = engine.name, engine.model

    def generate(self, rows, n):
        ids = torch.tensor(rows)
        with torch.inference_mode():
            return self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, num_beams=BEAMS)


class CTranslate2Beams:
    def __init__(self, engine):
        self.name, self.translator = engine.name, engine.translator

    def generate(self, rows, n):
        tokens = [[f"t{i}" for i in row] for row in rows]
        return self.translator.translate_batch(tokens, max_decoding_length=n, min_decoding_length=n, beam_size=BEAMS)


class EdgeseqBeams:
    def __init__(self, name: str, artifact: Path, threads: int, **options):
        self.name, self.options = name, options
        self.model = load(artifact, threads=threads)

    def generate(self, rows, n):
        return self.model.generate(rows, max_new_tokens=n, min_new_tokens=n, stop_tokens=[], num_beams=BEAMS,
                                   use_generation_defaults=False, **self.options)


class ProcessorClock:
    """Time spent in the logits processors (apply and advance), summed."""

    def __init__(self):
        self.seconds = 0.0
        self._originals = {}

    def __enter__(self):
        for name in ("apply", "advance"):
            original = getattr(processors_module.Processors, name)
            self._originals[name] = original

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            setattr(processors_module.Processors, name, timed)
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(processors_module.Processors, name, original)


def beam_cache_bytes(model, rows, n) -> dict:
    """What a beam request holds: self-attention cache rows and encoder-output copies, at its lengths."""
    cache = model.engine.cache
    seen = {}

    def observe(_batch):
        owners = [o for o in cache.owners if o.request is not None]
        if len(owners) > seen.get("rows", 0):
            seen["rows"] = len(owners)
            lengths = int(cache.lengths[: len(owners)].max())
            per_row_cache = sum(b[0, :, :lengths].nbytes for name, b in cache.buffers.items()
                                if cache.specs[name].role == "cache")
            per_row_encoder = sum(b[0].nbytes for name, b in cache.buffers.items()
                                  if cache.specs[name].role == "encoder_output")
            seen.update(cache_bytes_per_row=per_row_cache, encoder_bytes_per_row=per_row_encoder)

    model.scheduler.step_observers.append(observe)
    try:
        model.generate(rows, max_new_tokens=n, min_new_tokens=n, stop_tokens=[], num_beams=BEAMS,
                       use_generation_defaults=False)
    finally:
        model.scheduler.step_observers.remove(observe)
    return {"self_attention_cache_rows": seen["rows"], "encoder_output_copies": seen["rows"],
            "self_attention_cache_bytes_at_end": seen["rows"] * seen["cache_bytes_per_row"],
            "encoder_output_bytes": seen["rows"] * seen["encoder_bytes_per_row"],
            "encoder_output_bytes_if_shared": seen["encoder_bytes_per_row"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("building t5-small (random weights), compiling fp32 and int8 ...", flush=True)
    folder, arts, _ = build(args.workdir)
    print("exporting with optimum-onnx, converting with CTranslate2 ...", flush=True)
    ct2 = convert_ctranslate2(folder, args.workdir)
    engines = [HfBeams(HfEngine(folder)), HfBeams(OptimumEngine(folder, args.threads)),
               CTranslate2Beams(CTranslate2Engine("(c) CTranslate2 fp32", ct2["float32"], "float32", args.threads)),
               CTranslate2Beams(CTranslate2Engine("(d) CTranslate2 int8", ct2["int8"], "int8", args.threads)),
               EdgeseqBeams("(e) edgeseq fp32", arts["full"], args.threads),
               EdgeseqBeams("(f) edgeseq int8", arts["full-int8"], args.threads)]
    engines[0].name, engines[1].name = "(a) transformers eager", "(b) optimum-onnx"
    processed = EdgeseqBeams("(e') edgeseq fp32 + processors", arts["full"], args.threads,
                             no_repeat_ngram_size=3, repetition_penalty=1.2)
    rows = [list(range(5, 5 + args.source_len))]
    n = args.new_tokens
    for e in [*engines, processed]:
        e.generate(rows, 4)  # warm up
    samples = {e.name: [] for e in engines}
    shares = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for e in engines[r % len(engines):] + engines[: r % len(engines)]:
            time.sleep(0.2)  # the previous engine's spinning threads stop
            samples[e.name].append(best_time(args.repeats, e.generate, rows, n))
        with ProcessorClock() as clock:
            start = time.perf_counter()
            processed.generate(rows, n)
            shares.append(clock.seconds / (time.perf_counter() - start))
    table = []
    for e in engines:
        seconds = statistics.median(samples[e.name])
        table.append({"engine": e.name, "request_ms": 1000 * seconds, "tok_s": n / seconds,
                      "samples_s": samples[e.name]})
    a, b, c, d, e_, f = table
    report = {
        "threads": args.threads, "source_len": args.source_len, "new_tokens": n, "num_beams": BEAMS,
        "rounds": args.rounds, "repeats": args.repeats, "rows": table,
        "edgeseq_int8_over_ct2_int8": f["tok_s"] / d["tok_s"],
        "edgeseq_fp32_over_optimum": e_["tok_s"] / b["tok_s"],
        "edgeseq_fp32_over_transformers": e_["tok_s"] / a["tok_s"],
        "edgeseq_fp32_over_ct2_fp32": e_["tok_s"] / c["tok_s"],
        "processor_share_of_request": statistics.median(shares),
        "processor_options": {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2},
        "memory": beam_cache_bytes(engines[4].model, rows, n),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nt5-small shape, beam {BEAMS}, batch 1, {args.threads} threads, source {args.source_len}, {n} new tokens, "
          f"median of {args.rounds} rounds (best of {args.repeats} in each, order rotated)\n")
    print("| engine | request ms | tokens/s |")
    print("|---|---|---|")
    for row in table:
        print(f"| {row['engine']} | {row['request_ms']:.0f} | {row['tok_s']:.1f} |")
    print(f"\nedgeseq int8 / CTranslate2 int8: **{report['edgeseq_int8_over_ct2_int8']:.2f}x**; edgeseq fp32 / optimum: "
          f"**{report['edgeseq_fp32_over_optimum']:.2f}x**; / transformers {report['edgeseq_fp32_over_transformers']:.2f}x; "
          f"/ CTranslate2 fp32 {report['edgeseq_fp32_over_ct2_fp32']:.2f}x")
    print(f"processors (no_repeat_ngram_size 3, repetition_penalty 1.2): {report['processor_share_of_request']:.1%} "
          f"of the request")
    print(f"memory: {json.dumps(report['memory'])}")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
