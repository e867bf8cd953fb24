"""OpenAI-style `POST /v1/completions`: ids or text in, ids (and text) out, optionally streamed.

`temperature: 0` is greedy; above 0 samples with `top_p`, `top_k` and `seed`. `stop` is a
list of token ids (default: the model's eos). The generated ids are in
`choices[i].token_ids`, the text in `choices[i].text` when the artifact has a tokenizer.
`stream: true` sends one server-sent event per token and ends with `data: [DONE]`; a
client that goes away mid-stream has its row dropped at the next step.
"""

import json
import time
import uuid

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from edgeseq.errors import EdgeseqError

from .generation import OUTCOMES, Generation
from .generation import Request as GenRequest
from .http_errors import HTTPProblem, error_body, from_edgeseq


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server has no use for

    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[int] | int | None = Field(None, description="stop token ids (default: the model's eos)")
    stream: bool = False
    n: int = 1


def completion_router(generation: Generation, name: str) -> APIRouter:
    router = APIRouter()
    model = generation.model

    def finish_reason(tokens: list[int], request: GenRequest) -> str:
        return "stop" if tokens and tokens[-1] in request.stops(model.config["eos_token_id"]) else "length"

    def choice(index: int, tokens: list[int], request: GenRequest) -> dict:
        out = {"index": index, "token_ids": tokens, "finish_reason": finish_reason(tokens, request), "logprobs": None}
        if model.has_tokenizer:
            out["text"] = model.decode_text(tokens)
        return out

    def parse(body: CompletionRequest, started: float) -> GenRequest:
        if body.model is not None and body.model != name:
            raise HTTPProblem(404, f"model {body.model!r} is not served here", f"this server serves {name!r}")
        if body.n != 1:
            raise HTTPProblem(400, f"n={body.n} is not supported", "send n=1 (one completion per prompt)")
        rows = generation.rows(body.prompt)
        sampling = generation.options(body.max_tokens, body.temperature, body.top_p, body.top_k, body.seed)
        stop = [body.stop] if isinstance(body.stop, int) else body.stop
        return GenRequest(rows, body.max_tokens, stop, sampling, started)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest):
        started = time.perf_counter()
        request = parse(body, started)
        if body.stream and len(request.rows) != 1:
            raise HTTPProblem(400, f"stream takes one prompt, not {len(request.rows)}", "send one prompt per streamed request")
        streams = generation.start(request)
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": name}
        if body.stream:
            return StreamingResponse(sse(generation, request, streams[0], head, choice),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        tokens = await to_thread.run_sync(generation.collect, request, streams)  # errors: the app's handler counts them
        generation.record(started, "ok")
        completion = sum(len(t) for t in tokens)
        prompt = sum(len(r) for r in request.rows)
        return JSONResponse({**head, "choices": [choice(i, t, request) for i, t in enumerate(tokens)],
                             "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                       "total_tokens": prompt + completion}})

    return router


async def sse(generation: Generation, request: GenRequest, stream, head: dict, choice):
    """One event per token (the new text piece beside its id), a last event with the finish
    reason, then [DONE]. An error after the first byte is sent as an event of its own."""
    model = generation.model
    sent: list[int] = []  # what this stream has yielded (the row may already hold more)
    text_so_far = ""
    at = None
    outcome = "cancelled"  # unless the loop below ends normally or with an error
    try:
        while True:
            token, at = await to_thread.run_sync(generation.next_token, request, stream, at)
            if token is None:
                break
            sent.append(token)
            piece = {"index": 0, "token_ids": [token], "finish_reason": None}
            if model.has_tokenizer:
                text = model.decode_text(sent)
                piece["text"], text_so_far = text[len(text_so_far):], text
            yield f"data: {json.dumps({**head, 'choices': [piece]})}\n\n"
        last = {**choice(0, stream.tokens, request), "token_ids": []}
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
        stream.close()  # a disconnected client: the row is dropped at the next step
        generation.record(request.started, outcome)
