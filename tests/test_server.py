"""`edgeseq serve` for real: a uvicorn process on an ephemeral port of 127.0.0.1, driven over
HTTP (httpx, the openai client, tritonclient), its answers compared with `load().generate`
on the same artifact (tests/fixtures/nash-t5-tiny, which has a tokenizer). Every process
started here is stopped; every request has a timeout."""

import json
import re
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from edgeseq.runtimes import SamplingOptions, load

from edgeseq.serving.process import serve_process

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
NAME = "tiny"
LONG = 4000  # tokens: keeps a row busy for a few seconds (this model has no max_positions)


@contextmanager
def server(*options: str):
    with serve_process(FIXTURE, "--name", NAME, *options) as running:
        yield running


@pytest.fixture(scope="module")
def url():
    with server("--max-rows", "4", "--max-tokens", "5000", "--max-body-bytes", "4096") as (url, _):
        yield url


@pytest.fixture(scope="module")
def reference():
    with load(FIXTURE) as model:
        yield model


def complete(url, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_greedy_results_equal_generate(url, reference):
    prompts = [[5, 17, 3, 9], [40, 2], [7] * 12]
    r = complete(url, prompt=prompts, max_tokens=12, temperature=0, stop=[])
    assert r.status_code == 200, r.text
    body = r.json()
    expected = reference.generate(prompts, max_new_tokens=12, stop_tokens=[]).tokens
    assert [c["token_ids"] for c in body["choices"]] == expected
    assert [c["finish_reason"] for c in body["choices"]] == ["length"] * 3
    assert body["usage"] == {"prompt_tokens": 18, "completion_tokens": 36, "total_tokens": 54}
    # text in, text out, through the artifact's tokenizer
    r = complete(url, prompt="the cat sat on the mat.", max_tokens=8, temperature=0)
    ids = reference.encode_text("the cat sat on the mat.")
    tokens = reference.generate([ids], max_new_tokens=8).tokens[0]
    assert r.json()["choices"][0]["token_ids"] == tokens
    assert r.json()["choices"][0]["text"] == reference.decode_text(tokens)
    # seeded sampling is reproducible and equals the library's
    r = complete(url, prompt=[5, 6, 7], max_tokens=10, temperature=0.8, top_k=20, seed=3, stop=[])
    from edgeseq.runtimes import SamplingOptions

    sampled = reference.generate([[5, 6, 7]], 10, [], SamplingOptions(True, 0.8, 20, 1.0, 3)).tokens[0]
    assert r.json()["choices"][0]["token_ids"] == sampled


def test_stream_sends_generates_tokens_in_order_then_done(url, reference):
    expected = reference.generate([[11, 12, 13]], max_new_tokens=10, stop_tokens=[]).tokens[0]
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                      json={"prompt": [11, 12, 13], "max_tokens": 10, "temperature": 0, "stop": [], "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert [t for c in chunks for t in c["token_ids"]] == expected
    assert chunks[-1]["finish_reason"] == "length" and all(c["finish_reason"] is None for c in chunks[:-1])
    assert "".join(c["text"] for c in chunks) == reference.decode_text(expected)


@pytest.mark.parametrize("body,status,message", [
    ({"prompt": [500], "max_tokens": 3}, 400, "outside the vocabulary"),
    ({"prompt": [5], "max_tokens": 6000}, 400, "over this server's cap of 5000"),
    ({"prompt": [[5]] * 5, "max_tokens": 2}, 400, "at most 4"),
    ({"prompt": [5], "max_tokens": "many"}, 422, "max_tokens"),
    ({"prompt": [5], "temperature": -1}, 400, "temperature=-1"),
    ({"prompt": [5], "temperature": 0.5, "seed": -1}, 400, "seed=-1"),
    ({"prompt": [5], "model": "other"}, 404, "not served here"),
    ({"prompt": []}, 400, "empty"),
    ({"prompt": [[5], [6]], "stream": True}, 400, "stream takes one prompt"),
    ({"max_tokens": 3}, 422, "prompt"),
    ({"prompt": [5], "num_beams": 0}, 400, "num_beams=0 must be a whole number >= 1"),
    ({"prompt": [5], "num_beams": 2, "n": 3}, 400, "num_return_sequences=3 must be between 1 and num_beams=2"),
    ({"prompt": [5], "num_beams": 2, "stream": True}, 400, "cannot be streamed"),
    ({"prompt": [5], "repetition_penalty": -1.0}, 400, "repetition_penalty=-1.0 must be a finite number > 0"),
    ({"prompt": [5], "bad_words_ids": [[99999]]}, 400, "bad_words_ids holds 99999"),
    ({"prompt": [5], "logprobs": 50}, 400, "logprobs=50 must be a whole number from 0 to 20"),
    ({"prompt": [5], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop has 5 strings; at most 4"),
    ({"prompt": [5], "stop": [""]}, 400, "is not a non-empty string"),
    ({"prompt": [5], "stop": ["a"], "num_beams": 2}, 400, "a beam search does not take them"),
])
def test_bad_requests_get_json_errors_that_name_the_fix(url, body, status, message):
    r = complete(url, **body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["fix"] and error["code"] == status


STOP_SAMPLING = {"temperature": 1.0, "top_k": 0, "seed": 1, "max_tokens": 30}


def test_stop_strings_end_the_text_where_generate_does(url, reference):
    from test_stop_strings import PROMPT, SAMPLING, spanning

    tokens = reference.generate([reference.encode_text(PROMPT)], 30, [], SAMPLING).tokens[0]
    full = reference.decode_text(tokens)
    for span in (2, 3):
        stop, last = spanning(reference, tokens, span)
        r = complete(url, prompt=PROMPT, stop=[stop, "\u00a7"], **STOP_SAMPLING)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == full[: full.find(stop)] and choice["token_ids"] == tokens[: last + 1]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
        kept = complete(url, prompt=PROMPT, stop=stop, include_stop_str_in_output=True, **STOP_SAMPLING).json()
        assert kept["choices"][0]["text"] == full[: full.find(stop) + len(stop)]
        # streamed: no event carries a character past the cut, and the pieces make the same text
        pieces = []
        with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                          json={"prompt": PROMPT, "stop": [stop], "stream": True, **STOP_SAMPLING}) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    pieces.append(json.loads(line[6:])["choices"][0]["text"])
                    assert full[: full.find(stop)].startswith("".join(pieces)), (pieces, stop)
        assert "".join(pieces) == choice["text"]
    # v2 takes stop strings in its parameters
    stop, _ = spanning(reference, tokens, 2)
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [PROMPT]}],
            "parameters": {"stop": [stop], "temperature": 1.0, "seed": 1, "max_tokens": 30}}
    out = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body, timeout=60).json()
    assert out["outputs"][2]["data"] == [full[: full.find(stop)]]
    # one stop token id, not in a list (the fuzz test once found this a 500)
    r = complete(url, prompt=PROMPT, stop=tokens[3], **STOP_SAMPLING)
    assert r.status_code == 200 and r.json()["choices"][0]["stop_reason"] == tokens[3], r.text


