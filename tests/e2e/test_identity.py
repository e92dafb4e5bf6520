"""`identity_header`: a session is bound to the identity that created it; any other identity
(or none) gets exactly the 404 of an unknown session."""

from __future__ import annotations

import secrets

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

IDENTITY = {"paths": ["/mcp"], "identity_header": "x-user-id"}


def _list(envoy, session, user=None, **headers):
    if user is not None:
        headers["x-user-id"] = user
    return post(envoy.url(), rpc("tools/list", 1), session=session, protocol_version=PROTOCOL_VERSION, headers=headers)


def _observable(response):
    return response.status_code, response.headers.get("content-type"), response.content


def test_owner_can_use_the_session(envoy_for) -> None:
    envoy = envoy_for("json", IDENTITY)
    session = open_session(envoy.url(), headers={"x-user-id": "alice"})
    for _ in range(5):
        response = _list(envoy, session, "alice")
        assert response.status_code == 200, describe(response)


def test_other_identity_gets_the_unknown_session_404(envoy_for, upstreams) -> None:
    envoy = envoy_for("json", IDENTITY)
    session = open_session(envoy.url(), headers={"x-user-id": "alice"})
    unknown = _list(envoy, secrets.token_hex(20), "alice")
    assert_rejection(unknown, 404, -32001, "Session not found")

    tag = new_tag()
    for user in ("bob", "Alice", "alice2", ""):
        # An empty value is no identity (issue 11): the same 404, counted as a missing identity.
        reason = "rejected.identity" if user == "" else "rejected.unknown"
        with expect_stats(envoy, {reason: 1}):
            response = _list(envoy, session, user, **{TAG_HEADER: tag})
        assert _observable(response) == _observable(unknown), f"user {user!r}\n{describe(response)}"
    assert upstreams.get("json").requests(tag) == []

    # The owner is unaffected.
    assert _list(envoy, session, "alice").status_code == 200


def test_missing_identity_gets_the_unknown_session_404(envoy_for) -> None:
    envoy = envoy_for("json", IDENTITY)
    session = open_session(envoy.url(), headers={"x-user-id": "alice"})
    unknown = _list(envoy, secrets.token_hex(20), "alice")
    response = _list(envoy, session)
    assert _observable(response) == _observable(unknown), describe(response)


def test_other_identity_cannot_delete(envoy_for) -> None:
    envoy = envoy_for("json", IDENTITY)
    session = open_session(envoy.url(), headers={"x-user-id": "alice"})
    response = request("DELETE", envoy.url(), session=session, headers={"x-user-id": "mallory"})
    assert_rejection(response, 404, -32001, "Session not found")
    assert _list(envoy, session, "alice").status_code == 200
