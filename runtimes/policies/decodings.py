"""The registry of decodings: how an artifact's requests are made, checked and configured.

One record per kind of artifact, registered where its policy lives (`register`), chosen at
load by the manifest section it declares; the last resort is plain token decoding.
"""

import time
from dataclasses import replace
from typing import Any

from edgeseq.errors import GenerateError, LoadError

from ..artifact import Artifact
from ..decoding import normalize_input
from ..pasta_lang import Budgets, PastaTags
from ..processors import OPTION_NAMES as PROCESSOR_OPTIONS
from ..processors import ProcessorOptions, Processors
from ..requests import Request
from ..sampling import SamplingOptions
from ..stop_strings import StopStrings
from ..text import no_tokenizer_error
from .beam import BeamOptions, BeamPolicy
from .pasta import SCHEDULES as PASTA_SCHEDULES
from .pasta import PastaPolicy
from .samples import SamplesPolicy
from .single import SinglePolicy

BEAM_OPTIONS = ("num_beams", "length_penalty", "early_stopping", "num_return_sequences")

DECODINGS: list[type["Decoding"]] = []


def register(cls: type["Decoding"]) -> type["Decoding"]:
    DECODINGS.insert(0, cls)  # a later, more specific record is tried first
    return cls


def deadline_after(timeout: float | None) -> float | None:
    """A request's deadline (time.monotonic()) `timeout` seconds from now, or none."""
    return time.monotonic() + timeout if timeout is not None else None


def cache_salt(options: dict[str, Any]) -> str | None:
    """The call's `cache_salt` (prefix-cache blocks are shared only among requests with the
    same one, as vLLM's), checked."""
    salt = options.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise GenerateError(f"cache_salt={salt!r} is not a string",
                            "pass a string (e.g. the tenant's id), or leave it unset to share blocks across requests")
    return salt


def decoding_for(artifact: Artifact) -> "Decoding":
    """The decoding an artifact's manifest asks for."""
    for cls in DECODINGS:
        if cls.section is None or cls.section in artifact.manifest:
            return cls(artifact)
    raise LoadError("no decoding for this artifact", "upgrade edgeseq")