def test_stop_strings_without_a_tokenizer_are_a_400(artifacts):
    from starlette.testclient import TestClient

    from edgeseq.serving import build_app

    _, art = artifacts.get(family="red")
    with load(art, threads=1) as red, TestClient(build_app(red, "red")) as client:
        r = client.post("/v1/completions", json={"prompt": [5, 6], "stop": ["x"], "max_tokens": 2})
        assert r.status_code == 400 and "no tokenizer" in r.json()["error"]["message"]


def test_beam_search_and_processors_over_http_equal_generate(url, reference):
    """Extension fields by transformers' names (vLLM's min_tokens too); `n` hypotheses of a beam
    search, each with its sequence score."""
    options = dict(num_beams=3, length_penalty=1.5, no_repeat_ngram_size=2, repetition_penalty=1.2)
    r = complete(url, prompt=[5, 17, 3, 9], max_tokens=10, stop=[], n=2, min_tokens=4, **options)
    assert r.status_code == 200, r.text
    expected = reference.generate([[5, 17, 3, 9]], 10, [], num_return_sequences=2, min_new_tokens=4, **options)
    choices = r.json()["choices"]
    assert [c["token_ids"] for c in choices] == expected.tokens
    assert [c["edgeseq"]["score"] for c in choices] == pytest.approx([row.score for row in expected.rows], abs=1e-6)
    greedy = complete(url, prompt=[5, 17, 3, 9], max_tokens=10, stop=[], temperature=0, no_repeat_ngram_size=1)
    assert greedy.json()["choices"][0]["token_ids"] == reference.generate([[5, 17, 3, 9]], 10, [],
                                                                          no_repeat_ngram_size=1).tokens[0]


