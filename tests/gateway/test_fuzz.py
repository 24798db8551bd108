"""Schemathesis fuzzing of the REST API: requests generated from the gateway's own `/openapi.json`, valid
and invalid, sent to the real gateway over fake backends (no API keys). Every answer must be a non-5xx
status the schema declares for the operation, with a content type, headers and body (SSE events included)
that match the schema.

Bounded and deterministic, ~10 s: per operation, the schema's request examples, the coverage phase
(boundary and wrong values of every field and header) and 30 generated cases per mode (valid, invalid).
Below, regression tests for what the fuzzer found."""

from __future__ import annotations

import math

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.routes import TIMEOUT_HEADER
from tests.gateway.fakes import FakeCluster
from tests.gateway.helpers import chat, user


def no_server_error(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
    """No 5xx, except the 504 of a request whose own `x-request-timeout` was shorter than the fakes need
    (the fuzzer sends deadlines like 5e-324 s): the declared, correct answer to it."""
    if response.status_code == 504 and _seconds((case.headers or {}).get(TIMEOUT_HEADER)) < 5.0:
        return True
    return not_a_server_error(ctx, response, case)


def _seconds(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CONFIG = {
    "generation": {"mode": "all", "max-examples": 30, "deterministic": True, "database": "none"},
}


@pytest.fixture(scope="module")
def api_schema(cluster: FakeCluster) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{cluster.http_url}/openapi.json", config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32.5 names each operation's subtest through `node._nodeid`, an attribute pytest 9.2
    no longer has (`nodeid` is a property now); a copy keeps its lazy loader working."""
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=30, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_rest_api_conforms_to_its_schema(case: schemathesis.Case, cluster: FakeCluster) -> None:
    case.call_and_validate(base_url=cluster.http_url, checks=CHECKS, timeout=30)


# --- what the fuzzer found ---------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"caf\xe9", b"two words", b"x" * 129])
def test_an_invalid_request_id_is_replaced(cluster, sent):
    """An x-request-id that gRPC metadata refuses (non-ASCII, spaces, too long) was a 500."""
    r = chat(cluster, user("Hello"), headers={"x-request-id": sent})
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    assert request_id.encode() != sent and r.json()["nextgpt"]["request_id"] == request_id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00", "Expecting value at character 0"),
        (b'{"messages": [}', "at character 14"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_a_body_that_is_not_json_is_named(cluster, body, reason):
    url = f"{cluster.http_url}/v1/chat/completions"
    r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"].startswith("the request body is not valid JSON") and reason in error["message"]
    assert error["code"] == "invalid_argument" and error["param"] is None


def test_validation_errors_name_fields_as_the_client_writes_them(cluster):
    r = chat(cluster, {"role": "user", "content": [{"type": "image_url", "image_url": {}}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "messages[0].content[0].image_url.image_url.url: Field required" in error["message"]


def test_the_schema_declares_what_the_api_answers(cluster):
    paths = httpx.get(f"{cluster.http_url}/openapi.json", timeout=30).json()["paths"]
    chat_responses = paths["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat_responses and {"400", "413", "429", "503"} <= set(chat_responses)
    assert set(chat_responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "Retry-After" in chat_responses["429"]["headers"]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
