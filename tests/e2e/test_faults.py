"""Faults: configuration updates under load, an upstream that is down, slow or restarted, and
a VM that fails at runtime under FAIL_RELOAD.

In each case the clients must get a clear answer (the filter's JSON-RPC errors, or Envoy's own
503 / 504), and the filter's state must stay consistent: sessions that should survive work
with the same IDs, nothing is created by a failed `initialize`, and the stats add up.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import (
    PROTOCOL_VERSION,
    REPO,
    SESSION_ID_RE,
    TAG_HEADER,
    Envoy,
    HandlerServer,
    QuietHandler,
    Timed,
    expect_stats,
    initialize_body,
    make_listener_dynamic,
    new_tag,
    open_session,
    render_bootstrap,
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
    body = tool_call("add", {"a": a, "b": b}, request_id=a)
    return timed_request(port, "POST", body, session=session, headers=headers)


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


class KeptBusy:
    """A thread that uses one session every `every` seconds until the block ends; `uses` holds
    `first` (its use before) and every answer, with the client's clock."""

    def __init__(self, port: int, session: str, first: Timed, every: float) -> None:
        self.uses = [first]
        self.stop_event = threading.Event()

        def run() -> None:
            while not self.stop_event.is_set():
                self.uses.append(add(port, session, 1, 2))
                self.stop_event.wait(every)

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> KeptBusy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


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

    failures = load.failures()
    assert not failures, f"{len(failures)} failed requests under load:\n" + "\n".join(failures[:10])
    # The load ran through every update, not around them.
    counts = [load.count_between(a, b) for a, b in zip(marks, marks[1:])]
    assert all(n > 0 for n in counts), counts
    call = slow["call"]
    assert call.status == 200 and call.json()["result"]["structuredContent"] == {"result": "slept 1.5s"}, call.body
    checked = [add(port, s, 7, 8) for s in sessions]
    assert all(added(t, 7, 8) for t in checked), "a session did not survive the updates"

    stats = envoy.stats()
    assert (stats["created"], stats["live"], stats["terminated"], stats["expired"]) == (25, 25, 0, 0), stats
    assert (stats["rejected.capacity"], stats["rejected.method"], stats["rejected.unknown"]) == (4, 2, 0), stats

    # 4. A shorter idle timeout applies to the sessions that exist: the one kept busy stays,
    # the other 24, last used before this moment, are refused once idle for the new 3 s.
    # Not 1 s: under the old configuration the store's idle clock of a busy session may lag
    # its last use by up to the old touch interval (1 s), so a 1 s timeout could end the kept
    # session on its first use after the update (it did, about one run in four, before and
    # after the core crate split): a session expires at most one touch interval early.
    # The kept session is used every 0.2 s by a thread of its own from before the update is
    # written until after the others are probed, so however long Envoy takes to apply the
    # update (a loaded machine: seconds), its idle clock never nears the new timeout.
    new_idle = 3.0
    old_touch = 1.0  # min(1800 s / 64, 1 s): the old configuration's touch interval
    kept, rest = sessions[0], sessions[1:]
    rest_last_used = time.monotonic()
    with KeptBusy(port, kept, first=checked[0], every=0.2) as keeper:
        lds.apply({**config, "max_sessions": 25, "idle_timeout_seconds": int(new_idle)})
        time.sleep(max(0.0, rest_last_used + new_idle + 0.2 - time.monotonic()))
        gone = [add(port, session, 1, 2) for session in rest]
        after_the_probes = lambda: keeper.uses[-1].sent > gone[-1].received  # noqa: E731
        wait_for("a use of the kept session after the others were probed", after_the_probes, 10)
    # Probed more than 3.2 s after their last use and after the update was in force.
    assert all(rejection(t) == NOT_FOUND for t in gone), [(t.status, t.body) for t in gone]
    # Each use of the kept session came shortly after the previous one: idle for at most the
    # time between them plus the touch interval (the longer, old one), far below the timeout,
    # so each must have worked. Two uses 2 s apart would mean the machine stalled a thread that
    # only sleeps 0.2 s and sends one request: then nothing can be told, and the test says so.
    uses = keeper.uses
    for prev, t in zip(uses, uses[1:]):
        idle_at_most = t.received - prev.sent + old_touch
        assert idle_at_most < new_idle - 0.01, f"the keeper's uses {t.received - prev.sent:.3f}s apart: cannot tell"
        assert added(t, 1, 2), (t.status, t.body, f"idle at most {idle_at_most:.3f}s")
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