def test_logprobs_and_echo_as_openai_sends_them(url, reference):
    ids = reference.encode_text("the cat sat on the mat.")
    r = complete(url, prompt="the cat sat on the mat.", max_tokens=6, temperature=0, logprobs=2, echo=True)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    expected = reference.generate([ids], 6, logprobs=2).rows[0]
    logprobs = choice["logprobs"]
    assert choice["token_ids"] == ids + expected.tokens and logprobs["token_ids"] == choice["token_ids"]
    assert logprobs["token_logprobs"][: len(ids)] == [None] * len(ids)  # the echoed prompt's
    assert logprobs["token_logprobs"][len(ids):] == pytest.approx(expected.token_logprobs, abs=1e-6)
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == [len("".join(logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))]
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][len(ids):])
    plain = complete(url, prompt=[5, 6], max_tokens=3, temperature=0).json()["choices"][0]
    assert plain["logprobs"] is None and len(plain["token_ids"]) == 3  # no echo: the completion alone


def test_n_returns_n_choices_equal_generate(url, reference):
    sampling = SamplingOptions(True, 0.8, 20, 1.0, 3)
    expected = reference.generate([[5, 6, 7]], 6, [], sampling, n=3).tokens
    r = complete(url, prompt=[5, 6, 7], max_tokens=6, stop=[], temperature=0.8, top_k=20, seed=3, n=3)
    assert r.status_code == 200, r.text
    assert [c["token_ids"] for c in r.json()["choices"]] == expected
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2]
    r = complete(url, prompt=[[5], [6]], max_tokens=2, n=3)
    assert r.status_code == 400 and "6 completions" in r.json()["error"]["message"]


