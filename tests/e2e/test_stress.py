"""Races and state under load: Envoy with 4 workers, hundreds of concurrent clients.

Every request goes on a fresh connection, so a session's requests land on any worker and
each worker's VM reads and writes the same slots at once. Afterwards the filter's stats must
add up exactly (created == terminated + expired, `live` back to 0) and every ended session
ID must answer 404, including while its slot holds a newer session.

The expiry half runs with a 2 s idle timeout and judges each answer from the times the
client measured (see `Oracle`): a request is required to succeed only when the session was
certainly used less than the idle timeout before, and required to fail only when it was
certainly idle longer. A loaded machine widens the uncertain band; it never makes a wrong
answer pass as right.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from harness import (
    INITIALIZED,
    SESSION_ID_RE,
    Envoy,
    initialize_body,
    render_bootstrap,
    rpc,
    timed_request,
    tool_call,
)

WORKERS = 4
CLIENTS = 200
CALLS_PER_SESSION = 3
REUSE_SESSIONS = 50

IDLE_S = 2.0
# The filter rewrites a session's last-seen time only when it is older than this
# (min(idle / 64, 1 s)): a session may expire this much early (docs/DESIGN.md, Touch).
TOUCH_INTERVAL_S = min(IDLE_S / 64, 1.0)
# Envoy's clock (wall, ms) against ours (monotonic): truncation and rate differences.
CLOCK_SLACK_S = 0.01


# --------------------------------------------------------------------------- a lean client


@dataclass
class Exchange:
    """One request and its answer, with the client's clock around it."""

    what: str  # initialize, initialized, call, delete, probe
    status: int
    body: bytes
    headers: dict[str, str]
    sent: float  # monotonic, just before connecting
    received: float  # monotonic, after the whole response was read
    expect_result: Any = None  # for calls: the tool's structured result

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(
    port: int,
    what: str,
    method: str,
    body: Any = None,
    session: str | None = None,
    expect_result: Any = None,
) -> Exchange:
    """One request on a new connection (http.client: cheap enough for hundreds of threads)."""
    t = timed_request(port, method, body, session=session, timeout=30)
    return Exchange(what, t.status, t.body, t.headers, t.sent, t.received, expect_result)


def is_not_found(x: Exchange) -> bool:
    """The filter's 404: a JSON-RPC error -32001 (never the upstream's)."""
    if x.status != 404:
        return False
    try:
        body = x.json()
    except ValueError:
        return False
    return body.get("jsonrpc") == "2.0" and body.get("error", {}).get("code") == -32001 and body.get("id") is None


def is_success(x: Exchange) -> bool:
    """The right answer for a session that is valid."""
    if x.what == "initialized":
        return x.status == 202
    if x.what == "delete":
        return x.status == 204 and not x.body
    if x.what in ("call", "probe"):
        if x.status != 200:
            return False
        body = x.json()
        return body.get("result", {}).get("structuredContent") == {"result": x.expect_result}
    raise AssertionError(x.what)


def show(x: Exchange) -> str:
    return f"{x.what}: {x.status} {x.body[:200]!r} (sent {x.sent:.3f}, received {x.received:.3f})"


@dataclass
class Session:
    """A client's session: its ID and every exchange on it, in order."""

    opened: Exchange
    id: str
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def slot(self) -> str:
        return self.id[:8]


class Client:
    """One simulated MCP client (a thread): opens sessions and records what it saw."""

    def __init__(self, port: int, number: int) -> None:
        self.port = port
        self.number = number
        self.sessions: list[Session] = []
        self.problems: list[str] = []
        self.calls = 0

    def open(self) -> Session | None:
        x = exchange(self.port, "initialize", "POST", initialize_body(request_id=self.number))
        session_id = x.headers.get("mcp-session-id", "")
        ok = x.status == 200 and SESSION_ID_RE.match(session_id) is not None
        if ok:
            body = x.json()
            ok = body.get("id") == self.number and "serverInfo" in body.get("result", {})
        if not ok:
            self.problems.append(f"client {self.number}: initialize failed: {show(x)}")
            return None
        session = Session(x, session_id)
        self.sessions.append(session)
        return session

    def initialized(self, session: Session) -> Exchange:
        return self._on(session, exchange(self.port, "initialized", "POST", INITIALIZED, session.id))

    def call(self, session: Session) -> Exchange:
        self.calls += 1
        a, b = self.number, self.calls
        body = tool_call("add", {"a": a, "b": b}, request_id=self.calls)
        return self._on(session, exchange(self.port, "call", "POST", body, session.id, expect_result=a + b))

    def delete(self, session: Session) -> Exchange:
        return self._on(session, exchange(self.port, "delete", "DELETE", None, session.id))

    def _on(self, session: Session, x: Exchange) -> Exchange:
        session.exchanges.append(x)
        return x