def test_a_longer_idle_timeout_applies_to_the_sweep_at_once(workdir, envoys, upstreams) -> None:
    bootstrap = render_bootstrap(
        upstream_port=upstreams.get("json").port, filter_config={"paths": ["/mcp"], "idle_timeout_seconds": 1}
    )
    lds = ListenerFile(bootstrap, workdir / "faults-lds-sweep")
    envoy = lds.envoy = start(envoys, bootstrap, workdir, "envoy-faults-lds-sweep")
    lds.apply({"paths": ["/mcp"], "idle_timeout_seconds": 60})
    session = open_session(envoy.url())
    # Idle for three times the old timeout (two sweep steps past it), far below the new one.
    opened = time.monotonic()
    wait_for("the sweep runs a few times", lambda: time.monotonic() > opened + 3, 10, interval=0.25)
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
    config = {"paths": ["/mcp"], "max_sessions": 1}
    bootstrap = render_bootstrap(upstream_port=silent_upstream.port, filter_config=config)
    route(bootstrap)["timeout"] = "1s"
    envoy = start(envoys, bootstrap, workdir, "envoy-faults-silent")
    with expect_stats(envoy, {}):
        for _ in range(2):
            hung = timed_request(envoy.port, "POST", initialize_body())
            assert hung.status == 504 and hung.body == b"upstream request timeout", (hung.status, hung.body)
            assert "mcp-session-id" not in hung.headers


# --------------------------------------------------------------------------- a VM failure

FAULT_TARGET_DIR = REPO / "target" / "fault-injection"
FAULT_WASM = FAULT_TARGET_DIR / "wasm32-wasip1" / "release" / "mcp_session_filter.wasm"
TRAP_HEADER = "x-mcp-session-filter-trap"
# The one error line a trap leaves in Envoy's log (allowed in these tests only).
TRAP_LOG_RE = re.compile(
    r"\[error\]\[wasm\] .*Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable$"
)
BUILD_TIMEOUT = 900


@pytest.fixture(scope="module")
def fault_injection_wasm() -> Path:
    """The test-only module (`--features fault-injection`: a request header traps the VM), in
    its own target directory so the released module is never replaced by it."""
    command = [
        "cargo", "build", "--locked", "--release", "--target", "wasm32-wasip1", "-p", "mcp-session-filter",
        "--features", "fault-injection", "--target-dir", str(FAULT_TARGET_DIR),
    ]  # fmt: skip
    try:
        built = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    except FileNotFoundError:
        pytest.fail("cargo is not on PATH: cannot build the fault-injection module", pytrace=False)
    if built.returncode != 0 or not FAULT_WASM.exists():
        pytest.fail(f"building the fault-injection module failed:\n{built.stderr[-4000:]}", pytrace=False)
    return FAULT_WASM


def fault_envoy(workdir: Path, wasm: Path, upstream_port: int, config: dict[str, Any], name: str) -> Envoy:
    """One worker, so "the worker that failed" is the one that serves every request. Outside
    the shared pool: its log holds the trap's error line, which `log_problems_but_the_trap`
    allows and nothing else."""
    bootstrap = render_bootstrap(upstream_port=upstream_port, filter_config=config, wasm_path=wasm)
    (listener,) = bootstrap["static_resources"]["listeners"]
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    (wasm_filter,) = [f for f in filters if f["name"] == "mcp_session"]
    assert wasm_filter["typed_config"]["config"]["failure_policy"] == "FAIL_RELOAD"  # as shipped
    return Envoy(bootstrap, workdir, name=name, concurrency=1).start()