def test_body_over_the_limit_is_413_and_the_server_keeps_serving(url, reference):
    r = httpx.post(f"{url}/v1/completions", content=json.dumps({"prompt": [5] * 3000}), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/completions", content=b"{not json", timeout=30, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["fix"]
    assert complete(url, prompt=[5], max_tokens=2, temperature=0).status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_row(url):
    cancelled = metric(url, "edgeseq_requests_total", '{outcome="cancelled"}')
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                      json={"prompt": [5, 6], "max_tokens": LONG, "stream": True, "stop": []}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert metric(url, "edgeseq_active_rows") == 1
    deadline = time.monotonic() + 20
    while metric(url, "edgeseq_active_rows") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(url, "edgeseq_active_rows") == 0
    assert metric(url, "edgeseq_requests_total", '{outcome="cancelled"}') == cancelled + 1


def test_concurrent_clients_share_decode_steps(url, reference):
    prompts = [[5 + i, 9, 3 + i] for i in range(8)]
    expected = reference.generate(prompts, max_new_tokens=200, stop_tokens=[]).tokens
    steps, rows = metric(url, "edgeseq_batch_size_count"), metric(url, "edgeseq_batch_size_sum")
    results = [None] * 8

    def client(i):
        results[i] = complete(url, prompt=prompts[i], max_tokens=200, temperature=0, stop=[]).json()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r["choices"][0]["token_ids"] for r in results] == expected
    mean_batch = (metric(url, "edgeseq_batch_size_sum") - rows) / (metric(url, "edgeseq_batch_size_count") - steps)
    assert mean_batch > 1


def test_openai_client(url, reference):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    completion = client.completions.create(model=NAME, prompt=[5, 17, 3], max_tokens=6, temperature=0)
    expected = reference.generate([[5, 17, 3]], max_new_tokens=6).tokens[0]
    assert completion.choices[0].token_ids == expected
    assert completion.choices[0].text == reference.decode_text(expected)
    pieces = client.completions.create(model=NAME, prompt="the cat", max_tokens=5, temperature=0, stream=True)
    assert "".join(p.choices[0].text for p in pieces) == reference.decode_text(
        reference.generate([reference.encode_text("the cat")], max_new_tokens=5).tokens[0])


V2_INPUT = {"name": "input_ids", "datatype": "INT64"}


@pytest.mark.parametrize("body,message", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"inputs": "x"}).encode(), "has no 'inputs' list"),
    (json.dumps({"inputs": [{"name": "input_ids"}]}).encode(), "needs name, shape and datatype"),
    (json.dumps({"inputs": [{**V2_INPUT, "shape": [1, -2], "data": [5]}]}).encode(), "has shape"),
    (json.dumps({"inputs": [{**V2_INPUT, "shape": [1, 3], "data": [5, 6]}]}).encode(), "2 values for shape [1, 3]"),
    (json.dumps({"inputs": [{**V2_INPUT, "shape": [1, 1], "datatype": "FP8", "data": [5]}]}).encode(), "datatype 'FP8'"),
    (json.dumps({"inputs": [{**V2_INPUT, "shape": [1, 1], "parameters": {"binary_data_size": 64}}]}).encode(),
     "says 64 binary bytes"),
    (json.dumps({"inputs": [{**V2_INPUT, "shape": [1, 1], "data": [5]}], "parameters": {"stop": "x"}}).encode(),
     "'stop' must be a list"),
])
def test_bad_v2_requests_get_json_errors(url, body, message):
    r = httpx.post(f"{url}/v2/models/{NAME}/infer", content=body, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"] and "Fix:" in r.json()["error"], r.text


def test_serve_refuses_bad_limits():
    from click.testing import CliRunner

    from edgeseq.cli import cli

    r = CliRunner().invoke(cli, ["serve", str(FIXTURE), "--max-tokens", "0"])
    assert r.exit_code == 1 and "max_tokens=0 must be >= 1" in r.output, r.output


def test_tritonclient_over_the_v2_protocol(url, reference):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url.removeprefix("http://"), connection_timeout=30, network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        meta = client.get_model_metadata(NAME)
        assert {i["name"] for i in meta["inputs"]} >= {"input_ids", "text"}
        ids = np.array([[5, 17, 3, 9], [40, 2, -1, -1]], dtype=np.int64)
        inputs = [triton.InferInput("input_ids", list(ids.shape), "INT64"),
                  triton.InferInput("max_tokens", [1], "INT32")]
        inputs[0].set_data_from_numpy(ids)  # the binary tensor extension, tritonclient's default
        inputs[1].set_data_from_numpy(np.array([7], dtype=np.int32))
        result = client.infer(NAME, inputs, parameters={"stop": []})
        expected = reference.generate([[5, 17, 3, 9], [40, 2]], max_new_tokens=7, stop_tokens=[]).tokens
        assert result.as_numpy("output_ids").tolist() == expected
        assert result.as_numpy("output_lengths").tolist() == [7, 7]
        with pytest.raises(triton.InferenceServerException, match="not served here"):
            client.infer("other", inputs)
    finally:
        client.close()
    r = httpx.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "INT64",
                                                                       "data": [1]}]}, timeout=30)
    assert r.status_code == 400 and "no input named input_ids or text" in r.json()["error"]


def test_queue_full_is_429():
    with server("--max-batch", "1", "--max-queue", "1", "--max-tokens", str(LONG)) as (url, _):
        # one running row (a stream held open) and one queued: the next request has no room
        with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                          json={"prompt": [5], "max_tokens": LONG, "stream": True, "stop": []}) as running:
            lines = running.iter_lines()  # kept: dropping the iterator would close the connection
            assert next(line for line in lines if line.startswith("data: "))
            queued = threading.Thread(target=complete, args=(url,), kwargs={"prompt": [6], "max_tokens": 5}, daemon=True)
            queued.start()
            deadline = time.monotonic() + 20
            while metric(url, "edgeseq_queue_depth") < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            r = complete(url, prompt=[7], max_tokens=5)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
            assert "queue is full" in r.json()["error"]["message"]
        queued.join(30)
        assert complete(url, prompt=[5], max_tokens=3).status_code == 200
        assert metric(url, "edgeseq_requests_total", '{outcome="queue_full"}') == 1