def run_clients(count: int, script: Callable[[Client], None], port: int) -> list[Client]:
    """`count` clients in threads, all released at once by a barrier."""
    clients = [Client(port, n) for n in range(1, count + 1)]
    barrier = threading.Barrier(count)

    def run(client: Client) -> None:
        barrier.wait(timeout=60)
        try:
            script(client)
        except Exception as e:  # noqa: BLE001 (a transport error is a finding, reported below)
            client.problems.append(f"client {client.number}: {type(e).__name__}: {e}")

    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(run, clients))
    return clients


def parallel(fn: Callable[[Any], Any], items: list[Any], workers: int = 50) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------- Envoy


def start_envoy(workdir, envoys, upstream, config: dict[str, Any], name: str) -> Envoy:
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config=config)
    envoy = Envoy(bootstrap, workdir, name=name, concurrency=WORKERS).start()
    envoys.all.append(envoy)  # stopped at the end of the run; its log is checked after the test
    return envoy


def wait_for_live_zero(envoy: Envoy, timeout: float) -> dict[str, int]:
    """Poll the stats until the `live` gauge is 0 (the sweep catching up), with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        stats = envoy.stats()
        if stats.get("live") == 0:
            return stats
        assert time.monotonic() < deadline, f"live did not come back to 0 within {timeout:.0f}s: {stats}"
        time.sleep(0.1)


def recheck(port: int, sessions: list[Session]) -> list[str]:
    """Every ended session ID, once more on a fresh connection: must be the filter's 404."""

    def probe(session: Session) -> str | None:
        x = exchange(port, "probe", "POST", rpc("tools/list", 1), session.id)
        return None if is_not_found(x) else f"ended session {session.slot}: {show(x)}"

    return [p for p in parallel(probe, sessions) if p]


# --------------------------------------------------------------------------- churn


def test_hundreds_of_clients_open_use_and_delete_sessions_on_four_workers(workdir, envoys, upstreams) -> None:
    envoy = start_envoy(workdir, envoys, upstreams.get("json"), {"paths": ["/mcp"]}, "envoy-stress-churn")
    connections_before = envoy.worker_connections()

    def script(client: Client) -> None:
        session = client.open()
        if session is None:
            return
        if not is_success(client.initialized(session)):
            client.problems.append(f"client {client.number}: {show(session.exchanges[-1])}")
            return
        for _ in range(CALLS_PER_SESSION):
            x = client.call(session)
            if not is_success(x):
                client.problems.append(f"client {client.number}: {show(x)}")
                return
        deleted = client.delete(session)
        if not is_success(deleted):
            client.problems.append(f"client {client.number}: {show(deleted)}")
            return
        # At once, while other clients create sessions that may take this very slot.
        after = client.call(session)
        if not is_not_found(after):
            client.problems.append(f"client {client.number}: used after DELETE: {show(after)}")

    started = time.monotonic()
    clients = run_clients(CLIENTS, script, envoy.port)
    elapsed = time.monotonic() - started
    problems = [p for c in clients for p in c.problems]
    assert not problems, f"{len(problems)} wrong answers:\n" + "\n".join(problems[:20])

    sessions = [s for c in clients for s in c.sessions]
    assert len(sessions) == CLIENTS
    assert len({s.id for s in sessions}) == CLIENTS, "two initializes got the same session ID"
    connections = envoy.worker_connections()
    busy = [w for w, n in connections.items() if n > connections_before.get(w, 0)]
    assert len(busy) == WORKERS, f"not every worker served: {connections}"

    stats = envoy.stats()
    assert (stats["created"], stats["terminated"], stats["expired"], stats["live"]) == (CLIENTS, CLIENTS, 0, 0), stats
    assert stats["rejected.unknown"] == CLIENTS, stats

    # Slots are reused: new sessions take the freed slots, and every old ID for those slots
    # (same slot, other secret) must still be refused, while the new sessions keep working.
    def open_new(number: int) -> Session | None:
        client = Client(envoy.port, 1000 + number)
        session = client.open()
        assert session is not None, client.problems
        assert is_success(client.initialized(session)), show(session.exchanges[-1])
        return session

    fresh = parallel(open_new, list(range(REUSE_SESSIONS)))
    old_slots = {s.slot for s in sessions}
    # Most take a freed slot. Not necessarily all: a worker pops freed slots from the shared
    # hint in batches, another worker's probe may claim them first, and after 4 such stale
    # entries the initialize takes a fresh slot of its worker's pool instead (docs/DESIGN.md,
    # "Claim a slot"); how often depends on how the workers interleave, which a loaded machine
    # changes (one run: 49 of 50 reused). The old IDs are then rechecked whatever their slot.
    reused = [s for s in fresh if s.slot in old_slots]
    assert len(reused) > REUSE_SESSIONS // 2, f"only {len(reused)} of {REUSE_SESSIONS} new sessions reused a slot"
    assert not (problems := recheck(envoy.port, sessions)), "\n".join(problems[:20])

    def use_and_delete(session: Session) -> list[str]:
        client = Client(envoy.port, int(session.opened.json()["id"]))
        out = [show(x) for x in (client.call(session), client.delete(session)) if not is_success(x)]
        return out

    assert not (problems := [p for ps in parallel(use_and_delete, fresh) for p in ps]), problems
    assert not (problems := recheck(envoy.port, fresh)), problems

    total = CLIENTS + REUSE_SESSIONS
    stats = envoy.stats()
    assert stats["created"] == stats["terminated"] + stats["expired"] == total, stats
    assert stats["live"] == 0, stats
    assert stats["rejected.unknown"] == CLIENTS + CLIENTS + REUSE_SESSIONS, stats
    print(
        f"{CLIENTS} clients x {CALLS_PER_SESSION + 4} requests in {elapsed:.1f}s; workers {connections}; "
        f"{len(reused)} of {REUSE_SESSIONS} new sessions in freed slots"
    )


