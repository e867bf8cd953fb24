"""OpenAI-style `POST /v1/completions`: ids or text in, ids (and text) out, optionally streamed.

`temperature: 0` is greedy; above 0 samples with `top_p`, `top_k` and `seed`; unset, the
artifact's default decoding applies (its checkpoint's generation config), or sampling at 1.0
where it has none (OpenAI's default). Beam search and the logits processors are extension
fields by transformers' names (`num_beams`, `length_penalty`, `early_stopping`,
`repetition_penalty`, `no_repeat_ngram_size`, `min_new_tokens` or vLLM's `min_tokens`, ...);
with `num_beams` > 1, `n` hypotheses come back (at most num_beams), each with its score in
`edgeseq.score`, and the request cannot be streamed. `stop` is up to 4 strings (a row ends
when its text holds one, also across token boundaries; the text ends before it unless
`include_stop_str_in_output`; needs the artifact's tokenizer) or a list of token ids
(default: the model's eos); `stop_reason` names what matched. A stream holds back the last
(longest stop string - 1) characters until they cannot begin a stop string, so no event
carries any part of one. The generated ids are in
`choices[i].token_ids`, the text in `choices[i].text` when the artifact has a tokenizer.
`GET /v1/models` lists the one served model, as OpenAI's model list does; `user` is
accepted and ignored; `cache_salt` (vLLM's extension field, a string) keeps the request
from sharing prefix-cache blocks with requests of another salt. `stream: true` sends one server-sent event per token and ends with `data: [DONE]`; a
client that goes away mid-stream has every row of its request dropped at the next step.
`n` completions per prompt are choices b*n .. b*n+n-1 (one prefill, forked rows).

PASTA: a choice is the spliced answer, and its `edgeseq` object holds the outcome, the
steps, the longest path and each thread's timeline. Streamed, each token's event names
its thread and position in `edgeseq` (its `token_ids`/`text` stay empty, since threads
interleave), and the choice's last event before `[DONE]` carries the whole spliced answer
in `token_ids` and `text`: a client that concatenates pieces gets the answer either way.
"""

import json
import time
import uuid
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from edgeseq.errors import EdgeseqError
from edgeseq.runtimes import RowResult

from .access_log import note_usage
from .generation import OUTCOMES, Generation
from .generation import Request as GenRequest
from .http_errors import HTTPProblem, error_body, from_edgeseq

MAX_STOP_STRINGS = 4  # OpenAI's limit


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server has no use for

    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = None  # unset: the artifact's default length, or OpenAI's 16
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | list[int] | int | None = Field(
        None, description="up to 4 stop strings, or stop token ids (default: the model's eos)")
    include_stop_str_in_output: bool = False  # vLLM's: keep the matched stop string in the text
    stream: bool = False
    n: int = 1
    # extension fields (transformers' GenerationConfig names; vLLM's min_tokens): unset ones
    # leave the artifact's default decoding as it is
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    encoder_no_repeat_ngram_size: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    min_tokens: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    bad_words_ids: list[list[int]] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    logprobs: int | None = None  # OpenAI: per token its log-probability and this many alternatives
    echo: bool = False  # OpenAI: the prompt before the completion (its tokens' logprobs are null)
    user: str | None = None  # OpenAI: an end-user id for abuse monitoring; accepted and ignored
    # vLLM's: prefix-cache blocks are shared only among requests with the same salt (a tenant's id)
    # typed loosely so that a salt of the wrong type gets generate()'s 400 naming it, not a schema 422
    cache_salt: Any = Field(None, description="a string: prefix-cache blocks are shared only among requests with the same salt")

    def decoding(self) -> dict:
        """The extension fields the client set, as generate() takes them (`n` hypotheses of a beam search)."""
        names = ("num_beams", "length_penalty", "early_stopping", "repetition_penalty", "no_repeat_ngram_size",
                 "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens", "forced_bos_token_id",
                 "forced_eos_token_id", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "logprobs",
                 "cache_salt")
        out = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        if self.min_tokens is not None and "min_new_tokens" not in out:
            out["min_new_tokens"] = self.min_tokens
        if out.get("num_beams", 1) > 1:
            out["num_return_sequences"] = self.n
        strings = self.stop_strings()
        if strings:
            out |= {"stop_strings": strings, "include_stop_str_in_output": self.include_stop_str_in_output}
        return out

    def stop_strings(self) -> list[str] | None:
        strings = [self.stop] if isinstance(self.stop, str) else self.stop
        if not isinstance(strings, list) or not strings or not isinstance(strings[0], str):
            return None
        if len(strings) > MAX_STOP_STRINGS:
            raise HTTPProblem(400, f"stop has {len(strings)} strings; at most {MAX_STOP_STRINGS} are taken",
                              f"send at most {MAX_STOP_STRINGS} stop strings")
        return strings

    def stop_tokens(self) -> list[int] | None:
        """Stop token ids; None (the model's eos) unless ids were sent ([]: none at all)."""
        if self.stop is None or self.stop_strings() is not None:
            return None
        return [self.stop] if isinstance(self.stop, int) else list(self.stop)


