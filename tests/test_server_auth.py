"""API keys, request ids and /v1/models against a real `edgeseq serve` on 127.0.0.1 (the
tiny NASH fixture). The guarded routes are read from the app's own route table, so a route
added later without the gate fails here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from edgeseq.runtimes import load

from edgeseq.serving import ServeLimits, build_app
from edgeseq.serving.app import fastapi_app
from edgeseq.serving.auth import PROBES, ApiKeys, AuthPolicy, bearer
from edgeseq.serving.process import serve_process

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
NAME = "tiny"
KEY_A = "sk-edgeseq-first-key-0123456789"
KEY_B = "sk-edgeseq-second-key-abcdefghij"  # from the key file
KEY_C = "sk-edgeseq-third-key-from-the-env"  # from EDGESEQ_API_KEY
WRONG = {
    "no key": None,
    "a wrong key": "sk-edgeseq-not-a-key-0000000000",
    "one character changed": KEY_A[:-1] + ("8" if KEY_A[-1] != "8" else "7"),
    "another length": KEY_A + "x",
    "a prefix": KEY_A[:-4],
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with three keys (option, file, environment); yields (url, process)."""
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# the team's keys\n\n{KEY_B}\n")
    os.environ["EDGESEQ_API_KEY"] = KEY_C
    try:
        with serve_process(FIXTURE, "--name", NAME, "--api-key", KEY_A, "--api-key-file", str(key_file),
                           "--max-tokens", "64") as running:
            yield running
    finally:
        del os.environ["EDGESEQ_API_KEY"]


def every_route(routes):
    """The app's routes, into included routers (FastAPI >= 0.16x keeps them nested, with no
    prefix here) and mounts."""
    for route in routes:
        nested = getattr(getattr(route, "original_router", None), "routes", None) or getattr(route, "routes", None)
        if nested is not None:
            yield from every_route(nested)
        elif getattr(route, "methods", None):
            yield route


@pytest.fixture(scope="module")
def routes():
    """(method, path) of every route of the app, path parameters filled in."""
    with load(FIXTURE, threads=1) as model:
        app = fastapi_app(build_app(model, NAME, auth=AuthPolicy(ApiKeys([KEY_A]))))
        table = [(method, route.path.replace("{model_name}", NAME).replace("{version}", "1").replace("{path}", "x"))
                 for route in every_route(app.routes) for method in sorted(route.methods - {"HEAD"})]
    assert len(table) >= 12 and ("POST", "/v1/completions") in table and ("GET", "/v1/models") in table
    return table


def headers(key: str | None) -> dict:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def call(url: str, method: str, path: str, key: str | None) -> httpx.Response:
    body = {"prompt": [5, 6], "max_tokens": 2} if path == "/v1/completions" else None
    if path.endswith("/infer"):
        body = {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]}]}
    return httpx.request(method, f"{url}{path}", json=body, headers=headers(key), timeout=30)


@pytest.mark.parametrize("case", list(WRONG))
def test_every_guarded_route_refuses_a_missing_or_wrong_key(keyed, routes, case):
    url, _ = keyed
    for method, path in routes:
        r = call(url, method, path, WRONG[case])
        if path in PROBES:
            assert r.status_code == 200, (method, path, r.text)
            continue
        assert r.status_code == 401, (case, method, path, r.status_code, r.text[:200])
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        message = error if path.startswith("/v2") else error["message"]
        assert ("needs an API key" if WRONG[case] is None else "not valid") in message
    # a path no route has is refused too: the gate does not reveal which paths exist
    assert call(url, "GET", "/no/such/route", WRONG[case]).status_code == 401


def test_each_configured_key_is_admitted(keyed, routes):
    url, _ = keyed
    for key in (KEY_A, KEY_B, KEY_C):
        for method, path in routes:
            r = call(url, method, path, key)
            assert r.status_code == 200, (key[:12], method, path, r.status_code, r.text[:200])
    # the scheme is case-insensitive; a different scheme is not a bearer token
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"bearer {KEY_A}"}, timeout=10).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Basic {KEY_A}"}, timeout=10).status_code == 401


def test_the_openai_client_lists_models_and_completes_with_its_key(keyed):
    url, _ = keyed
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_B, timeout=30, max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    out = client.completions.create(model=NAME, prompt="the cat", max_tokens=4, temperature=0, user="someone")
    assert out.choices[0].finish_reason in {"length", "stop"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key=WRONG["a wrong key"], max_retries=0).models.list()


def test_request_ids_and_the_access_log_name_no_prompt_and_no_key(keyed):
    url, process = keyed
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "a secret prompt", "max_tokens": 3, "temperature": 0},
                   headers={**headers(KEY_A), "X-Request-Id": "client-id-42"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-42"
    refused = httpx.get(f"{url}/v1/models", timeout=10)
    assert refused.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    bad_id = httpx.get(f"{url}/health/live", headers={"X-Request-Id": "x" * 500}, timeout=10)
    assert bad_id.headers["x-request-id"] != "x" * 500  # an unusable id is replaced
    process.send_signal(15)
    _, stderr = process.communicate(timeout=60)
    line = next(line for line in stderr.splitlines() if "request_id=client-id-42" in line)
    assert "status=200" in line and "path=/v1/completions" in line and "completion_tokens=3" in line
    assert re.search(r"prompt_tokens=[1-9]\d* ", line) and "duration_ms=" in line
    assert f"request_id={refused.headers['x-request-id']}" in stderr and "status=401" in stderr
    assert "secret" not in stderr and KEY_A not in stderr and KEY_B not in stderr and KEY_C not in stderr


def test_metrics_are_guarded_unless_public():
    from starlette.testclient import TestClient

    with load(FIXTURE, threads=1) as model:
        for public, status in ((False, 401), (True, 200)):
            app = build_app(model, NAME, ServeLimits(), auth=AuthPolicy(ApiKeys([KEY_A]), public_metrics=public))
            with TestClient(app) as client:
                assert client.get("/metrics").status_code == status
                assert client.get("/metrics", headers=headers(KEY_A)).status_code == 200
                assert client.get("/v1/models").status_code == 401


def serve_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "EDGESEQ_API_KEY"} | (env or {})
    return subprocess.run([sys.executable, "-m", "edgeseq.cli", "serve", str(FIXTURE), *args], capture_output=True,
                          text=True, timeout=60, env=environ)


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 opens the server beyond this machine, and no API key is configured"),
    (["--api-key", "short"], "has 5 characters; keys need at least 16"),
    (["--api-key", "has a space in it, sixteen+"], "whitespace"),
    (["--api-key-file", "/no/such/keys.txt"], "cannot read --api-key-file /no/such/keys.txt"),
    (["--ssl-certfile", "/no/such/cert.pem"], "TLS needs both --ssl-certfile and --ssl-keyfile"),
])
def test_serve_refuses_an_open_or_badly_keyed_server_in_one_line(args, message):
    r = serve_cli(*args, "--port", "1")
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_keys_are_compared_by_digest_over_every_key():
    keys = ApiKeys([KEY_A, KEY_B, KEY_A])
    assert len(keys) == 2 and keys.admits(KEY_A) and keys.admits(KEY_B)
    assert not any(keys.admits(k) for k in WRONG.values())
    assert KEY_A.encode() not in json.dumps([d.hex() for d in keys._digests]).encode()  # digests only
    assert bearer([(b"authorization", b"Bearer  abc ")]) == "abc"
    assert bearer([(b"authorization", b"Bearer")]) is None and bearer([]) is None
