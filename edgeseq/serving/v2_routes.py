"""The Open Inference Protocol v2 (KServe, Triton): health, model metadata and infer.

So `tritonclient.http` and KServe clients work unchanged. `infer` takes `input_ids`
(INT64 or INT32, [rows, length], -1 pads a shorter row) or, with a tokenizer, `text`
(BYTES, [rows]); an optional `max_tokens` input ([1]); sampling in `parameters`
(temperature, top_p, top_k, seed, stop: token ids, or stop strings). It answers `output_ids` ([rows, longest], -1
padded), `output_lengths` and, with a tokenizer, `text`. Inputs may come as JSON or in
the binary tensor extension (Inference-Header-Content-Length); outputs are JSON.
"""

import json
import struct
import time

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .access_log import note_usage
from .generation import Generation
from .generation import Request as GenRequest
from .http_errors import HTTPProblem, retry_after

DTYPES = {"INT64": np.int64, "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
          "FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}
HEADER = "inference-header-content-length"


def v2_error(problem: HTTPProblem) -> JSONResponse:
    """v2's error shape: {"error": message} (the fix appended)."""
    message = f"{problem.problem}. Fix: {problem.fix}" if problem.fix else problem.problem
    return JSONResponse({"error": message}, status_code=problem.status, headers=retry_after(problem))


def _bytes_elements(raw: bytes) -> list[str]:
    """BYTES tensors in the binary extension: each element is a 4-byte length, then its bytes."""
    out, at = [], 0
    while at < len(raw):
        (n,) = struct.unpack_from("<I", raw, at)
        out.append(raw[at + 4 : at + 4 + n].decode("utf-8", errors="replace"))
        at += 4 + n
    return out


def parse_inputs(raw: bytes, header_length: int | None) -> tuple[dict, dict[str, np.ndarray | list]]:
    """The request JSON and its input tensors by name (numpy arrays; BYTES as lists of str)."""
    try:
        head = json.loads(raw[:header_length] if header_length is not None else raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPProblem(400, f"the request is not valid JSON ({e.msg if hasattr(e, 'msg') else e})",
                          "send a v2 inference request body") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise HTTPProblem(400, "the request has no 'inputs' list", 'send {"inputs": [{"name": "input_ids", ...}]}')
    binary = raw[header_length:] if header_length is not None else b""
    at, tensors = 0, {}
    for entry in head["inputs"]:
        if not isinstance(entry, dict) or not {"name", "shape", "datatype"} <= entry.keys():
            raise HTTPProblem(400, "every input needs name, shape and datatype", "see the Open Inference Protocol v2")
        name, shape, dtype = entry["name"], entry["shape"], entry["datatype"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise HTTPProblem(400, f"input {name!r} has shape {shape!r}", "give a list of non-negative sizes")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise HTTPProblem(400, f"input {name!r} says {size} binary bytes; the body has fewer",
                                  "send the binary data the header announces")
            chunk, at = binary[at : at + size], at + size
            if dtype == "BYTES":
                tensors[name] = _bytes_elements(chunk)
                continue
            if dtype not in DTYPES:
                raise HTTPProblem(400, f"input {name!r} has datatype {dtype!r}", f"use one of {', '.join(DTYPES)}, BYTES")
            data = np.frombuffer(chunk, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"))
        else:
            if "data" not in entry:
                raise HTTPProblem(400, f"input {name!r} has no data", "send 'data' or binary_data_size")
            if dtype == "BYTES":
                tensors[name] = [str(x) for x in np.asarray(entry["data"], dtype=object).reshape(-1)]
                continue
            if dtype not in DTYPES:
                raise HTTPProblem(400, f"input {name!r} has datatype {dtype!r}", f"use one of {', '.join(DTYPES)}, BYTES")
            try:
                data = np.asarray(entry["data"], dtype=DTYPES[dtype]).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise HTTPProblem(400, f"input {name!r} data is not {dtype}", "send numbers of the declared type") from None
        if data.size != int(np.prod(shape)):
            raise HTTPProblem(400, f"input {name!r} has {data.size} values for shape {shape}", "match data to shape")
        tensors[name] = data.reshape(shape)
    return head, tensors


def v2_router(generation: Generation, name: str) -> APIRouter:
    router = APIRouter()
    model = generation.model

    def check_name(model_name: str) -> None:
        if model_name != name:
            raise HTTPProblem(404, f"model {model_name!r} is not served here", f"this server serves {name!r}")

    ready = generation.ready

    @router.get("/v2/health/live")
    async def live():
        return {"live": True}

    @router.get("/v2/health/ready")
    async def health_ready():
        return JSONResponse({"ready": ready()}, status_code=200 if ready() else 503)

    @router.get("/v2")
    async def server_metadata():
        from edgeseq import __version__

        return {"name": "edgeseq", "version": __version__, "extensions": ["binary_tensor_data"]}

    @router.get("/v2/models/{model_name}")
    @router.get("/v2/models/{model_name}/versions/{version}")
    async def metadata(model_name: str, version: str | None = None):
        check_name(model_name)
        inputs = [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                  {"name": "max_tokens", "datatype": "INT32", "shape": [1]}]
        outputs = [{"name": "output_ids", "datatype": "INT64", "shape": [-1, -1]},
                   {"name": "output_lengths", "datatype": "INT64", "shape": [-1]}]
        if model.has_tokenizer:
            inputs.append({"name": "text", "datatype": "BYTES", "shape": [-1]})
            outputs.append({"name": "text", "datatype": "BYTES", "shape": [-1]})
        return {"name": name, "versions": ["1"], "platform": f"edgeseq_{model.artifact.family}_onnxruntime",
                "inputs": inputs, "outputs": outputs}

    @router.get("/v2/models/{model_name}/ready")
    @router.get("/v2/models/{model_name}/versions/{version}/ready")
    async def model_ready(model_name: str, version: str | None = None):
        check_name(model_name)
        return JSONResponse({"name": name, "ready": ready()}, status_code=200 if ready() else 503)

    @router.post("/v2/models/{model_name}/infer")
    @router.post("/v2/models/{model_name}/versions/{version}/infer")
    async def infer(model_name: str, http: Request, version: str | None = None):
        started = time.perf_counter()
        check_name(model_name)  # errors: the app answers them in v2's shape and counts them
        header = http.headers.get(HEADER)
        head, tensors = parse_inputs(await http.body(), int(header) if header and header.isdigit() else None)
        request = to_request(head, tensors, started)
        streams = generation.start(request)
        rows = await to_thread.run_sync(generation.collect, request, streams)
        generation.record(started, "ok")
        tokens = [r.tokens for r in rows]
        note_usage(http, sum(len(r) for r in request.rows), sum(len(t) for t in tokens))
        longest = max(len(t) for t in tokens)
        ids = np.full((len(tokens), longest), -1, dtype=np.int64)
        for b, row in enumerate(tokens):
            ids[b, : len(row)] = row
        outputs = [{"name": "output_ids", "datatype": "INT64", "shape": list(ids.shape), "data": ids.reshape(-1).tolist()},
                   {"name": "output_lengths", "datatype": "INT64", "shape": [len(tokens)], "data": [len(t) for t in tokens]}]
        if model.has_tokenizer:
            outputs.append({"name": "text", "datatype": "BYTES", "shape": [len(tokens)],
                            "data": [r.text if r.text is not None else model.decode_text(r.tokens) for r in rows]})
        wanted = {o.get("name") for o in head.get("outputs") or [] if isinstance(o, dict)}
        if wanted:
            outputs = [o for o in outputs if o["name"] in wanted]
        body = {"model_name": name, "model_version": "1", "outputs": outputs}
        if "id" in head:
            body["id"] = head["id"]
        return JSONResponse(body)

    def to_request(head: dict, tensors: dict, started: float) -> GenRequest:
        params = head.get("parameters") or {}
        if not isinstance(params, dict):
            raise HTTPProblem(400, "'parameters' must be an object", "send e.g. {\"temperature\": 0}")
        if "input_ids" in tensors:
            ids = tensors["input_ids"]
            if not isinstance(ids, np.ndarray) or ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
                raise HTTPProblem(400, "input_ids must be an integer tensor of shape [rows, length]",
                                  "send INT64 ids, -1 padding shorter rows")
            prompt = [[int(t) for t in row if t != -1] for row in ids]
        elif "text" in tensors:
            prompt = list(tensors["text"])
        else:
            raise HTTPProblem(400, f"no input named input_ids or text (got {', '.join(tensors) or 'none'})",
                              "send input_ids (INT64 [rows, length]) or text (BYTES [rows])")
        rows = generation.rows(prompt)
        max_tokens = params.get("max_tokens", 16)
        if "max_tokens" in tensors:
            values = np.asarray(tensors["max_tokens"]).reshape(-1)
            max_tokens = int(values[0]) if values.size else max_tokens
        try:
            sampling = generation.options(int(max_tokens), float(params.get("temperature", 0.0)),
                                          float(params.get("top_p", 1.0)), int(params.get("top_k", 0)),
                                          None if params.get("seed") is None else int(params["seed"]))
        except (TypeError, ValueError):
            raise HTTPProblem(400, "a sampling parameter is not a number", "send numbers for max_tokens, "
                              "temperature, top_p, top_k and seed") from None
        stop = params.get("stop")
        if isinstance(stop, list) and stop and all(isinstance(t, str) for t in stop):
            return GenRequest(rows, int(max_tokens), None, sampling, started, decoding={"stop_strings": stop})
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(t, int) for t in stop)):
            raise HTTPProblem(400, "'stop' must be a list of token ids or of strings", "send e.g. \"stop\": [1]")
        return GenRequest(rows, int(max_tokens), stop, sampling, started)

    return router
