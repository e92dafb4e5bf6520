"""The shared-data store under contention: both workers, many requests at once.

Every read-modify-write is a CAS: concurrent initializes get distinct sessions and are all
counted, the capacity holds exactly, and a session is ended exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from harness import (
    SESSION_ID_RE,
    describe,
    expect_stats,
    first_message,
    initialize,
    open_session,
    request,
)

PARALLEL = 16


def _parallel(fn, count: int):
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(lambda _: fn(), range(count)))


def test_concurrent_initializes_get_distinct_sessions(envoy) -> None:
    with expect_stats(envoy, {"created": 64, "live": 64}):
        responses = _parallel(lambda: initialize(envoy.url()), 64)
    assert all(r.status_code == 200 and "result" in first_message(r) for r in responses), [
        describe(r) for r in responses if r.status_code != 200
    ]
    ids = [r.headers.get("mcp-session-id", "") for r in responses]
    assert all(SESSION_ID_RE.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids), "two initializes got the same session"
    assert len({i[:8] for i in ids}) == len(ids), "two live sessions share a slot"


def test_capacity_holds_under_concurrent_initializes(envoy_for) -> None:
    envoy = envoy_for("json", {"paths": ["/mcp"], "max_sessions": 5}, fresh=True)
    with expect_stats(envoy, {"created": 5, "live": 5, "rejected.capacity": 19}):
        responses = _parallel(lambda: initialize(envoy.url()), 24)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [503] * 19, statuses
    envoy.stop()


def test_concurrent_deletes_end_a_session_once(envoy) -> None:
    session = open_session(envoy.url())
    with expect_stats(envoy, {"terminated": 1, "live": -1, "rejected.unknown": 11}):
        responses = _parallel(lambda: request("DELETE", envoy.url(), session=session), 12)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [204] + [404] * 11, statuses
