"""Behaviour 10: `max_sessions` (503 on initialize, live sessions unaffected) and the checks
on a sessionless body (size, JSON, JSON-RPC, content type)."""

from __future__ import annotations

import json

import pytest

from harness import (
    PROTOCOL_VERSION,
    TAG_HEADER,
    assert_rejection,
    describe,
    expect_stats,
    initialize,
    initialize_body,
    new_tag,
    open_session,
    post,
    request,
    rpc,
)

MAX_BODY = 4096  # conftest.MAIN_CONFIG


def test_initialize_beyond_max_sessions_gets_503(envoy_for) -> None:
    envoy = envoy_for("json", {"paths": ["/mcp"], "max_sessions": 2}, fresh=True)
    first = open_session(envoy.url())
    second = open_session(envoy.url())

    with expect_stats(envoy, {"rejected.capacity": 1}):
        full = initialize(envoy.url(), body=initialize_body(request_id=42))
    assert_rejection(full, 503, -32000, "Service Unavailable: too many open sessions", request_id=42)
    assert "mcp-session-id" not in full.headers

    for session in (first, second):  # live sessions unaffected
        ok = post(envoy.url(), rpc("tools/list", 1), session=session, protocol_version=PROTOCOL_VERSION)
        assert ok.status_code == 200, describe(ok)

    # Ending one frees its slot.
    assert request("DELETE", envoy.url(), session=first).status_code == 204
    third = open_session(envoy.url())
    assert third not in (first, second)
    assert envoy.stats()["live"] == 2
    envoy.stop()


def _initialize_of_size(size: int) -> bytes:
    """A valid initialize request whose JSON body is exactly `size` bytes."""
    body = initialize_body()
    body["params"]["clientInfo"]["name"] = ""
    base = len(json.dumps(body).encode())
    body["params"]["clientInfo"]["name"] = "x" * (size - base)
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


def test_body_at_the_limit_is_accepted(envoy) -> None:
    response = post(envoy.url(), content=_initialize_of_size(MAX_BODY))
    assert response.status_code == 200, describe(response)
    assert "mcp-session-id" in response.headers


def test_body_over_the_limit_gets_413(envoy) -> None:
    with expect_stats(envoy, {"rejected.body": 1}):
        response = post(envoy.url(), content=_initialize_of_size(MAX_BODY + 1))
    assert_rejection(response, 413, -32000, f"Payload Too Large: request body exceeds {MAX_BODY} bytes")


def test_invalid_json_gets_400_parse_error(envoy) -> None:
    with expect_stats(envoy, {"rejected.body": 1}):
        response = post(envoy.url(), content=b'{"jsonrpc": "2.0", "id": 1, "method": "initialize",')
    assert_rejection(response, 400, -32700, "Parse error: request body is not valid JSON")


@pytest.mark.parametrize("raw", [b'{"hello": "world"}', b'"initialize"', b"42", b"null"])
def test_json_that_is_not_jsonrpc_gets_400_invalid_request(envoy, raw: bytes) -> None:
    with expect_stats(envoy, {"rejected.body": 1}):
        response = post(envoy.url(), content=raw)
    assert_rejection(response, 400, -32600, "Invalid Request: body is not a JSON-RPC message")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json-seq"])
def test_non_json_content_type_gets_415(envoy, content_type) -> None:
    with expect_stats(envoy, {"rejected.body": 1}):
        response = post(envoy.url(), initialize_body(), content_type=content_type)
    assert_rejection(response, 415, -32000, "Unsupported Media Type: Content-Type must be application/json")


def test_missing_content_type_is_judged_by_the_body(envoy, upstream) -> None:
    """No content type: the filter reads the body (an initialize) and forwards it; the SDK
    upstream then refuses it (4xx) and no session is left behind."""
    tag = new_tag()
    with expect_stats(envoy, {}):
        response = post(envoy.url(), initialize_body(), content_type=None, headers={TAG_HEADER: tag})
    (seen,) = upstream.requests(tag)
    assert response.status_code == seen["status"], describe(response)
    assert 400 <= response.status_code < 500, describe(response)
    assert "mcp-session-id" not in response.headers


def test_json_content_type_with_parameters_is_accepted(envoy) -> None:
    response = post(envoy.url(), initialize_body(), content_type="application/json; charset=utf-8")
    assert response.status_code == 200, describe(response)
    assert "mcp-session-id" in response.headers


def test_a_declared_length_over_the_limit_gets_the_filters_413_before_the_upstream_sees_it(
    envoy_for, upstreams
) -> None:
    """Regression: the filter forwards a sessionless POST's headers before it has judged the
    body, and the Python SDK upstream answers a `content-length` over 4 MB with its own 413
    (plain text) at once; the client got that, or a connection closed mid-answer, about half
    the time with the default max_body_bytes (4 MiB). A declared length over the limit is now
    refused on the headers. (An earlier report blamed the listener's buffer limit.)"""
    envoy = envoy_for("json", {"paths": ["/mcp"]})  # every other key at its default
    default = 4 * 1024 * 1024
    body = _initialize_of_size(default + 1)
    tag = new_tag()
    with expect_stats(envoy, {"rejected.body": 6}):
        for attempt in range(6):
            response = post(envoy.url(), content=body, headers={TAG_HEADER: tag})
            assert response.status_code == 413, f"attempt {attempt}\n{describe(response)}"
            assert_rejection(response, 413, -32000, f"Payload Too Large: request body exceeds {default} bytes")
    assert upstreams.get("json").requests(tag) == []
