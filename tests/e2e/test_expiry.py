"""Idle expiry, the absolute lifetime, and the sweep that reclaims expired sessions unasked.

These wait for real time to pass (a 2 s idle timeout, a 3 s lifetime): the waiting is the
behaviour under test, not a guess at readiness.
"""

from __future__ import annotations

import time

from harness import (
    INITIALIZED,
    PROTOCOL_VERSION,
    SESSION_ID_RE,
    assert_rejection,
    describe,
    initialize_body,
    open_session,
    post,
    rpc,
    stats_changes,
    timed_request,
)

IDLE = {"paths": ["/mcp"], "idle_timeout_seconds": 2}
LIFETIME_S = 3
LIFETIME = {"paths": ["/mcp"], "idle_timeout_seconds": 60, "max_lifetime_seconds": LIFETIME_S}
CLOCK_SLACK_S = 0.01  # Envoy's wall clock in ms against our monotonic clock


def _list(envoy, session):
    return post(envoy.url(), rpc("tools/list", 1), session=session, protocol_version=PROTOCOL_VERSION)


def test_use_restarts_the_idle_clock_and_an_idle_session_expires(envoy_for) -> None:
    envoy = envoy_for("json", IDLE)
    session = open_session(envoy.url())
    # Used every second for 3 s (past the 2 s idle timeout): still valid.
    for _ in range(3):
        time.sleep(1.0)
        response = _list(envoy, session)
        assert response.status_code == 200, describe(response)
    before = envoy.stats()
    time.sleep(2.5)
    gone = _list(envoy, session)
    assert_rejection(gone, 404, -32001, "Session not found")
    changes = stats_changes(before, envoy.stats())
    assert changes == {"expired": 1, "live": -1, "rejected.unknown": 1}, changes


def test_sweep_reclaims_an_expired_session_without_any_request(envoy_for) -> None:
    envoy = envoy_for("json", IDLE)
    before = envoy.stats()
    open_session(envoy.url())
    opened = envoy.stats()
    assert stats_changes(before, opened) == {"created": 1, "live": 1}
    # Expires 2 s after its last use; every worker ticks each second and the sweep of a small
    # table is one step: it must be counted within a few seconds, with no request at all.
    deadline = time.monotonic() + 2 + 5
    while True:
        changes = stats_changes(opened, envoy.stats())
        if "expired" in changes and "live" in changes:
            break
        assert time.monotonic() < deadline, "the sweep did not reclaim the expired session"
        time.sleep(0.1)
    assert changes == {"expired": 1, "live": -1}, changes


def test_max_lifetime_ends_a_busy_session(envoy_for) -> None:
    """Busy all through its lifetime, refused after it. The lifetime counts from the moment
    the filter minted the session, somewhere inside the `initialize` the client timed: each
    use is judged from that interval (a loaded machine may take long over the `initialize`;
    a clock started before it would then probe too early)."""
    envoy = envoy_for("json", LIFETIME)
    port = envoy.port
    init = timed_request(port, "POST", initialize_body())
    session = init.headers.get("mcp-session-id", "")
    assert init.status == 200 and SESSION_ID_RE.match(session), (init.status, init.body)
    ack = timed_request(port, "POST", INITIALIZED, session=session)
    assert ack.status == 202, (ack.status, ack.body)
    last_use = None
    while time.monotonic() - init.received < LIFETIME_S - 0.5:  # busy, far from idle
        use = timed_request(port, "POST", rpc("tools/list", 1), session=session)
        # Answered less than the lifetime after the `initialize` was sent: certainly within it.
        if use.received - init.sent < LIFETIME_S - CLOCK_SLACK_S:
            assert use.status == 200, (use.status, use.body)
            last_use = use
        time.sleep(0.25)
    # Used (and so touched) in the last second of its lifetime, certainly: it must still end.
    assert last_use is not None and last_use.sent > init.received + LIFETIME_S - 1.0, "the machine stalled the uses"
    # Sent more than the lifetime after the `initialize` was answered: certainly past it.
    time.sleep(max(0.0, init.received + LIFETIME_S + 0.3 - time.monotonic()))
    before = envoy.stats()
    gone = _list(envoy, session)
    assert_rejection(gone, 404, -32001, "Session not found")
    changes = stats_changes(before, envoy.stats())
    # The sweep may have counted the expiry already (then only the rejection is new).
    assert changes in ({"expired": 1, "live": -1, "rejected.unknown": 1}, {"rejected.unknown": 1}), changes