class Decoding:
    """Requests for one loaded artifact. `schedules`: what `load(schedule=)` accepts (the
    first is the default); `options`: the extra generate/stream keyword arguments it takes
    (beam search and the logits processors, by transformers' GenerationConfig names)."""

    name = "tokens"
    section: str | None = None
    schedules: tuple[str, ...] = ("concurrent", "sequential", "recurrent")
    options: tuple[str, ...] = (*BEAM_OPTIONS, *PROCESSOR_OPTIONS, "logprobs", "stop_strings",
                                 "include_stop_str_in_output", "use_generation_defaults", "cache_salt")
    min_rows = 1
    default_max_new_tokens = 32
    vocabulary: dict[str, int] = {}  # names of token ids, where the artifact has them (shown by the CLI)
    codec = None  # the artifact's TextCodec (set by the loaded model): stop strings need it

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.config: dict[str, Any] = artifact.config
        self.shape = artifact.manifest["decode"]["shape"]
        # the checkpoint's own decoding (edgeseq/generation_defaults.py): what a call that
        # does not say otherwise decodes with, as transformers' generate would
        self.generation: dict[str, Any] = artifact.manifest.get("generation") or {}
        self.defaults: dict[str, Any] = self.generation.get("defaults", {}) if isinstance(self.generation, dict) else None
        if not isinstance(self.defaults, dict):
            raise LoadError("the manifest's generation section is not an object with a \"defaults\" object",
                            "restore the manifest, or recompile the artifact")

    def resolved(self, options: dict[str, Any], sampling: SamplingOptions | None, stop_tokens
                 ) -> tuple[dict[str, Any], SamplingOptions, Any, dict[str, Any]]:
        """(options, sampling, stop tokens, length defaults): the call's, over the artifact's
        defaults unless the call passes `use_generation_defaults=False` (parity, benchmarks)."""
        options = dict(options)
        use = options.pop("use_generation_defaults", True)
        defaults = self.defaults if use else {}
        merged = {**{k: v for k, v in defaults.items() if k in self.options}, **options}
        if sampling is None:  # transformers' top_k default, 50, applies when the checkpoint samples
            sampling = SamplingOptions(bool(defaults.get("do_sample", False)), float(defaults.get("temperature", 1.0)),
                                       int(defaults.get("top_k", 50 if defaults.get("do_sample") else 0) or 0), float(defaults.get("top_p", 1.0)))
            sampling.validate()
        if stop_tokens is None and "eos_token_id" in defaults:
            eos = defaults["eos_token_id"]
            stop_tokens = eos if isinstance(eos, list) else [eos]
        lengths = {k: defaults[k] for k in ("max_new_tokens", "max_length") if k in defaults}
        return merged, sampling, stop_tokens, lengths

    def max_new_for(self, history: list[int], max_new_tokens: int | None, lengths: dict[str, Any]) -> int:
        """A call's max_new_tokens, else the defaults' (max_length counts the history, as in
        transformers: an encoder-decoder's decoder start token, a decoder-only prompt)."""
        if max_new_tokens is not None:
            return max_new_tokens
        if "max_new_tokens" in lengths:
            return int(lengths["max_new_tokens"])
        if "max_length" in lengths:
            left = int(lengths["max_length"]) - len(history)
            if left < 1:
                raise GenerateError(f"the artifact's default max_length={lengths['max_length']} leaves no room after "
                                    f"{len(history)} tokens", "pass max_new_tokens, or shorten the prompt")
            return left
        return self.default_max_new_tokens
    def engine_schedule(self, schedule: str | None) -> str:
        """How the stages of a step run for a load's `schedule` (validated)."""
        schedule = schedule or self.schedules[0]
        if schedule not in self.schedules:
            raise LoadError(f"unknown schedule {schedule!r}", f"choose one of: {', '.join(self.schedules)}")
        return schedule

    def check_options(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = f"it takes: {', '.join(self.options)}" if self.options else "it takes none"
            raise GenerateError(f"option {unknown[0]!r} is not one this artifact's decoding ({self.name}) takes",
                                f"drop it; {takes}")

    def requests(self, rows: list[list[int]], max_new_tokens: int | None, stop_tokens, sampling: SamplingOptions,
                 n: int, return_logits: bool, timeout: float | None, streamed: bool,
                 options: dict[str, Any]) -> list[Request]:
        """One request per prompt (checked here, in the caller's thread), each with its policy."""
        options, sampling, stop_tokens, lengths = self.resolved(options, sampling, stop_tokens)
        self.check_options(options)
        histories = [list(row) if self.shape != "encoder_decoder" else [self.config["bos_token_id"]] for row in rows]
        budgets = [self.max_new_for(h, max_new_tokens, lengths) for h in histories]
        for budget in budgets:
            if budget < 1:
                raise GenerateError(f"max_new_tokens={budget} must be >= 1", "ask for at least one new token")
        self.check_lengths(max(len(r) for r in rows), max(budgets))
        stops = frozenset([self.config["eos_token_id"]] if stop_tokens is None else (int(t) for t in stop_tokens))
        vocab = self.config["vocab_size"]
        beam = BeamOptions.from_options(options, vocab)
        processing = ProcessorOptions.from_options(options, vocab)
        if beam.num_beams > 1:
            self.check_beam_request(sampling, n, return_logits)
        if processing.encoder_no_repeat_ngram_size and self.shape != "encoder_decoder":
            raise GenerateError("encoder_no_repeat_ngram_size applies to encoder-decoder models, not this decoder-only one",
                                "use no_repeat_ngram_size")
        logprobs = options.get("logprobs")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 20):
            raise GenerateError(f"logprobs={logprobs!r} must be a whole number from 0 to 20",
                                "ask for 0 (each token's own) up to 20 alternatives per token")
        stop_strings = self.stop_strings(options, beam.num_beams > 1)
        salt = cache_salt(options)
        deadline = deadline_after(timeout)
        out = []
        for b, (row, history, budget) in enumerate(zip(rows, histories, budgets)):
            # `history`: what the processors see, as transformers' input_ids: the prompt, or the decoder's start token
            request = Request(row, budget, stops, sampling, deadline=deadline, return_logits=return_logits,
                              streamed=streamed, stream_index=b * n, logprobs=logprobs, cache_salt=salt)
            processors = Processors(processing, stops, len(history), budget, row) if processing.active else None
            if beam.num_beams > 1:
                request.policy = BeamPolicy(request, beam, processors, history, stops)
            elif n == 1:
                request.policy = SinglePolicy(request, processors, history, stop_strings)
            else:
                request.policy = SamplesPolicy(request, n, processors, history, stop_strings)
            out.append(request)
        return out

    def stop_strings(self, options: dict[str, Any], beams: bool) -> StopStrings | None:
        """The call's stop strings over the artifact's tokenizer, or None."""
        strings = options.get("stop_strings")
        if strings is None:
            return None
        if self.codec is None:
            error = no_tokenizer_error(self.artifact.path)
            raise GenerateError(f"stop strings are found in decoded text: {error.problem}",
                                "pass stop token ids (stop_tokens) instead, or compile with the checkpoint's tokenizer")
        if beams:
            raise GenerateError("stop strings end greedy and sampled rows; a beam search does not take them here",
                                "drop stop_strings with num_beams > 1, or decode with num_beams=1")
        return StopStrings(strings, self.codec, options.get("include_stop_str_in_output", False))

    @staticmethod
    def check_beam_request(sampling: SamplingOptions, n: int, return_logits: bool) -> None:
        """What beam search does not combine with, each refused in one line. (A beam search's
        stream yields no tokens: they are known when it ends; its result holds the hypotheses.)"""
        if n > 1:
            raise GenerateError(f"n={n} samples and num_beams > 1 do not combine",
                                "ask for num_return_sequences (at most num_beams) instead of n")
        if sampling.do_sample:
            raise GenerateError("beam search here is deterministic; do_sample with num_beams > 1 is not offered",
                                "drop do_sample, or use num_beams=1 to sample")
        if return_logits:
            raise GenerateError("return_logits is per row of greedy or sampled decoding, not per beam",
                                "drop return_logits with num_beams > 1")

    def check_lengths(self, longest: int, max_new_tokens: int) -> None:
        limit = self.config.get("max_positions")
        if limit is None:
            return
        word = "prompt" if self.shape == "decoder_only" else "source"
        if longest > limit:
            raise GenerateError(f"{word} of {longest} tokens is longer than max_positions={limit}",
                                f"shorten the input to at most {limit} tokens")
        counted = self.shape == "decoder_only" or self.config.get("consecutive_positions")
        needed = (longest if counted else 0) + max_new_tokens
        if needed > limit:
            raise GenerateError(
                f"{word} ({longest}) + max_new_tokens ({max_new_tokens}) exceeds max_positions={limit}",
                f"lower --max-new-tokens to {max(limit - (longest if counted else 0), 0)} or shorten the input",
            )


