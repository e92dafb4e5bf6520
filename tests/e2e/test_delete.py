"""Behaviour 6: DELETE ends a session for every worker at once; `allow_delete: false` → 405."""

from __future__ import annotations

from harness import (
    PROTOCOL_VERSION,
    TAG_HEADER,
    assert_rejection,
    describe,
    expect_stats,
    new_tag,
    open_session,
    post,
    request,
    rpc,
)


def test_delete_ends_the_session_everywhere(envoy, upstream) -> None:
    session = open_session(envoy.url())
    tag = new_tag()
    with expect_stats(envoy, {"terminated": 1, "live": -1}):
        response = request("DELETE", envoy.url(), session=session, headers={TAG_HEADER: tag})
    # A stateless upstream has nothing to end: the filter answers itself.
    assert response.status_code == 204, describe(response)
    assert response.content == b""
    assert upstream.requests(tag) == []

    # Gone for every worker at once: 20 fresh connections, each a 404.
    with expect_stats(envoy, {"rejected.unknown": 20}):
        for i in range(20):
            reply = post(envoy.url(), rpc("tools/list", i), session=session, protocol_version=PROTOCOL_VERSION)
            assert_rejection(reply, 404, -32001, "Session not found")


def test_second_delete_gets_404(envoy) -> None:
    session = open_session(envoy.url())
    assert request("DELETE", envoy.url(), session=session).status_code == 204
    with expect_stats(envoy, {"rejected.unknown": 1}):
        again = request("DELETE", envoy.url(), session=session)
    assert_rejection(again, 404, -32001, "Session not found")


def test_delete_not_allowed_gets_405_with_allow(envoy_for) -> None:
    envoy = envoy_for("json", {"paths": ["/mcp"], "allow_delete": False})
    session = open_session(envoy.url())
    with expect_stats(envoy, {"rejected.method": 1}):
        response = request("DELETE", envoy.url(), session=session)
    assert_rejection(response, 405, -32000, "Method Not Allowed: sessions cannot be ended by the client")
    assert response.headers.get("allow") == "GET, POST", describe(response)
    # The session lives on.
    ok = post(envoy.url(), rpc("tools/list", 2), session=session, protocol_version=PROTOCOL_VERSION)
    assert ok.status_code == 200, describe(ok)