# --------------------------------------------------------------------------- expiry under load


class Oracle:
    """What a request on a session may answer, from the client's clock.

    The filter looks a session up at some instant between a request's `sent` and `received`,
    and its last-seen time is at most TOUCH_INTERVAL_S older than the lookup of the previous
    successful request. So, with `prev` the previous exchange (which succeeded):

    - idle for certain at least `x.sent - prev.received`: at or past the timeout, 404 is due;
    - idle at most `x.received - prev.sent + TOUCH_INTERVAL_S`: below the timeout, it must work.

    In between either answer is right. After a 404 or a DELETE, only 404 is right.
    """

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.definite_success = 0
        self.definite_expired = 0
        self.uncertain = 0
        self.served_for_certain: set[int] = set()  # id() of the exchanges judged definite successes

    def counts(self) -> dict[str, int]:
        return {
            "definite_success": self.definite_success,
            "definite_expired": self.definite_expired,
            "uncertain": self.uncertain,
        }

    def judge(self, session: Session) -> list[str]:
        problems = []
        prev = session.opened
        ended = False
        for x in session.exchanges:
            where = f"session {session.slot}: {show(x)}"
            if ended:
                if not is_not_found(x):
                    problems.append(f"used after it ended: {where}")
                continue
            surely_idle = x.sent - prev.received
            at_most_idle = x.received - prev.sent + TOUCH_INTERVAL_S
            if surely_idle >= self.idle + CLOCK_SLACK_S:
                self.definite_expired += 1
                if not is_not_found(x):
                    problems.append(f"valid {surely_idle:.3f}s after its last use: {where}")
            elif at_most_idle < self.idle - CLOCK_SLACK_S:
                self.definite_success += 1
                self.served_for_certain.add(id(x))
                if not is_success(x):
                    problems.append(f"refused at most {at_most_idle:.3f}s after its last use: {where}")
            else:
                self.uncertain += 1
                if not (is_success(x) or is_not_found(x)):
                    problems.append(f"wrong answer: {where}")
            if is_not_found(x) or (x.what == "delete" and is_success(x)):
                ended = True
            prev = x
        return problems


