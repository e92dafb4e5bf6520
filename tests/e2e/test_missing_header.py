"""Behaviour 3: without a session header only a single initialize POST is accepted."""

from __future__ import annotations

import json

import pytest

from harness import (
    ARTIFACT,
    TAG_HEADER,
    assert_rejection,
    expect_stats,
    initialize,
    initialize_body,
    new_tag,
    post,
    request,
    rpc,
)

MISSING = "Bad Request: Mcp-Session-Id header is required"


def test_post_other_than_initialize_gets_400_with_the_request_id(envoy) -> None:
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = post(envoy.url(), rpc("tools/list", 7))
    assert_rejection(response, 400, -32000, MISSING, request_id=7)


def test_notification_without_session_gets_400_with_null_id(envoy) -> None:
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = post(envoy.url(), rpc("notifications/initialized"))
    assert_rejection(response, 400, -32000, MISSING, request_id=None)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_without_session_get_400(envoy, upstream, method: str) -> None:
    tag = new_tag()
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = request(method, envoy.url(), accept="text/event-stream", headers={TAG_HEADER: tag})
    assert_rejection(response, 400, -32000, MISSING, request_id=None)
    assert upstream.requests(tag) == []


# POSTs without a session that the filter refuses once it has read their bodies.
REFUSED_FOR_THEIR_BODY = {
    "no session": (rpc("tools/list", 7), 400, "rejected.missing"),
    "initialize in a batch": ([initialize_body(1), rpc("tools/list", 2)], 400, "rejected.body"),
}


@pytest.mark.parametrize("case", REFUSED_FOR_THEIR_BODY)
def test_a_post_refused_for_its_body_reaches_the_upstream_at_most_as_headers(envoy, upstream, case: str) -> None:
    """The native module holds the headers of a POST it must read the body of (a dynamic
    module's StopIteration still shows it the body): a refused one never reaches the upstream.
    The Wasm filter lets the headers go on (holding them would stop the body callbacks on hosts
    without `allow_on_headers_stop_iteration`): the upstream sees them and a reset, never the
    body (README, known limits)."""
    body, status, counter = REFUSED_FOR_THEIR_BODY[case]
    tag = new_tag()
    with expect_stats(envoy, {counter: 1}):
        response = post(envoy.url(), body, headers={TAG_HEADER: tag})
    assert response.status_code == status, response.text
    # An initialize after it through the same Envoy: once the upstream has it, the refused
    # POST's headers had their time to arrive.
    passed = new_tag()
    assert initialize(envoy.url(), headers={TAG_HEADER: passed}).status_code == 200
    assert len(upstream.requests(passed)) == 1
    seen = upstream.requests(tag)
    if ARTIFACT == "native":
        assert seen == []
    else:
        assert all(s["body"] == "" and s["status"] != 200 for s in seen), json.dumps(seen)


def test_initialize_inside_a_batch_gets_400(envoy) -> None:
    batch = [initialize_body(1), rpc("tools/list", 2)]
    with expect_stats(envoy, {"rejected.body": 1}):
        response = post(envoy.url(), batch)
    assert_rejection(response, 400, -32600, "Invalid Request: initialize must not be part of a JSON-RPC batch")


def test_batch_without_initialize_gets_missing_header(envoy) -> None:
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = post(envoy.url(), [rpc("ping", 1), rpc("tools/list", 2)])
    assert_rejection(response, 400, -32000, MISSING, request_id=None)


def test_guarded_path_ignores_the_query(envoy) -> None:
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = post(envoy.url("/mcp?trace=1"), rpc("tools/list", 3))
    assert_rejection(response, 400, -32000, MISSING, request_id=3)
