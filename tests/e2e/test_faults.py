"""Faults: configuration updates under load, an upstream that is down, slow or restarted, and
a VM that fails at runtime under FAIL_RELOAD.

In each case the clients must get a clear answer (the filter's JSON-RPC errors, or Envoy's own
503 / 504), and the filter's state must stay consistent: sessions that should survive work
with the same IDs, nothing is created by a failed `initialize`, and the stats add up.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import (
    INITIALIZED,
    PROTOCOL_VERSION,
    REPO,
    SESSION_ID_RE,
    TAG_HEADER,
    Envoy,
    McpServer,
    Timed,
    assert_rejection,
    describe,
    expect_stats,
    first_message,
    initialize,
    initialize_body,
    make_listener_dynamic,
    new_tag,
    open_session,
    post,
    render_bootstrap,
    request,
    rpc,
    set_plugin_configuration,
    stats_changes,
    timed_request,
    tool_call,
    write_lds,
)

CAPACITY = (503, -32000, "Service Unavailable: too many open sessions")
NOT_FOUND = (404, -32001, "Session not found")
METHOD = (405, -32000, "Method Not Allowed: sessions cannot be ended by the client")


def route(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap's one route action (for its timeout)."""
    (listener,) = bootstrap["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]


def start(envoys, bootstrap: dict[str, Any], workdir: Path, name: str, concurrency: int = 2) -> Envoy:
    """An Envoy of this test's own shape, in the pool: stopped at the end, its log checked."""
    envoy = Envoy(bootstrap, workdir, name=name, concurrency=concurrency).start()
    envoys.all.append(envoy)
    return envoy


def add(port: int, session: str, a: int, b: int, **headers: str) -> Timed:
    return timed_request(port, "POST", tool_call("add", {"a": a, "b": b}, request_id=a), session=session, headers=headers)


def added(t: Timed, a: int, b: int) -> bool:
    return t.status == 200 and t.json().get("result", {}).get("structuredContent") == {"result": a + b}


def rejection(t: Timed) -> tuple[int, int, str] | None:
    """(status, JSON-RPC code, message) of a filter rejection, None for anything else."""
    if t.headers.get("content-type", "").split(";")[0] != "application/json":
        return None
    try:
        body = t.json()
        error = body["error"]
        return (t.status, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        return None


def wait_for(what: str, check, timeout: float, interval: float = 0.05):
    """Poll `check()` (a readiness signal: a stat, a log line) until truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(interval)
    return result


# --------------------------------------------------------------------------- configuration updates


class ListenerFile:
    """The listener of an Envoy, served from a file the test rewrites (LDS)."""

    def __init__(self, bootstrap: dict[str, Any], directory: Path) -> None:
        directory.mkdir()
        self.path = directory / "lds.yaml"
        self.listener = make_listener_dynamic(bootstrap, self.path)
        self.envoy: Envoy | None = None

    def apply(self, config: dict[str, Any], timeout: float = 15.0) -> float:
        """Write a new plugin configuration and wait until Envoy has taken the listener (LDS
        update accepted, nothing warming). Returns the monotonic time it was written."""
        assert self.envoy is not None
        name = "listener_manager.listener_modified"
        modified = self.envoy.server_stats("listener_manager").get(name, 0)
        set_plugin_configuration(self.listener, config)
        written = time.monotonic()
        write_lds(self.listener, self.path)

        def taken() -> bool:
            stats = self.envoy.server_stats("listener_manager")
            assert stats.get("listener_manager.lds.update_rejected", 0) == 0, self.envoy.log_tail()
            return stats.get(name, 0) > modified and stats.get("listener_manager.total_listeners_warming", 1) == 0

        wait_for("the listener update", taken, timeout)
        return written


class Load:
    """Threads that use sessions without pause until stopped; every answer is kept."""

    def __init__(self, port: int, sessions: list[str], threads: int = 6) -> None:
        self.port = port
        self.sessions = sessions
        self.stop_event = threading.Event()
        self.results: list[tuple[Timed, bool]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        n = 0
        while not self.stop_event.is_set():
            session = self.sessions[(index + n) % len(self.sessions)]
            n += 1
            a, b = 1000 * index + n, n
            try:
                t = add(self.port, session, a, b)
                ok = added(t, a, b)
            except OSError as e:
                t, ok = Timed(0, {}, repr(e).encode(), 0.0, time.monotonic()), False
            with self.lock:
                self.results.append((t, ok))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def failures(self) -> list[str]:
        return [f"{t.status} {t.body[:200]!r}" for t, ok in self.results if not ok]

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for t, _ in self.results if start <= t.sent and t.received <= end)


def test_configuration_updates_under_load_keep_sessions_and_apply_at_once(workdir, envoys, upstreams) -> None:
    server = upstreams.new("json")
    config = {"paths": ["/mcp"], "max_sessions": 100}
    bootstrap = render_bootstrap(upstream_port=server.port, filter_config=config)
    lds = ListenerFile(bootstrap, workdir / "faults-lds")
    envoy = lds.envoy = start(envoys, bootstrap, workdir, "envoy-faults-lds")
    port = envoy.port

    sessions = [open_session(envoy.url()) for _ in range(20)]
    tag = new_tag()
    slow: dict[str, Timed] = {}

    def slow_call() -> None:
        slow["call"] = timed_request(
            port, "POST", tool_call("sleep", {"seconds": 1.5}), session=sessions[0], headers={TAG_HEADER: tag}
        )

    marks = [time.monotonic()]
    with Load(port, sessions) as load:
        # A call in flight on the old configuration while it is replaced.
        caller = threading.Thread(target=slow_call)
        caller.start()
        wait_for("the slow call reaches the upstream", lambda: server.requests(tag), 10)

        # 1. max_sessions down to the number open: the next initialize is refused.
        lds.apply({**config, "max_sessions": 20})
        marks.append(time.monotonic())
        for _ in range(3):
            refused = timed_request(port, "POST", initialize_body())
            assert rejection(refused) == CAPACITY, (refused.status, refused.body)
            assert "mcp-session-id" not in refused.headers

        # 2. Raised to 25: exactly five more fit.
        lds.apply({**config, "max_sessions": 25})
        marks.append(time.monotonic())
        for _ in range(5):
            sessions.append(open_session(envoy.url()))
        refused = timed_request(port, "POST", initialize_body())
        assert rejection(refused) == CAPACITY, (refused.status, refused.body)

        # 3. allow_delete off: DELETE is refused and the session stays.
        lds.apply({**config, "max_sessions": 25, "allow_delete": False})
        marks.append(time.monotonic())
        for session in sessions[-2:]:
            refused = timed_request(port, "DELETE", session=session)
            assert rejection(refused) == METHOD, (refused.status, refused.body)
            assert refused.headers.get("allow") == "GET, POST"
        caller.join(timeout=30)
        # Some load on the last configuration too before it stops.
        last = marks[-1]
        wait_for("load after the last update", lambda: load.count_between(last, time.monotonic()) >= 20, 15)
        marks.append(time.monotonic())

    assert not (failures := load.failures()), f"{len(failures)} failed requests under load:\n" + "\n".join(failures[:10])
    # The load ran through every update, not around them.
    counts = [load.count_between(a, b) for a, b in zip(marks, marks[1:])]
    assert all(n > 0 for n in counts), counts
    call = slow["call"]
    assert call.status == 200 and call.json()["result"]["structuredContent"] == {"result": "slept 1.5s"}, call.body
    assert all(added(add(port, s, 7, 8), 7, 8) for s in sessions), "a session did not survive the updates"

    stats = envoy.stats()
    assert (stats["created"], stats["live"], stats["terminated"], stats["expired"]) == (25, 25, 0, 0), stats
    assert (stats["rejected.capacity"], stats["rejected.method"], stats["rejected.unknown"]) == (4, 2, 0), stats

    # 4. A shorter idle timeout applies to the sessions that exist: the one kept busy stays,
    # the other 24, last used before this moment, are refused once idle for the new 1 s.
    rest_last_used = time.monotonic()
    lds.apply({**config, "max_sessions": 25, "idle_timeout_seconds": 1})
    kept, rest = sessions[0], sessions[1:]
    uses = [add(port, kept, 1, 2)]
    while time.monotonic() < rest_last_used + 1.2:
        time.sleep(0.2)
        uses.append(add(port, kept, 1, 2))
    gone = [add(port, session, 1, 2) for session in rest]
    assert all(rejection(t) == NOT_FOUND for t in gone), [(t.status, t.body) for t in gone]
    # Each use of the kept session came at most 0.2 s + latencies after the previous one, far
    # below 1 s: it must have worked (one the machine stretched to the timeout proves nothing).
    for prev, t in zip(uses, uses[1:]):
        if t.received - prev.sent + 1 / 64 < 1.0 - 0.01:
            assert added(t, 1, 2), (t.status, t.body)
    stats = envoy.stats()
    assert (stats["live"], stats["expired"], stats["rejected.unknown"]) == (1, 24, 24), stats

    # 5. identity_header switched on: sessions opened without it are refused (documented), new
    # ones are bound.
    lds.apply({**config, "identity_header": "x-user"})
    assert rejection(add(port, kept, 1, 2)) == NOT_FOUND
    bound = open_session(envoy.url(), headers={"x-user": "alice"})
    assert added(add(port, bound, 2, 3, **{"x-user": "alice"}), 2, 3)
    assert rejection(add(port, bound, 2, 3, **{"x-user": "mallory"})) == NOT_FOUND
    assert rejection(add(port, bound, 2, 3)) == NOT_FOUND


@pytest.mark.xfail(
    strict=False,
    reason=(
        "filter bug: after an LDS update the old configuration's root contexts keep ticking "
        "until the old filter chain has drained (--drain-time-s, default 600 s) and win sweep "
        "steps with the old idle timeout, ending sessions the new, longer timeout keeps"
    ),
)
def test_a_longer_idle_timeout_applies_to_the_sweep_at_once(workdir, envoys, upstreams) -> None:
    bootstrap = render_bootstrap(
        upstream_port=upstreams.get("json").port, filter_config={"paths": ["/mcp"], "idle_timeout_seconds": 2}
    )
    lds = ListenerFile(bootstrap, workdir / "faults-lds-sweep")
    envoy = lds.envoy = start(envoys, bootstrap, workdir, "envoy-faults-lds-sweep")
    lds.apply({"paths": ["/mcp"], "idle_timeout_seconds": 60})
    session = open_session(envoy.url())
    # Idle for twice the old timeout (several sweep steps), far below the new one.
    opened = time.monotonic()
    wait_for("the sweep runs a few times", lambda: time.monotonic() > opened + 4.5, 10, interval=0.25)
    response = add(envoy.port, session, 1, 2)
    assert added(response, 1, 2), (response.status, response.body, envoy.stats())


# --------------------------------------------------------------------------- upstream faults


def test_upstream_down_answers_503_and_leaves_the_sessions_alone(envoy_for, upstreams) -> None:
    server = upstreams.new("json")
    config = {"paths": ["/mcp"], "max_sessions": 4}
    envoy = envoy_for(server, config)
    port = envoy.port
    sessions = [open_session(envoy.url()) for _ in range(3)]

    server.down()
    with expect_stats(envoy, {}):
        # Requests on a session: Envoy's own 503 for the failed connect; the session stays.
        for session in sessions:
            failed = add(port, session, 1, 2)
            assert failed.status == 503, (failed.status, failed.body)
            assert b"upstream connect error" in failed.body, failed.body
        # initialize: the same 503, no session ID, and the reserved slot is freed again: the
        # fourth slot (max_sessions 4) is taken five times over without a capacity refusal.
        for _ in range(5):
            failed = timed_request(port, "POST", initialize_body())
            assert failed.status == 503 and b"upstream connect error" in failed.body, (failed.status, failed.body)
            assert "mcp-session-id" not in failed.headers
    # Ending a session needs no upstream (it has no session of its own).
    with expect_stats(envoy, {"terminated": 1, "live": -1}):
        assert timed_request(port, "DELETE", session=sessions[2]).status == 204

    server.start()  # the same port again
    with expect_stats(envoy, {"created": 2, "live": 2, "rejected.unknown": 1, "rejected.capacity": 1}):
        for session in sessions[:2]:
            assert added(add(port, session, 3, 4), 3, 4)
        assert rejection(add(port, sessions[2], 3, 4)) == NOT_FOUND
        more = [open_session(envoy.url()) for _ in range(2)]
        refused = timed_request(port, "POST", initialize_body())
        assert rejection(refused) == CAPACITY, (refused.status, refused.body)
    assert all(added(add(port, session, 5, 6), 5, 6) for session in more)


def test_stateful_upstream_down_then_restarted_without_its_sessions(envoy_for, upstreams) -> None:
    """Down: 503, and the sessions stay (a 503 says nothing about the session). Back without its
    sessions: its 404 ends each of ours, and the clients re-initialize and carry on."""
    server = upstreams.new("stateful-json")
    envoy = envoy_for(server, {"paths": ["/mcp"]})
    port = envoy.port
    sessions = [open_session(envoy.url()) for _ in range(4)]
    assert all(added(add(port, session, 1, 1), 1, 1) for session in sessions)

    server.down()
    with expect_stats(envoy, {}):
        for session in sessions:
            failed = add(port, session, 1, 2)
            assert failed.status == 503 and b"upstream connect error" in failed.body, (failed.status, failed.body)

    server.start()  # a new process on the same port: the upstream's sessions are gone
    with expect_stats(envoy, {"terminated": 4, "live": -4}):
        for session in sessions:
            lost = add(port, session, 1, 2)
            assert lost.status == 404, (lost.status, lost.body)  # the upstream's own 404, passed on
            assert lost.headers.get("mcp-session-id") in (None, session), lost.headers
    with expect_stats(envoy, {"rejected.unknown": 4}):
        for session in sessions:
            assert rejection(add(port, session, 1, 2)) == NOT_FOUND  # now the filter's

    with expect_stats(envoy, {"created": 4, "live": 4}):
        again = [open_session(envoy.url()) for _ in sessions]
    assert all(added(add(port, session, 2, 2), 2, 2) for session in again)


def test_slow_upstream_times_out_and_the_session_stays_valid(workdir, envoys, upstreams) -> None:
    """A route timeout (1 s here; the reference config has none, for SSE) cuts a slow call with
    Envoy's 504; the session is untouched and works on the next request."""
    bootstrap = render_bootstrap(upstream_port=upstreams.get("json").port, filter_config={"paths": ["/mcp"]})
    route(bootstrap)["timeout"] = "1s"
    envoy = start(envoys, bootstrap, workdir, "envoy-faults-timeout")
    port = envoy.port
    session = open_session(envoy.url())
    with expect_stats(envoy, {}):
        slow = timed_request(port, "POST", tool_call("sleep", {"seconds": 3}), session=session)
    assert slow.status == 504 and slow.body == b"upstream request timeout", (slow.status, slow.body)
    assert slow.received - slow.sent < 2.5, "the route timeout did not cut the call"
    assert added(add(port, session, 4, 5), 4, 5)


class SilentUpstream:
    """A listening socket that never accepts: the kernel completes connects, nothing answers
    (a hung server). Requests through Envoy wait for the route timeout."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent_upstream() -> Iterator[SilentUpstream]:
    upstream = SilentUpstream()
    yield upstream
    upstream.close()


def test_initialize_timing_out_leaves_no_session(workdir, envoys, silent_upstream) -> None:
    """An initialize the upstream never answers: Envoy's 504 at the route timeout, no session
    ID, and its reserved slot is freed (max_sessions 1, refused twice for time, not capacity)."""
    bootstrap = render_bootstrap(upstream_port=silent_upstream.port, filter_config={"paths": ["/mcp"], "max_sessions": 1})
    route(bootstrap)["timeout"] = "1s"
    envoy = start(envoys, bootstrap, workdir, "envoy-faults-silent")
    with expect_stats(envoy, {}):
        for _ in range(2):
            hung = timed_request(envoy.port, "POST", initialize_body())
            assert hung.status == 504 and hung.body == b"upstream request timeout", (hung.status, hung.body)
            assert "mcp-session-id" not in hung.headers
