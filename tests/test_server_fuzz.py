"""Fuzz: schemathesis generates requests from the server's own OpenAPI schema; no answer may
be a 5xx. The app runs in this process over the tiny NASH fixture (tokenizer included),
with a small max_tokens cap so that every generated request finishes quickly."""

import os
from pathlib import Path

import schemathesis
from edgeseq.runtimes import load
from hypothesis import HealthCheck, given, settings

from edgeseq.serving import ServeLimits, build_app

# fixed examples by default, so CI is stable; EDGESEQ_FUZZ_EXAMPLES=500 explores at random
EXAMPLES = int(os.environ.get("EDGESEQ_FUZZ_EXAMPLES", "60"))
DERANDOMIZE = "EDGESEQ_FUZZ_EXAMPLES" not in os.environ
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
NAME = "tiny"


def test_no_request_gets_a_server_error():
    model = load(FIXTURE, threads=1)
    try:
        app = build_app(model, NAME, ServeLimits(max_tokens=32, timeout_s=30))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert any(op.path == "/v1/completions" for op in operations)
        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=DERANDOMIZE)
            def no_server_error(case):
                response = case.call()
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code} {response.text[:300]}")
                if response.status_code >= 400:
                    assert "error" in response.json()  # every error answer is JSON

            no_server_error()
    finally:
        model.close()
