"""Soak: continuous session churn through Envoy; its heap must stay flat once the live set is
steady. `make soak` runs it (scripts/soak.sh); the figures are printed as it goes.

    .venv/bin/python tests/soak/soak.py            # SOAK_SECONDS (default 180)

Envoy runs with 2 workers and the filter with a 2 s idle timeout. Client threads open sessions
back to back (initialize, notifications/initialized, one tools/call), each request on a fresh
connection; half the sessions are deleted, half abandoned to expire, so the sweep and the
reuse of expired slots churn as well as DELETE. Every SOAK_SAMPLE_SECONDS the driver reads
Envoy's heap (admin /memory `allocated`, tcmalloc's bytes in use), its resident set size, and
the filter's stats.

Pass: every answer was right, the stats add up at the end (created == terminated + expired,
`live` back to 0), and the heap is flat: the highest `allocated` sample in the last third of
the run is within SOAK_TOLERANCE (10 %) of the highest in the middle third (the first third
is warm-up: the slot table grows to the peak number of live sessions, Envoy's pools fill).
The resident set size is held to the same bound: it would show a leak inside the Wasm VM's
own linear memory, which tcmalloc does not see.

The upstream (SOAK_UPSTREAM): `direct` (default), a second Envoy answering every request with
a canned JSON-RPC result, so the rate is bounded by Envoy and the filter rather than by a
Python server; `demo`, the demo MCP server on the Python SDK (real, slower).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from harness import (  # noqa: E402 (the e2e harness lives beside this folder)
    INITIALIZED,
    SESSION_ID_RE,
    WASM,
    Envoy,
    McpServer,
    initialize_body,
    render_bootstrap,
    timed_request,
    tool_call,
)

SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "24"))
SAMPLE_SECONDS = float(os.environ.get("SOAK_SAMPLE_SECONDS", "5"))
TOLERANCE = float(os.environ.get("SOAK_TOLERANCE", "0.10"))
UPSTREAM = os.environ.get("SOAK_UPSTREAM", "direct")
IDLE_S = 2
CONFIG = {"paths": ["/mcp"], "idle_timeout_seconds": IDLE_S, "max_sessions": 100000}
TOUCH_INTERVAL_S = IDLE_S / 64

CANNED_RESULT = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "soak-direct", "version": "1.0.0"},
    },
}


def direct_upstream_bootstrap() -> dict[str, Any]:
    """An Envoy that answers every request, once it has read it, with 200 and a JSON-RPC
    result (no session filter)."""
    hcm_type = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    hcm = {
        "@type": hcm_type,
        "stat_prefix": "direct",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "direct",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": json.dumps(CANNED_RESULT)}},
                            "response_headers_to_add": [
                                {"header": {"key": "content-type", "value": "application/json"}}
                            ],
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            # Answer only once the whole request is in, as a real server does: a direct response
            # on the headers alone would race the filter still reading the request body.
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 1048576,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "direct",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ]
        },
    }


@dataclass
class Tally:
    """One client thread's counts (read by the sampler without a lock: ints only grow)."""

    sessions: int = 0
    deleted: int = 0
    abandoned: int = 0
    requests: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, what: str, status: int, body: bytes) -> None:
        self.wrong += 1
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {status} {body[:160]!r}")


