"""OpenAI-style `POST /v1/completions`: ids or text in, ids (and text) out, optionally streamed.

`temperature: 0` is greedy; above 0 samples with `top_p`, `top_k` and `seed`; unset, the
artifact's default decoding applies (its checkpoint's generation config), or sampling at 1.0
where it has none (OpenAI's default). Beam search and the logits processors are extension
fields by transformers' names (`num_beams`, `length_penalty`, `early_stopping`,
`repetition_penalty`, `no_repeat_ngram_size`, `min_new_tokens` or vLLM's `min_tokens`, ...);
with `num_beams` > 1, `n` hypotheses come back (at most num_beams), each with its score in
`edgeseq.score`, and the request cannot be streamed. `stop` is a list of token ids (default:
the model's eos). The generated ids are in
`choices[i].token_ids`, the text in `choices[i].text` when the artifact has a tokenizer.
`GET /v1/models` lists the one served model, as OpenAI's model list does; `user` is
accepted and ignored. `stream: true` sends one server-sent event per token and ends with `data: [DONE]`; a
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


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server has no use for

    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = None  # unset: the artifact's default length, or OpenAI's 16
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[int] | int | None = Field(None, description="stop token ids (default: the model's eos)")
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

    def decoding(self) -> dict:
        """The extension fields the client set, as generate() takes them (`n` hypotheses of a beam search)."""
        names = ("num_beams", "length_penalty", "early_stopping", "repetition_penalty", "no_repeat_ngram_size",
                 "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens", "forced_bos_token_id",
                 "forced_eos_token_id", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "logprobs")
        out = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        if self.min_tokens is not None and "min_new_tokens" not in out:
            out["min_new_tokens"] = self.min_tokens
        if out.get("num_beams", 1) > 1:
            out["num_return_sequences"] = self.n
        return out


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
        out = {"index": index, "token_ids": shown, "finish_reason": row.finish_reason, "logprobs": None}
        if model.has_tokenizer:
            out["text"] = model.decode_text(shown)
        if row.token_logprobs is not None:
            out["logprobs"] = openai_logprobs(shown, [None] * len(prompt or []) + row.token_logprobs,
                                              [None] * len(prompt or []) + row.top_logprobs)
        extras = row.extras()
        if extras:
            out["edgeseq"] = extras
        return out

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
        stop = [body.stop] if isinstance(body.stop, int) else body.stop
        return GenRequest(rows, max_tokens, stop, sampling, started, 1 if beams else body.n, decoding)

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
            return StreamingResponse(sse(generation, request, streams[0], head, choice, http),
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


async def sse(generation: Generation, request: GenRequest, stream, head: dict, choice, http: Request):
    """One event per token (the new text piece beside its id; a thread's token names its
    thread and position instead), a last event per choice with its finish reason (and a
    threaded answer whole), then [DONE]. An error after the first byte is sent as an event
    of its own."""
    model = generation.model
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
                    text = model.decode_text(tokens)
                    piece["text"], text_so_far[event.row] = text[len(text_so_far.get(event.row, "")):], text
            yield f"data: {json.dumps({**head, 'choices': [piece]})}\n\n"
        for i, row in enumerate(stream.result.rows):
            last = choice(i, row)
            if not row.extras():  # the tokens went out one by one
                last["token_ids"] = []
                if "text" in last:
                    last["text"] = ""
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