def test_sessions_expire_while_in_use_and_only_when_idle(workdir, envoys, upstreams) -> None:
    config = {"paths": ["/mcp"], "idle_timeout_seconds": int(IDLE_S)}
    envoy = start_envoy(workdir, envoys, upstreams.get("json"), config, "envoy-stress-expiry")
    keepers, sharers, pausers, churners = 30, 10, 30, 20
    run_for = 1.5 * IDLE_S  # well past the idle timeout

    def keeper(client: Client) -> None:
        """Uses its session every 0.3 s for longer than the idle timeout, then deletes it."""
        session = client.open()
        if session is None:
            return
        client.initialized(session)
        end = time.monotonic() + run_for
        while time.monotonic() < end:
            time.sleep(0.3)
            client.call(session)
        client.delete(session)

    def pauser(client: Client) -> None:
        """Uses its session, falls silent past the idle timeout, comes back."""
        session = client.open()
        if session is None:
            return
        client.initialized(session)
        last = client.call(session)
        time.sleep(max(0.0, last.received + IDLE_S + 0.3 - time.monotonic()))
        client.call(session)
        client.call(session)

    def churner(client: Client) -> None:
        """Opens short sessions back to back; deletes every other one and abandons the rest,
        whose slots expire and are taken again by new sessions."""
        end = time.monotonic() + run_for
        n = 0
        while time.monotonic() < end:
            session = client.open()
            if session is None:
                return
            client.initialized(session)
            client.call(session)
            if n % 2 == 0:
                client.delete(session)
            n += 1

    # One session used by many clients at once: every worker races to touch the same slot.
    opener = Client(envoy.port, 0)
    shared = opener.open()
    assert shared is not None and is_success(opener.initialized(shared)), opener.problems

    def sharer(client: Client) -> None:
        """Uses the shared session every 0.3 s, as the keepers do; it is deleted afterwards."""
        session = Session(shared.exchanges[-1], shared.id)
        client.sessions.append(session)
        end = time.monotonic() + run_for
        while time.monotonic() < end:
            time.sleep(0.3)
            client.call(session)

    roles = [keeper] * keepers + [sharer] * sharers + [pauser] * pausers + [churner] * churners

    def script(client: Client) -> None:
        roles[client.number - 1](client)

    clients = run_clients(len(roles), script, envoy.port)
    problems = [p for c in clients for p in c.problems]
    assert not problems, "\n".join(problems[:20])
    # Deleted by one more client; judged against the sharers' last use, not the opener's.
    uses = [x for c in clients for s in c.sessions if s.id == shared.id for x in s.exchanges]
    last_use = max(uses, key=lambda x: x.received)
    closer = Client(envoy.port, len(roles) + 1)
    closing = Session(last_use, shared.id)
    closer.sessions.append(closing)
    assert is_success(closer.delete(closing)), show(closing.exchanges[-1])

    oracle = Oracle(IDLE_S)
    sessions = [s for c in [opener, *clients, closer] for s in c.sessions]
    problems = [p for s in sessions for p in oracle.judge(s)]
    assert not problems, f"{len(problems)} wrong answers:\n" + "\n".join(problems[:20])
    opened = [s for s in sessions if s.opened.what == "initialize"]
    assert len({s.id for s in opened}) == len(opened), "two initializes got the same session ID"
    # The pausers' returns are certain expiries (each waits IDLE_S + 0.3 s from its last answer,
    # whatever the load). And every keeper and sharer proved, at least once, that use keeps a
    # session: a call that began certainly more than the idle timeout after the session was
    # opened, and was served when it had certainly been used less than the timeout before
    # (a machine too loaded to tell is a failure to test, not a pass). Not "half of all their
    # calls certain", as before: each call is certain only if it and the one before it took
    # less than ~1.7 s in all, which ~90 threads on a loaded 2-core machine need not keep for
    # half of them; one such call in each client's last second is what a loaded machine keeps.
    assert oracle.definite_expired >= pausers, oracle.counts()

    def kept_alive_by_use(session: Session) -> bool:
        return any(
            id(x) in oracle.served_for_certain and x.sent - session.opened.received >= IDLE_S + CLOCK_SLACK_S
            for x in session.exchanges
        )

    steady = [s for c in clients[: keepers + sharers] for s in c.sessions]
    assert len(steady) == keepers + sharers, len(steady)
    unproven = [s.slot for s in steady if not kept_alive_by_use(s)]
    assert not unproven, f"never certainly served past the idle timeout: {unproven}; {oracle.counts()}"

    # Every session not deleted ends by expiry: the sweep (or a new session taking its slot)
    # reclaims it within the timeout plus a sweep period or two.
    stats = wait_for_live_zero(envoy, timeout=IDLE_S + 10)
    deleted = sum(1 for s in sessions for x in s.exchanges if x.what == "delete" and is_success(x))
    refused = sum(1 for s in sessions for x in s.exchanges if is_not_found(x))
    assert stats["created"] == len(opened), stats
    assert stats["terminated"] == deleted, stats
    assert stats["expired"] == len(opened) - deleted, stats
    assert stats["rejected.unknown"] == refused, stats

    assert not (problems := recheck(envoy.port, opened)), "\n".join(problems[:20])
    assert envoy.stats()["rejected.unknown"] == refused + len(opened)
    print(
        f"{len(opened)} sessions, {deleted} deleted, {len(opened) - deleted} expired; "
        f"oracle: {oracle.counts()}"
    )
