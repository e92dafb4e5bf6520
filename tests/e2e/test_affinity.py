"""Session affinity: every request of a session reaches the upstream replica that answered its
initialize (`affinity_header`, with Envoy's `override_host` load balancing policy).

Two stateful demo servers (each mints and checks its own session IDs: a request that lands on
the other one gets 404 from it, and the filter then ends the session) behind one filtering
Envoy, as the shipped `envoy/envoy.affinity.yaml` sets it up: only the ports, the wasm path and,
for the control, the plugin configuration are changed. Which replica a request reached is read
from the replicas' own request records (by the test's `x-test-tag`), and which one answered an
initialize from its result's `serverInfo.name`.

- Control: the same Envoy without `affinity_header` breaks most sessions (round robin sends
  about every other request to the wrong replica), so the tests below would see it.
- Many sessions, each with many requests and a DELETE: no 404, each on its own replica.
- A client's own `x-mcp-upstream-host` (naming the other replica, sent once or twice) is
  removed: the requests still reach the replica that answered the initialize.
- A client's copy on the initialize is removed too: the initialize goes round robin.
- The Python SDK client (handshake era, GET stream, DELETE) works through it.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import (
    ACCEPT_BOTH,
    INITIALIZED,
    MCP_PATH,
    PROTOCOL_VERSION,
    REPO,
    SESSION_ID_RE,
    TAG_HEADER,
    WASM,
    for_artifact,
    WASM_FILTER_NAME,
    Envoy,
    McpServer,
    initialize_body,
    new_tag,
    tool_call,
)
from sdk_client import run_sdk_session

AFFINITY_CONFIG = REPO / "envoy" / "envoy.affinity.yaml"
AFFINITY_HEADER = "x-mcp-upstream-host"

# Enough that round robin without affinity breaks nearly every session, and that both replicas
# answer initializes.
SESSIONS = 16
CALLS_PER_SESSION = 10


# --------------------------------------------------------------------------- setup


def plugin_config(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    (wasm,) = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == WASM_FILTER_NAME]
    return wasm["typed_config"]["config"]


def render_affinity(replicas: Sequence[McpServer], *, without_affinity: bool = False) -> dict[str, Any]:
    """envoy/envoy.affinity.yaml with this run's ports (listener and admin: any free port), the
    replicas as the cluster's endpoints and the built wasm; `without_affinity` drops the
    `affinity_header` key and nothing else (the control)."""
    bootstrap = yaml.safe_load(AFFINITY_CONFIG.read_text())
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    (listener,) = bootstrap["static_resources"]["listeners"]
    listener["address"]["socket_address"]["port_value"] = 0
    plugin = plugin_config(bootstrap)
    plugin["vm_config"]["code"]["local"]["filename"] = str(WASM)
    configuration = json.loads(plugin["configuration"]["value"])
    assert configuration["affinity_header"] == AFFINITY_HEADER, configuration
    if without_affinity:
        del configuration["affinity_header"]
        plugin["configuration"]["value"] = json.dumps(configuration)

    (cluster,) = bootstrap["static_resources"]["clusters"]
    (policy,) = cluster["load_balancing_policy"]["policies"]
    (source,) = policy["typed_extension_config"]["typed_config"]["override_host_sources"]
    assert source == {"header": AFFINITY_HEADER}, source
    (locality,) = cluster["load_assignment"]["endpoints"]
    endpoints = locality["lb_endpoints"]
    assert len(endpoints) == len(replicas), endpoints
    for endpoint, replica in zip(endpoints, replicas, strict=True):
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == "127.0.0.1", address
        address["port_value"] = replica.port
    return for_artifact(bootstrap)


@dataclass
class Replicas:
    """Two stateful demo servers, each answering initialize with its own name."""

    servers: list[McpServer]

    def by_name(self, name: str) -> McpServer:
        (server,) = [s for s in self.servers if s.name == name]
        return server

    def other(self, name: str) -> McpServer:
        (server,) = [s for s in self.servers if s.name != name]
        return server

    def reached_by(self, tag: str) -> dict[str, list[dict[str, Any]]]:
        """Replica name -> the requests with this tag it saw (replicas that saw none left out)."""
        out = {s.name: s.requests(tag) for s in self.servers}
        return {name: seen for name, seen in out.items() if seen}


@pytest.fixture(scope="module")
def replica_pairs(workdir: Path) -> Iterator[Callable[[bool], Replicas]]:
    """replica_pairs(sse) -> two stateful demo servers (JSON or SSE answers), started on first
    use, stopped at the end of the module."""
    pairs: dict[bool, Replicas] = {}

    def get(sse: bool) -> Replicas:
        if sse not in pairs:
            kind = "sse" if sse else "json"
            pairs[sse] = Replicas(
                [McpServer(workdir, stateful=True, sse=sse, name=f"replica-{r}-{kind}") for r in "ab"]
            )
            for server in pairs[sse].servers:
                server.start()
        return pairs[sse]

    yield get
    for pair in pairs.values():
        for server in pair.servers:
            server.stop()


@pytest.fixture(scope="module")
def affinity_envoys(envoys, replica_pairs) -> Callable[..., tuple[Envoy, Replicas]]:
    """affinity_envoys(sse=False, without_affinity=False) -> (Envoy, its replicas), one Envoy per
    combination for the module (its log is checked after every test, as any pool Envoy's)."""
    started: dict[tuple[bool, bool], Envoy] = {}

    def get(sse: bool = False, without_affinity: bool = False) -> tuple[Envoy, Replicas]:
        replicas = replica_pairs(sse)
        key = (sse, without_affinity)
        if key not in started:
            bootstrap = render_affinity(replicas.servers, without_affinity=without_affinity)
            name = f"affinity-{'sse' if sse else 'json'}{'-control' if without_affinity else ''}"
            started[key] = envoys.start(bootstrap, name)
        return started[key], replicas

    return get


# --------------------------------------------------------------------------- requests


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def message(self) -> dict[str, Any]:
        """The JSON-RPC response of a JSON or SSE body."""
        text = self.body.decode()
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            for line in text.replace("\r\n", "\n").split("\n"):
                if line.startswith("data:") and '"id"' in line:
                    return json.loads(line[5:].strip())
            raise AssertionError(f"no JSON-RPC response in {text!r}")
        return json.loads(text)

    def __str__(self) -> str:
        return f"{self.status} {self.headers} {self.body[:500]!r}"


def send(
    port: int,
    method: str,
    body: Any = None,
    *,
    session: str | None = None,
    tag: str,
    extra: Sequence[tuple[str, str]] = (),
) -> Answer:
    """One request on a fresh connection (spread over Envoy's workers), with the test's tag and
    `extra` headers sent as given, repeated names included."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.putrequest(method, MCP_PATH, skip_accept_encoding=True)
        headers = [("accept", ACCEPT_BOTH), ("connection", "close"), (TAG_HEADER, tag), *extra]
        if session is not None:
            headers += [("mcp-session-id", session), ("mcp-protocol-version", PROTOCOL_VERSION)]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            headers += [("content-type", "application/json")]
        headers += [("content-length", str(len(payload)))]
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(payload or None)
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


@dataclass
class Session:
    """One client session: its tag, the filter's ID, the replica that answered its initialize,
    and every answer it got, in order."""

    tag: str
    id: str = ""
    replica: str = ""
    answers: list[tuple[str, Answer]] = field(default_factory=list)

    def failures(self) -> list[str]:
        return [f"{what}: {answer}" for what, answer in self.answers if not 200 <= answer.status < 300]


def open_session(port: int, extra: Sequence[tuple[str, str]] = ()) -> Session:
    session = Session(new_tag())
    answer = send(port, "POST", initialize_body(), tag=session.tag, extra=extra)
    session.answers.append(("initialize", answer))
    assert answer.status == 200, answer
    session.id = answer.headers.get("mcp-session-id", "")
    assert SESSION_ID_RE.match(session.id), answer
    session.replica = answer.message()["result"]["serverInfo"]["name"]
    return session


def use_session(
    port: int,
    session: Session,
    extra: Sequence[tuple[str, str]] = (),
    *,
    calls: int = CALLS_PER_SESSION,
    stop_at_failure: bool = False,
) -> Session:
    """notifications/initialized, `calls` tool calls, DELETE: each with `extra` headers."""
    steps: list[tuple[str, str, Any]] = [("initialized", "POST", INITIALIZED)]
    steps += [(f"call {i}", "POST", tool_call("add", {"a": i, "b": 1}, request_id=i + 2)) for i in range(calls)]
    steps += [("delete", "DELETE", None)]
    for what, method, body in steps:
        answer = send(port, method, body, session=session.id, tag=session.tag, extra=extra)
        session.answers.append((what, answer))
        if stop_at_failure and not 200 <= answer.status < 300:
            break
        if what.startswith("call") and answer.status == 200:
            i = int(what.split()[1])
            assert answer.message()["result"]["structuredContent"] == {"result": i + 1}, answer
    return session


def parallel(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 4) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def assert_pinned(replicas: Replicas, sessions: Sequence[Session]) -> None:
    """Every request of each session reached the replica that answered its initialize, and the
    other replica saw none of them; both replicas answered some initializes (round robin), so
    the pinning was put to the test."""
    for session in sessions:
        reached = replicas.reached_by(session.tag)
        assert set(reached) == {session.replica}, (session.replica, {n: len(r) for n, r in reached.items()})
        statuses = [r["status"] for r in reached[session.replica]]
        assert all(200 <= s < 300 for s in statuses), (session.replica, statuses)
        assert len(statuses) == len(session.answers), (len(statuses), len(session.answers))
    answered = Counter(s.replica for s in sessions)
    assert set(answered) == {s.name for s in replicas.servers}, answered


# --------------------------------------------------------------------------- the tests


def test_control_without_affinity_round_robin_breaks_stateful_sessions(affinity_envoys) -> None:
    """The same Envoy and replicas without `affinity_header`: most sessions meet the other
    replica's 404 within a few requests. This is what the tests below must not see."""
    envoy, replicas = affinity_envoys(without_affinity=True)

    def run(_: int) -> Session:
        return use_session(envoy.port, open_session(envoy.port), stop_at_failure=True)

    sessions = parallel(run, range(SESSIONS))
    broken = [s for s in sessions if s.failures()]
    assert len(broken) >= SESSIONS // 2, [s.failures() for s in sessions]
    # The first failure of each is the other replica's own 404 for a session it never minted.
    for session in broken:
        other = replicas.other(session.replica)
        assert any(r["status"] == 404 for r in other.requests(session.tag)), session.failures()


def test_every_request_of_a_session_reaches_the_replica_that_answered_its_initialize(affinity_envoys) -> None:
    envoy, replicas = affinity_envoys()
    before = envoy.stats()

    sessions = parallel(lambda _: use_session(envoy.port, open_session(envoy.port)), range(SESSIONS))

    assert [f for s in sessions for f in s.failures()] == []
    assert_pinned(replicas, sessions)
    # Each DELETE reached the session's replica (with that replica's own ID) and ended both.
    for session in sessions:
        deletes = [r for r in replicas.by_name(session.replica).requests(session.tag) if r["method"] == "DELETE"]
        assert [r["status"] for r in deletes] == [200], deletes
    after = envoy.stats()
    assert after.get("created", 0) - before.get("created", 0) == SESSIONS, (before, after)
    assert after.get("terminated", 0) - before.get("terminated", 0) == SESSIONS, (before, after)
    assert after.get("rejected.unknown", 0) == before.get("rejected.unknown", 0), (before, after)


@pytest.mark.parametrize("copies", [1, 2], ids=["one-copy", "two-copies"])
def test_a_client_copy_of_the_header_naming_the_other_replica_is_ignored(affinity_envoys, copies: int) -> None:
    """The client names the other replica (twice: the other replica and a bogus host) on every
    request after the initialize: the filter removes it and sets its own."""
    envoy, replicas = affinity_envoys()
    sessions = [open_session(envoy.port) for _ in range(SESSIONS // 2)]

    def run(session: Session) -> Session:
        other = replicas.other(session.replica)
        spoof = [(AFFINITY_HEADER, f"127.0.0.1:{other.port}"), (AFFINITY_HEADER, "127.0.0.1:1")][:copies]
        return use_session(envoy.port, session, spoof, calls=4)

    sessions = parallel(run, sessions)
    assert [f for s in sessions for f in s.failures()] == []
    assert_pinned(replicas, sessions)


def test_a_client_copy_of_the_header_on_initialize_is_removed(affinity_envoys) -> None:
    """Every initialize names replica b: removed, so they go round robin (a answers some), and
    each session then stays on whichever replica answered."""
    envoy, replicas = affinity_envoys()
    b = replicas.servers[1]
    spoof = [(AFFINITY_HEADER, f"127.0.0.1:{b.port}")]

    sessions = [open_session(envoy.port, spoof) for _ in range(SESSIONS // 2)]
    answered = Counter(s.replica for s in sessions)
    assert answered[replicas.servers[0].name] > 0, f"every initialize reached {b.name}: the client's copy was honoured"

    sessions = parallel(lambda s: use_session(envoy.port, s, calls=3), sessions)
    assert [f for s in sessions for f in s.failures()] == []
    assert_pinned(replicas, sessions)


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_python_sdk_client_sessions_stay_on_their_replica(affinity_envoys, sse: bool) -> None:
    """The official client (handshake era: initialize, notifications/initialized, the GET
    stream, tools, DELETE on close) through the affinity Envoy, a few sessions."""
    envoy, replicas = affinity_envoys(sse=sse)
    tags = [new_tag() for _ in range(6)]
    for tag in tags:
        assert run_sdk_session(envoy.url(), tag, "legacy") == PROTOCOL_VERSION

    used = Counter()
    for tag in tags:
        reached = replicas.reached_by(tag)
        assert len(reached) == 1, {name: [(r["method"], r["status"]) for r in seen] for name, seen in reached.items()}
        ((name, seen),) = reached.items()
        used[name] += 1
        methods = Counter(r["method"] for r in seen)
        assert methods["POST"] >= 4 and methods["DELETE"] == 1, methods
        # The client's DELETE may race its own GET stream, which may then meet a 404; nothing
        # else may.
        assert all(200 <= r["status"] < 300 for r in seen if r["method"] != "GET"), [
            (r["method"], r["status"]) for r in seen
        ]
    assert set(used) == {s.name for s in replicas.servers}, used
