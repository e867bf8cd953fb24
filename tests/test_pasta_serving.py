"""The trained PASTA model (checkpoints/pasta-lm) under the one scheduler, from many callers
at once and over HTTP: results equal each call made alone, rows of different documents
share steps, a stream closed halfway frees every row of its request, streamed events
re-assemble into the spliced answer, a disconnect frees the rows, a deadline is a 504, and
no generated request gets a 5xx."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from conftest import wait_until
from edgeseq.models.pasta_task import TAGS, pasta_examples_per_k
from edgeseq.runtimes import TokenEvent, load
from edgeseq.runtimes.policies.pasta import splice_events
from hypothesis import HealthCheck, given, settings
from test_server import in_process_server

from edgeseq.serving import ServeLimits, build_app

HELD_OUT_SEED = 123_456
CALLERS = 8


@pytest.fixture(scope="module")
def pasta_lm(artifacts):
    with load(artifacts.committed("pasta-lm"), threads=2) as model:
        yield model


@pytest.fixture(scope="module")
def prompts():
    return [e.prompt for e in pasta_examples_per_k(4, HELD_OUT_SEED)]  # 16: k = 1..4, four each


def test_concurrent_callers_get_what_each_gets_alone(pasta_lm, prompts):
    model = pasta_lm
    mine = [prompts[i::CALLERS] for i in range(CALLERS)]  # each caller its own held-out prompts
    steps, rows = model.scheduler.steps, model.scheduler.rows_stepped
    alone = [model.generate(p).tokens for p in mine[:1]]
    single_rows_per_step = (model.scheduler.rows_stepped - rows) / (model.scheduler.steps - steps)
    alone += [model.generate(p).tokens for p in mine[1:]]
    barrier = threading.Barrier(CALLERS)

    def call(p):
        barrier.wait(timeout=60)
        return model.generate(p).tokens

    steps, rows = model.scheduler.steps, model.scheduler.rows_stepped
    with ThreadPoolExecutor(CALLERS) as pool:
        together = list(pool.map(call, mine))
    assert together == alone
    assert (model.scheduler.rows_stepped - rows) / (model.scheduler.steps - steps) > single_rows_per_step
    assert not model.scheduler.active


def test_a_stream_closed_halfway_frees_its_rows_while_others_run_on(pasta_lm, prompts):
    model = pasta_lm
    others = prompts[4:8]
    expected = model.generate(others).tokens
    with ThreadPoolExecutor(2) as pool:
        future = pool.submit(model.generate, others)
        stream = model.stream(prompts[15])  # k = 4: several threads live at once
        head = [stream.next_event() for _ in range(20)]
        assert {e.thread for e in head} - {-1}  # chunks had forked by then
        stream.close()
        assert future.result(timeout=120).tokens == expected
    wait_until(lambda: not model.scheduler.active)


# ----- over HTTP ----------------------------------------------------------------------------------
def sse_events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]


def test_pasta_over_http_equals_generate_and_streams_reassemble(pasta_lm, prompts):
    model = pasta_lm
    mine = prompts[:CALLERS]
    expected = model.generate(mine)
    with in_process_server(model) as url:
        def request(i):
            body = {"prompt": mine[i], "max_tokens": 160, "temperature": 0, "stream": i % 2 == 1}
            if not body["stream"]:
                return httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()["choices"][0]
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
                return sse_events(r)

        with ThreadPoolExecutor(CALLERS) as pool:
            answers = list(pool.map(request, range(CALLERS)))
        for i, answer in enumerate(answers):
            row = expected.rows[i]
            if i % 2 == 0:
                assert answer["token_ids"] == row.tokens and answer["edgeseq"]["outcome"] == row.outcome
                assert [t["thread"] for t in answer["edgeseq"]["threads"]] == [t["thread"] for t in row.threads]
                continue
            *tokens, last = answer
            final = last["choices"][0]
            assert final["token_ids"] == row.tokens and final["finish_reason"] == "stop"
            events = [TokenEvent(c["edgeseq"]["token_id"], 0, c["edgeseq"]["position"], c["edgeseq"]["thread"])
                      for e in tokens for c in e["choices"]]
            assert splice_events(events, TAGS)[: len(row.tokens)] == row.tokens
        forks = httpx.get(f"{url}/metrics", timeout=10).text
        assert "edgeseq_row_forks" in forks and "edgeseq_row_splices" in forks


def test_a_disconnect_frees_every_row_and_a_deadline_is_504(pasta_lm, prompts):
    model = pasta_lm
    with in_process_server(model) as url:
        with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                          json={"prompt": prompts[15], "max_tokens": 160, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
        wait_until(lambda: not model.scheduler.active)
        assert httpx.post(f"{url}/v2/models/tiny/infer", timeout=60, json={"inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, len(prompts[0])], "data": prompts[0]}]}).status_code == 200
    with in_process_server(model, ServeLimits(timeout_s=0.002)) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": prompts[15], "max_tokens": 160}, timeout=60)
        assert r.status_code == 504 and "deadline passed" in r.json()["error"]["message"]
    wait_until(lambda: not model.scheduler.active)


def test_no_generated_request_gets_a_server_error(pasta_lm):
    app = build_app(pasta_lm, "tiny", ServeLimits(max_tokens=24, timeout_s=30))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for operation in [result.ok() for result in schema.get_all_operations()]:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        def no_server_error(case):
            response = case.call()
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code} {response.text[:300]}")

        no_server_error()


def test_cli_timeline_draws_the_threads_and_names_the_extra_it_needs(pasta_lm, prompts, tmp_path, monkeypatch):
    import sys

    from click.testing import CliRunner

    from edgeseq.cli import cli

    artifact, prompt = str(pasta_lm.artifact.path), " ".join(map(str, prompts[15]))  # k = 4
    out = tmp_path / "threads.svg"
    r = CliRunner().invoke(cli, ["generate", artifact, "--input-ids", prompt, "--timeline", str(out)])
    assert r.exit_code == 0, r.output
    svg = out.read_text()
    assert svg.startswith("<?xml") and "chunk 3" in svg and "main" in svg
    r = CliRunner().invoke(cli, ["generate", artifact, "--input-ids", prompt, "--timeline", str(tmp_path / "t.pdf")])
    assert r.exit_code != 0 and "must end in .svg or .png" in r.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without the plot extra
    r = CliRunner().invoke(cli, ["generate", artifact, "--input-ids", prompt, "--timeline", str(out)])
    assert r.exit_code != 0 and 'pip install "edgeseq[plot]"' in r.output
