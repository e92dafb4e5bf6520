"""Behaviour 3: without a session header only a single initialize POST is accepted."""

from __future__ import annotations

import pytest

from harness import TAG_HEADER, assert_rejection, expect_stats, initialize_body, new_tag, post, request, rpc

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