def log_problems_but_the_trap(envoy: Envoy, traps: int) -> list[str]:
    problems = envoy.log_problems()
    expected = [line for line in problems if TRAP_LOG_RE.search(line)]
    assert len(expected) == traps, f"expected {traps} trap line(s) in the log:\n" + "\n".join(problems)
    return [line for line in problems if not TRAP_LOG_RE.search(line)]


def trap(port: int) -> Timed:
    return timed_request(port, "POST", rpc("ping", 99), session="0" * 40, headers={TRAP_HEADER: "1"})


def through_the_backoff(port: int, attempt, timeout: float = 10.0) -> tuple[list[Timed], Timed]:
    """After a failure Envoy refuses the worker's requests with an empty 503 until its reload
    backoff (1 s to 1.5 s) has passed, then loads a new VM for the next one. Sends `attempt()`
    every 50 ms until an answer is not that 503: (the 503s, the first other answer)."""
    refused: list[Timed] = []
    deadline = time.monotonic() + timeout
    while True:
        t = attempt()
        if not (t.status == 503 and t.body == b""):
            return refused, t
        refused.append(t)
        assert time.monotonic() < deadline, f"no new VM within {timeout}s"
        time.sleep(0.05)


def reload_stats(envoy: Envoy) -> dict[str, int]:
    stats = envoy.server_stats(r"wasm\.mcp_session\.vm_reload")
    return {name.rsplit(".", 1)[-1]: value for name, value in stats.items()}


@pytest.mark.wasm_only("a Wasm VM failure and FAIL_RELOAD; the native panic containment is in test_native.py")
@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_a_vm_failure_under_fail_reload_is_recovered_with_the_sessions(
    workdir, upstreams, fault_injection_wasm
) -> None:
    server = upstreams.get("json")
    envoy = fault_envoy(workdir, fault_injection_wasm, server.port, {"paths": ["/mcp"]}, "envoy-fail-reload")
    try:
        port = envoy.port
        sessions = [open_session(envoy.url()) for _ in range(5)]
        before = envoy.stats()

        # A call in flight on the worker when its VM fails.
        tag = new_tag()
        inflight: dict[str, Timed] = {}
        def slow_call() -> None:
            body = tool_call("sleep", {"seconds": 1})
            inflight["call"] = timed_request(port, "POST", body, session=sessions[0], headers={TAG_HEADER: tag})

        caller = threading.Thread(target=slow_call)
        caller.start()
        wait_for("the call reaches the upstream", lambda: server.requests(tag), 10)

        failed = trap(port)
        assert failed.status == 503, (failed.status, failed.body)
        caller.join(timeout=30)
        # What users lose: the in-flight request fails, although the upstream did the work.
        assert inflight["call"].status == 503, (inflight["call"].status, inflight["call"].body)
        assert [r["status"] for r in server.requests(tag)] == [200]

        trapped_at = time.monotonic()
        refused, recovered = through_the_backoff(port, lambda: add(port, sessions[1], 1, 2))
        assert added(recovered, 1, 2), (recovered.status, recovered.body)
        recovery = recovered.received - trapped_at
        assert reload_stats(envoy) == {
            "vm_reload": 0,
            "vm_reload_backoff": len(refused),
            "vm_reload_failure": 0,
            "vm_reload_success": 1,
        }, reload_stats(envoy)

        # The sessions were in shared data, not in the VM: same IDs, all valid, stats intact.
        assert all(added(add(port, session, 3, 4), 3, 4) for session in sessions)
        assert stats_changes(before, envoy.stats()) == {}
        with expect_stats(envoy, {"created": 1, "terminated": 1}):  # live: +1 - 1
            extra = open_session(envoy.url())
            assert timed_request(port, "DELETE", session=extra).status == 204
        assert not (problems := log_problems_but_the_trap(envoy, traps=1)), "\n".join(problems)
    finally:
        envoy.stop()
    assert not (problems := log_problems_but_the_trap(envoy, traps=1)), "\n".join(problems)
    print(f"recovered {recovery:.2f}s after the trap; {len(refused)} requests refused during the backoff")