register(Decoding)  # the last resort: plain token decoding


@register
class PastaDecoding(Decoding):
    """A model that writes its own parallelism: one request per document, its threads the
    request's rows. `max_new_tokens` bounds the spliced answer (default: the budgets'
    max_tokens, 160); options: `budgets` (pasta_lang.Budgets), `schedule` ("parallel" or
    "sequential", overriding the load's for one call) and `forced` (per prompt a spliced
    answer fed instead of chosen: teacher forcing, for parity)."""

    name = "pasta"
    section = "pasta"
    schedules = PASTA_SCHEDULES
    options = ("budgets", "schedule", "forced", "num_beams", "cache_salt")  # num_beams: only 1
    min_rows = 2

    def __init__(self, artifact: Artifact):
        super().__init__(artifact)
        section = artifact.manifest["pasta"]
        self.tags = PastaTags.from_dict(section["tags"])
        self.vocabulary: dict[str, int] = section.get("vocabulary", {})
        self.default_schedule = "parallel"

    def engine_schedule(self, schedule: str | None) -> str:
        self.default_schedule = self.checked_schedule(schedule or "parallel", LoadError)
        return "concurrent"  # the stages of every step run concurrently under both thread schedules

    def checked_schedule(self, schedule: str, error: type) -> str:
        """`schedule` if it is a PASTA thread schedule; else `error` (LoadError at load,
        GenerateError for one call) naming the choices."""
        if schedule not in self.schedules:
            raise error(f"unknown PASTA schedule {schedule!r}", f"choose one of: {', '.join(self.schedules)}")
        return schedule

    def requests(self, rows, max_new_tokens, stop_tokens, sampling, n, return_logits, timeout, streamed, options):
        sampling = sampling or SamplingOptions()
        options = {k: v for k, v in options.items() if k != "use_generation_defaults"}
        if options.get("num_beams", 1) != 1:
            raise GenerateError("beam search does not apply to a PASTA artifact: its rows are the threads its answer "
                                "writes", "drop num_beams; use n for several answers")
        options = {k: v for k, v in options.items() if k != "num_beams"}
        self.check_options(options)
        budgets = options.get("budgets") or Budgets()
        if max_new_tokens is not None:
            budgets = replace(budgets, max_tokens=max_new_tokens)
        budgets.validate()
        if stop_tokens is not None:
            raise GenerateError("a PASTA answer ends at eos or at its budgets; stop_tokens does not apply",
                                "leave stop_tokens unset; bound the answer with max_new_tokens")
        schedule = self.checked_schedule(options.get("schedule") or self.default_schedule, GenerateError)
        limit = self.config.get("max_positions")
        for b, row in enumerate(rows):
            if limit is not None and len(row) >= limit:
                raise GenerateError(f"prompt {b} has {len(row)} tokens; the model's positions end at {limit}",
                                    f"shorten it to at most {limit - 1} tokens")
        forced = options.get("forced")
        if forced is not None:
            if len(forced) != len(rows):
                raise GenerateError(f"{len(forced)} forced answers for {len(rows)} prompts", "give one forced answer per prompt")
            forced = [normalize_input(answer, self.config["vocab_size"])[0] if len(answer) else [] for answer in forced]
        salt = cache_salt(options)
        deadline = deadline_after(timeout)
        out = []
        for b, row in enumerate(rows):
            for i in range(n):  # n documents of one prompt, each its own RNG streams
                request = Request(row, budgets.max_tokens, frozenset([self.tags.eos]), sampling, deadline,
                                  return_logits, streamed, b * n + i, cache_salt=salt)
                request.policy = PastaPolicy(request, self.tags, self.config, budgets, schedule,
                                             forced[b] if forced is not None else None)
                out.append(request)
        return out
