"""Behaviour 7: until `notifications/initialized`, only ping (and notifications) pass."""

from __future__ import annotations

from harness import (
    INITIALIZED,
    PROTOCOL_VERSION,
    TAG_HEADER,
    assert_rejection,
    describe,
    expect_stats,
    first_message,
    new_tag,
    open_session,
    post,
    rpc,
    tool_call,
)

LIFECYCLE = "Bad Request: Session not initialized: send notifications/initialized first"


def test_request_before_initialized_gets_400(envoy, upstream) -> None:
    session = open_session(envoy.url(), initialized=False)
    tag = new_tag()
    with expect_stats(envoy, {"rejected.lifecycle": 1}):
        response = post(
            envoy.url(), tool_call("echo", {"text": "x"}, request_id=5), session=session, headers={TAG_HEADER: tag}
        )
    assert_rejection(response, 400, -32000, LIFECYCLE, request_id=5)
    # The filter held the body to read it: the upstream may have seen the headers (then a
    # reset), never the tool call.
    assert [r["body"] for r in upstream.requests(tag) if r["body"]] == []


def test_ping_before_initialized_passes(envoy) -> None:
    session = open_session(envoy.url(), initialized=False)
    with expect_stats(envoy, {}):
        response = post(envoy.url(), rpc("ping", 3), session=session, protocol_version=PROTOCOL_VERSION)
    assert response.status_code == 200, describe(response)
    assert first_message(response) == {"jsonrpc": "2.0", "id": 3, "result": {}}


def test_other_notifications_pass_but_do_not_initialize(envoy) -> None:
    session = open_session(envoy.url(), initialized=False)
    cancelled = rpc("notifications/cancelled", params={"requestId": 99, "reason": "test"})
    response = post(envoy.url(), cancelled, session=session, protocol_version=PROTOCOL_VERSION)
    assert response.status_code == 202, describe(response)
    still = post(envoy.url(), rpc("tools/list", 4), session=session, protocol_version=PROTOCOL_VERSION)
    assert_rejection(still, 400, -32000, LIFECYCLE, request_id=4)


def test_initialized_notification_opens_the_session_on_every_worker(envoy) -> None:
    session = open_session(envoy.url(), initialized=False)
    ack = post(envoy.url(), INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
    assert ack.status_code == 202, describe(ack)
    with expect_stats(envoy, {}):
        for i in range(10):
            response = post(envoy.url(), rpc("tools/list", i), session=session, protocol_version=PROTOCOL_VERSION)
            assert response.status_code == 200, describe(response)


def test_enforce_initialized_false_lets_requests_through(envoy_for) -> None:
    envoy = envoy_for("json", {"paths": ["/mcp"], "enforce_initialized": False})
    session = open_session(envoy.url(), initialized=False)
    response = post(envoy.url(), tool_call("add", {"a": 1, "b": 2}), session=session)
    assert response.status_code == 200, describe(response)
    assert first_message(response)["result"]["structuredContent"] == {"result": 3}


def test_every_worker_sees_the_handshake_finish_after_serving_the_session_before_it(envoy) -> None:
    """Regression: a worker that validated the session before `notifications/initialized` (a
    ping here) kept that view in its cache and refused the next requests with 400."""
    session = open_session(envoy.url(), initialized=False)
    for n in range(8):  # fresh connections: every worker serves one before the notification
        assert post(envoy.url(), rpc("ping", n), session=session).status_code == 200
    ack = post(envoy.url(), INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
    assert ack.status_code == 202, describe(ack)
    for n in range(8):
        response = post(envoy.url(), rpc("tools/list", n), session=session)
        assert response.status_code == 200, describe(response)