class GatedUpstream(HandlerServer):
    """A minimal stateless MCP server (standard library) that holds every `initialize` until
    `release` is set: an initialize in flight for as long as a test needs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.initialize_arrived = threading.Event()
        gated = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                message = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if "id" not in message:
                    self._send(202, b"")
                    return
                result: dict[str, Any] = {}
                if message.get("method") == "initialize":
                    gated.initialize_arrived.set()
                    gated.release.wait(timeout=30)
                    result = {
                        "protocolVersion": PROTOCOL_VERSION,
                        "capabilities": {},
                        "serverInfo": {"name": "gated", "version": "1.0.0"},
                    }
                self._send(200, json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode())

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # Envoy gave up on this request

        super().__init__(Handler)

    def close(self) -> None:
        self.release.set()
        super().close()


@pytest.fixture
def gated_upstream() -> Iterator[GatedUpstream]:
    upstream = GatedUpstream()
    yield upstream
    upstream.close()


@pytest.mark.wasm_only("a Wasm VM failure and FAIL_RELOAD; the native panic containment is in test_native.py")
@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_an_initialize_in_flight_when_the_vm_fails_holds_its_slot_until_it_expires(
    workdir, gated_upstream, fault_injection_wasm
) -> None:
    """What else a VM failure costs: an `initialize` in flight on that worker fails (503), and
    the slot it had reserved stays taken until it expires like an idle session (the new VM
    knows nothing of it), then the sweep frees it. With max_sessions 1 that is visible."""
    idle = 4
    config = {"paths": ["/mcp"], "max_sessions": 1, "idle_timeout_seconds": idle}
    envoy = fault_envoy(workdir, fault_injection_wasm, gated_upstream.port, config, "envoy-fail-reload-pending")
    try:
        port = envoy.port
        pending: dict[str, Timed] = {}

        def initialize_in_flight() -> None:
            pending["init"] = timed_request(port, "POST", initialize_body())

        opener = threading.Thread(target=initialize_in_flight)
        opener.start()
        wait_for("the initialize reaches the upstream", gated_upstream.initialize_arrived.is_set, 10)
        assert trap(port).status == 503
        gated_upstream.release.set()
        opener.join(timeout=30)
        lost = pending["init"]
        assert lost.status == 503 and "mcp-session-id" not in lost.headers, (lost.status, lost.headers, lost.body)

        # The new VM refuses for capacity while the lost reservation is younger than the idle
        # timeout (certainly so when this answer came less than `idle` after it was made).
        _, answer = through_the_backoff(port, lambda: timed_request(port, "POST", initialize_body()))
        if answer.received - lost.sent < idle - 0.01:
            assert rejection(answer) == CAPACITY, (answer.status, answer.body)
        if rejection(answer) == CAPACITY:
            # Then the sweep frees it and the slot serves a new session.
            freed = lambda: "1 stale initializes freed" in envoy.log_text()  # noqa: E731
            wait_for("the sweep frees the stale reservation", freed, idle + 10)
            assert SESSION_ID_RE.match(open_session(envoy.url()))
        else:
            # A machine so slow that the reservation had already expired: the new initialize
            # took its slot over, as an expired one may be.
            assert answer.status == 200, (answer.status, answer.body)
            assert SESSION_ID_RE.match(answer.headers.get("mcp-session-id", "")), answer.headers
        stats = envoy.stats()
        assert (stats["created"], stats["live"]) == (1, 1), stats
        assert not (problems := log_problems_but_the_trap(envoy, traps=1)), "\n".join(problems)
    finally:
        envoy.stop()
