"""Fuzz: schemathesis generates requests from the server's own OpenAPI schema. The app runs
in this process over the tiny NASH fixture (tokenizer included), with an API key and a
small max_tokens cap so that every generated request finishes quickly. Sent with the key,
no answer may be a 5xx; sent without it, every answer but the probes' is a 401."""

import os
from pathlib import Path

import schemathesis
from edgeseq.runtimes import load
from hypothesis import HealthCheck, given, settings

from edgeseq.serving import ServeLimits, build_app
from edgeseq.serving.auth import PROBES, ApiKeys, AuthPolicy

# fixed examples by default, so CI is stable; EDGESEQ_FUZZ_EXAMPLES=500 explores at random
EXAMPLES = int(os.environ.get("EDGESEQ_FUZZ_EXAMPLES", "60"))
DERANDOMIZE = "EDGESEQ_FUZZ_EXAMPLES" not in os.environ
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
NAME = "tiny"
KEY = "sk-fuzz-key-0123456789abcdef"
WITH_KEY = {"Authorization": f"Bearer {KEY}"}


def fuzz(app, examples: int, headers: dict | None, check) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=WITH_KEY)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/completions" for op in operations)
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=DERANDOMIZE)
        def one(case):
            response = case.call(headers=headers)
            check(case, response)
            if response.status_code >= 400:
                assert "error" in response.json()  # every error answer is JSON

        one()


def test_no_request_gets_a_server_error_and_none_passes_without_the_key():
    model = load(FIXTURE, threads=1)
    try:
        app = build_app(model, NAME, ServeLimits(max_tokens=32, timeout_s=30), auth=AuthPolicy(ApiKeys([KEY])))

        def no_server_error(case, response):
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code} {response.text[:300]}")

        def refused(case, response):
            expected = 200 if case.formatted_path in PROBES else 401
            assert response.status_code == expected, (
                f"{case.method} {case.formatted_path} without a key -> {response.status_code} {response.text[:300]}")

        fuzz(app, EXAMPLES, WITH_KEY, no_server_error)
        fuzz(app, max(5, EXAMPLES // 6), None, refused)
    finally:
        model.close()
