"""Idle expiry, the absolute lifetime, and the sweep that reclaims expired sessions unasked.

These wait for real time to pass (a 2 s idle timeout, a 3 s lifetime): the waiting is the
behaviour under test, not a guess at readiness.
"""

from __future__ import annotations

import time

from harness import PROTOCOL_VERSION, assert_rejection, describe, open_session, post, rpc, stats_changes

IDLE = {"paths": ["/mcp"], "idle_timeout_seconds": 2}
LIFETIME = {"paths": ["/mcp"], "idle_timeout_seconds": 60, "max_lifetime_seconds": 3}


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
    envoy = envoy_for("json", LIFETIME)
    start = time.monotonic()
    session = open_session(envoy.url())
    while time.monotonic() - start < 2.5:  # busy, far from idle, within its lifetime
        response = _list(envoy, session)
        assert response.status_code == 200, describe(response)
        time.sleep(0.25)
    time.sleep(max(0.0, 3.3 - (time.monotonic() - start)))
    before = envoy.stats()
    gone = _list(envoy, session)
    assert_rejection(gone, 404, -32001, "Session not found")
    changes = stats_changes(before, envoy.stats())
    # The sweep may have counted the expiry already (then only the rejection is new).
    assert changes in ({"expired": 1, "live": -1, "rejected.unknown": 1}, {"rejected.unknown": 1}), changes