def test_deadline_is_504():
    with server("--timeout", "0.5", "--max-tokens", str(10 * LONG)) as (url, _):
        r = complete(url, prompt=[5], max_tokens=10 * LONG, stop=[])
        assert r.status_code == 504 and "deadline passed" in r.json()["error"]["message"], r.text
        assert complete(url, prompt=[5], max_tokens=3).status_code == 200
        assert metric(url, "edgeseq_requests_total", '{outcome="deadline"}') == 1


def test_sigterm_drains_the_requests_in_flight_then_exits():
    with server("--max-tokens", "2000") as (url, process):
        result = {}

        def client():
            result["response"] = complete(url, prompt=[5, 6], max_tokens=1500, stop=[], temperature=0)

        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.monotonic() + 20
        while metric(url, "edgeseq_active_rows") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert process.wait(timeout=60) == 0
        assert result["response"].status_code == 200
        assert len(result["response"].json()["choices"][0]["token_ids"]) == 1500


@contextmanager
def in_process_server(model, limits=None):
    """The app on uvicorn in a thread of this process (so a test can reach into the model)."""
    import uvicorn

    from edgeseq.serving import build_app
    from edgeseq.serving.process import free_port, is_ready

    port = free_port()
    app = build_app(model, NAME, limits)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not is_ready(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url
    finally:
        uv.should_exit = True
        thread.join(30)


def test_a_failing_step_fails_only_its_requests_with_500():
    before = {t for t in threading.enumerate() if t.name.startswith("edgeseq")}  # other tests' models
    model = load(FIXTURE)
    real_run = model.engine.backend.run
    fail = threading.Event()

    def run(graph, feeds):  # the injected fault: the decoder step raises once
        if fail.is_set() and graph == "decoder_step":
            fail.clear()
            raise RuntimeError("injected fault")
        return real_run(graph, feeds)

    model.engine.backend.run = run
    try:
        with in_process_server(model) as url:
            expected = model.generate([[5, 6, 7]], max_new_tokens=6).tokens[0]
            fail.set()
            r = complete(url, prompt=[5, 6, 7], max_tokens=6, temperature=0)
            assert r.status_code == 500, r.text
            assert "decoder_step" in r.json()["error"]["message"] and "injected fault" in r.json()["error"]["message"]
            r = complete(url, prompt=[5, 6, 7], max_tokens=6, temperature=0)
            assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == expected
            assert metric(url, "edgeseq_requests_total", '{outcome="error"}') == 1
    finally:
        model.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("edgeseq") and t not in before]


@pytest.mark.slow
def test_load_32_clients_x_20_requests_match_single_calls():
    from edgeseq.runtimes import SamplingOptions

    from edgeseq.serving.load import load_report, mixed_requests
    from edgeseq.serving.process import resident_mb

    with load(FIXTURE) as model:
        requests = mixed_requests(32 * 20, model.config["vocab_size"])
        expected = {id(r): model.generate([r.prompt], r.max_tokens, [], SamplingOptions(
            r.temperature > 0, r.temperature or 1.0, r.top_k, 1.0, r.seed)).tokens[0] for r in requests}
    with server("--max-queue", "1024") as (url, process):
        report = load_report(url, lambda r: expected[id(r)], requests, 32, rss=lambda: resident_mb(process.pid))
    print(json.dumps(report, indent=2))
    assert report["mismatches"] == 0
    assert report["resident_growth"] < 0.10
    assert report["mean_batch_size"] > 1


def test_a_prompt_longer_than_max_positions_is_400():
    """The fixture has no practical position limit: the same model with a small one."""
    model = load(FIXTURE)
    model.config["max_positions"] = 8
    try:
        with in_process_server(model) as url:
            r = complete(url, prompt=list(range(5, 15)), max_tokens=2)
            assert r.status_code == 400 and "longer than max_positions=8" in r.json()["error"]["message"], r.text
            r = complete(url, prompt=[5, 6], max_tokens=20)
            assert r.status_code == 400 and "exceeds max_positions=8" in r.json()["error"]["message"], r.text
            assert complete(url, prompt=[5, 6], max_tokens=2).status_code == 200
    finally:
        model.close()