def churn(port: int, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    ack_ok = (202,) if UPSTREAM == "demo" else (200, 202)
    while not stop.is_set():
        init = timed_request(port, "POST", initialize_body(request_id=tally.sessions))
        tally.requests += 1
        session = init.headers.get("mcp-session-id", "")
        if init.status != 200 or not SESSION_ID_RE.match(session):
            tally.bad("initialize", init.status, init.body)
            continue
        tally.sessions += 1
        prev = init
        steps = [
            ("initialized", "POST", INITIALIZED, ack_ok),
            ("call", "POST", tool_call("echo", {"text": "x"}), (200,)),
        ]
        if rng.random() < 0.5:
            steps.append(("delete", "DELETE", None, (204,)))
        for what, method, body, ok in steps:
            t = timed_request(port, method, body, session=session)
            tally.requests += 1
            # A request that came later than the idle timeout after the previous one may
            # rightly find the session expired (a loaded machine); any other miss is wrong.
            late = t.received - prev.sent + TOUCH_INTERVAL_S >= IDLE_S - 0.01
            if t.status not in ok and not (late and t.status == 404):
                tally.bad(what, t.status, t.body)
                break
            if t.status == 404:
                break
            prev = t
        else:
            if steps[-1][0] == "delete":
                tally.deleted += 1
            else:
                tally.abandoned += 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sample:
    at: float
    allocated: int
    heap_size: int
    rss: int
    stats: dict[str, int]
    sessions: int
    requests: int


def sample(envoy: Envoy, started: float, tallies: list[Tally]) -> Sample:
    memory = envoy.admin_get("/memory").json()
    assert envoy.proc is not None
    return Sample(
        at=time.monotonic() - started,
        allocated=int(memory["allocated"]),
        heap_size=int(memory["heap_size"]),
        rss=rss_bytes(envoy.proc.pid),
        stats=envoy.stats(),
        sessions=sum(t.sessions for t in tallies),
        requests=sum(t.requests for t in tallies),
    )


def mib(n: int) -> str:
    return f"{n / 2**20:7.2f}"


def thirds(samples: list[Sample]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Samples by the third of the run they were taken in."""
    end = samples[-1].at
    first = [s for s in samples if s.at <= end / 3]
    middle = [s for s in samples if end / 3 < s.at <= 2 * end / 3]
    last = [s for s in samples if s.at > 2 * end / 3]
    return first, middle, last


def main() -> int:
    if not WASM.exists():
        print(f"soak: {WASM} is missing: run `make build`", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mcp-soak-"))
    print(f"soak: {SECONDS:.0f}s, {CLIENTS} clients, upstream {UPSTREAM}, idle {IDLE_S}s, workdir {workdir}")
    if UPSTREAM == "demo":
        upstream: Any = McpServer(workdir, name="soak-upstream").start()
    elif UPSTREAM == "direct":
        upstream = Envoy(direct_upstream_bootstrap(), workdir, name="soak-upstream", concurrency=1).start()
    else:
        print(f"soak: SOAK_UPSTREAM must be direct or demo, not {UPSTREAM!r}", file=sys.stderr)
        return 2
    envoy = Envoy(render_bootstrap(upstream_port=upstream.port, filter_config=CONFIG), workdir, name="soak-envoy")
    envoy.start()
    try:
        return run(envoy)
    finally:
        envoy.stop()
        upstream.stop()


def run(envoy: Envoy) -> int:
    tallies = [Tally() for _ in range(CLIENTS)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=churn, args=(envoy.port, tally, stop, n), daemon=True)
        for n, tally in enumerate(tallies)
    ]
    started = time.monotonic()
    samples = [sample(envoy, started, tallies)]
    print(
        f"{'t/s':>6} {'allocated':>9} {'heap':>7} {'rss':>7} (MiB) "
        f"{'live':>6} {'created':>8} {'sessions/s':>10} {'req/s':>7}"
    )
    for thread in threads:
        thread.start()
    next_at = started
    previous = samples[0]
    while time.monotonic() - started < SECONDS:
        next_at += SAMPLE_SECONDS
        time.sleep(max(0.0, next_at - time.monotonic()))
        s = sample(envoy, started, tallies)
        samples.append(s)
        span = s.at - previous.at
        print(
            f"{s.at:6.0f} {mib(s.allocated):>9} {mib(s.heap_size)} {mib(s.rss)}       {s.stats['live']:6d} "
            f"{s.stats['created']:8d} {(s.sessions - previous.sessions) / span:10.0f} "
            f"{(s.requests - previous.requests) / span:7.0f}",
            flush=True,
        )
        previous = s
        if not all(t.is_alive() for t in threads):
            print("soak: a client thread died", file=sys.stderr)
            break
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started

    # The abandoned sessions expire; the sweep brings `live` back to 0.
    deadline = time.monotonic() + IDLE_S + 30
    while (stats := envoy.stats())["live"] != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = sample(envoy, started, tallies)

    failures = []
    wrong = sum(t.wrong for t in tallies)
    if wrong:
        examples = [e for t in tallies for e in t.examples][:10]
        failures.append(f"{wrong} wrong answers, e.g.:\n  " + "\n  ".join(examples))
    if stats["live"] != 0:
        failures.append(f"live did not come back to 0: {stats}")
    if stats["created"] != stats["terminated"] + stats["expired"]:
        failures.append(f"created != terminated + expired: {stats}")
    sessions = sum(t.sessions for t in tallies)
    if stats["created"] != sessions:
        failures.append(f"the filter counted {stats['created']} sessions created, the clients {sessions}")
    problems = envoy.log_problems()
    if problems:
        failures.append("Envoy logged wasm errors or a panic:\n  " + "\n  ".join(problems[:10]))

    _, middle, last = thirds(samples[1:])
    verdicts = []
    for name in ("allocated", "rss"):
        if not middle or not last:
            failures.append("too few samples for a verdict: run longer (SOAK_SECONDS)")
            break
        mid_max = max(getattr(s, name) for s in middle)
        last_max = max(getattr(s, name) for s in last)
        growth = last_max / mid_max - 1
        verdicts.append(
            f"{name}: middle third max {mib(mid_max)} MiB, last third max {mib(last_max)} MiB ({growth:+.1%})"
        )
        if growth > TOLERANCE:
            failures.append(f"{name} grew {growth:.1%} from the middle third to the last (allowed {TOLERANCE:.0%})")

    deleted = sum(t.deleted for t in tallies)
    abandoned = sum(t.abandoned for t in tallies)
    requests = sum(t.requests for t in tallies)
    live = [s.stats["live"] for s in samples[1:]]
    print()
    print(f"duration           {elapsed:.0f}s, {CLIENTS} clients, upstream {UPSTREAM}")
    created = stats["created"]
    print(f"sessions created   {created} ({created / elapsed:.0f}/s), requests {requests} ({requests / elapsed:.0f}/s)")
    print(
        f"ended              {stats['terminated']} by DELETE, {stats['expired']} by expiry; "
        f"clients deleted {deleted}, abandoned {abandoned}"
    )
    print(f"live gauge         min {min(live)}, max {max(live)} while churning; {stats['live']} at the end")
    for name, label in (("allocated", "heap allocated"), ("rss", "resident set")):
        start, churned, drained = (getattr(s, name) for s in (samples[0], samples[-1], after))
        print(f"{label:<18} start {mib(start)} MiB, end of churn {mib(churned)} MiB, drained {mib(drained)} MiB")
    for verdict in verdicts:
        print(f"flat?              {verdict}")
    if failures:
        print("\nSOAK FAILED:\n" + "\n".join(failures))
        return 1
    print("\nsoak passed: the heap stayed flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