def completion_router(generation: Generation, name: str) -> APIRouter:
    router = APIRouter()
    model = generation.model
    created = int(time.time())

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "edgeseq",
                                            "edgeseq": {"family": model.artifact.family}}]}

    def choice(index: int, row: RowResult, prompt: list[int] | None = None) -> dict:
        """One OpenAI choice; `prompt` (with echo) goes before the completion."""
        shown = [*(prompt or []), *row.tokens]
        out = {"index": index, "token_ids": shown, "finish_reason": row.finish_reason, "logprobs": None,
               "stop_reason": row.stop_reason}
        if model.has_tokenizer:
            out["text"] = text_of(row, prompt)
        if row.token_logprobs is not None:
            out["logprobs"] = openai_logprobs(shown, [None] * len(prompt or []) + row.token_logprobs,
                                              [None] * len(prompt or []) + row.top_logprobs)
        extras = row.extras()
        if extras:
            out["edgeseq"] = extras
        return out

    def text_of(row: RowResult, prompt: list[int] | None = None) -> str:
        """A choice's text: the prompt's (with echo), then the row's (cut at a stop string)."""
        text = row.text if row.text is not None else model.decode_text(row.tokens)
        return model.decode_text(prompt) + text if prompt else text

    def piece(tokens: list[int], i: int) -> str:
        """Token i's text as the completion's text holds it (decoding is not per token: a
        piece is what decoding up to i adds), or its id without a tokenizer."""
        if not model.has_tokenizer:
            return str(tokens[i])
        return model.decode_text(tokens[: i + 1])[len(model.decode_text(tokens[:i])):]

    def openai_logprobs(tokens: list[int], logprobs: list, alternatives: list) -> dict:
        pieces = [piece(tokens, i) for i in range(len(tokens))]
        offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
        top = [None if alt is None else {piece([*tokens[:i], t], i): lp for t, lp in alt}
               for i, alt in enumerate(alternatives)]
        return {"tokens": pieces, "token_ids": tokens, "token_logprobs": logprobs, "top_logprobs": top,
                "text_offset": offsets}

    def parse(body: CompletionRequest, started: float) -> GenRequest:
        if body.model is not None and body.model != name:
            raise HTTPProblem(404, f"model {body.model!r} is not served here", f"this server serves {name!r}")
        rows = generation.rows(body.prompt)
        generation.check_rows(len(rows), body.n)
        decoding = body.decoding()
        beams = decoding.get("num_beams", 1) > 1
        temperature = 0.0 if beams and body.temperature is None else body.temperature  # beams: deterministic
        max_tokens = generation.max_tokens(body.max_tokens)
        sampling = generation.options(max_tokens, temperature, body.top_p, body.top_k, body.seed)
        return GenRequest(rows, max_tokens, body.stop_tokens(), sampling, started, 1 if beams else body.n, decoding)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        started = time.perf_counter()
        request = parse(body, started)
        if body.stream and len(request.rows) != 1:
            raise HTTPProblem(400, f"stream takes one prompt, not {len(request.rows)}", "send one prompt per streamed request")
        if body.stream and request.decoding.get("num_beams", 1) > 1:
            raise HTTPProblem(400, "a beam search's tokens are known only when it ends; it cannot be streamed",
                              "send stream=false with num_beams > 1")
        streams = generation.start(request)
        if body.stream and len(streams) != 1:
            for stream in streams:
                stream.close()
            raise HTTPProblem(400, f"this model streams n={body.n} completions as {len(streams)} requests",
                              "stream with n=1, or send stream=false")
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": name}
        if body.stream:
            return StreamingResponse(sse(generation, request, streams[0], head, choice, text_of, http),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        rows = await to_thread.run_sync(generation.collect, request, streams)  # errors: the app's handler counts them
        generation.record(started, "ok")
        completion = sum(len(r.tokens) for r in rows)
        prompt = sum(len(r) for r in request.rows)
        note_usage(http, prompt, completion)
        per_prompt = max(1, len(rows) // len(request.rows))
        echoed = [request.rows[i // per_prompt] if body.echo else None for i in range(len(rows))]
        return JSONResponse({**head, "choices": [choice(i, r, echoed[i]) for i, r in enumerate(rows)],
                             "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                       "total_tokens": prompt + completion}})

    return router


def releasable(text: str, stops: list[str]) -> str:
    """What of a row's text so far a stream may send: nothing from a stop string on (the
    token that completes one is streamed before the row's result says so), not the last
    (longest stop string - 1) characters (they may begin one), no incomplete last character."""
    for stop in stops:
        at = text.find(stop)
        text = text[:at] if at >= 0 else text
    hold = max((len(s) for s in stops), default=1) - 1
    text = text[: len(text) - hold] if hold else text
    return text[:-1] if text.endswith("\ufffd") else text


async def sse(generation: Generation, request: GenRequest, stream, head: dict, choice, text_of, http: Request):
    """One event per token (the new text piece beside its id; a thread's token names its
    thread and position instead), a last event per choice with its finish reason, the text
    held back (and a threaded answer whole), then [DONE]. An error after the first byte is
    sent as an event of its own."""
    model = generation.model
    stops = request.decoding.get("stop_strings") or []
    sent: dict[int, list[int]] = {}  # per choice, what this stream has yielded
    text_so_far: dict[int, str] = {}
    generated = 0  # tokens streamed, every thread's included
    at = None
    outcome = "cancelled"  # unless the loop below ends normally or with an error
    try:
        while True:
            event, at = await to_thread.run_sync(generation.next_token, request, stream, at)
            if event is None:
                break
            generated += 1
            if event.thread is not None:  # threads interleave: the answer comes whole at the end
                piece = {"index": event.row, "token_ids": [], "finish_reason": None,
                         "edgeseq": {"token_id": event.token, "thread": event.thread, "position": event.position}}
                if model.has_tokenizer:
                    piece["text"] = ""
            else:
                tokens = sent.setdefault(event.row, [])
                tokens.append(event.token)
                piece = {"index": event.row, "token_ids": [event.token], "finish_reason": None}
                if model.has_tokenizer:
                    text = releasable(model.decode_text(tokens), stops)
                    sent_text = text_so_far.get(event.row, "")
                    if text.startswith(sent_text):
                        piece["text"], text_so_far[event.row] = text[len(sent_text):], text
                    else:  # the decoded text changed behind what was sent (rare): send nothing now
                        piece["text"] = ""
            yield f"data: {json.dumps({**head, 'choices': [piece]})}\n\n"
        for i, row in enumerate(stream.result.rows):
            last = choice(i, row)
            if not row.extras():  # the tokens went out one by one; the text held back goes now
                last["token_ids"] = []
                if "text" in last:
                    final, sent_text = text_of(row), text_so_far.get(i, "")
                    last["text"] = final[len(sent_text):] if final.startswith(sent_text) else ""
            yield f"data: {json.dumps({**head, 'choices': [last]})}\n\n"
        yield "data: [DONE]\n\n"
        outcome = "ok"
    except EdgeseqError as e:
        problem = from_edgeseq(e)
        outcome = OUTCOMES.get(problem.status, "error")
        yield f"data: {json.dumps(error_body(problem))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        stream.close()  # a disconnected client: every row of the request is dropped at the next step
        note_usage(http, len(request.rows[0]), generated)
        generation.record(request.started, outcome)
