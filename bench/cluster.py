"""The etcd store's figures (`make bench`, after bench/bench.py): what sharing sessions between
Envoys through etcd costs, measured in one run against a real 3-member etcd cluster.

A 3-member etcd 3.4 cluster on 127.0.0.11-13 (tests/e2e/etcd_cluster.py, on ports of its own:
client 42379, peer 42380), the demo MCP server (tests/servers/demo_server.py) and filtering
Envoys rendered from the shipped envoy/envoy.cluster.yaml (tests/e2e/etcd_cluster.py). Each
Envoy has the shipped listener (`mcp`, to the demo server) and a second one, `direct`, that
differs only in its route: a direct_response with the buffer filters of bench/envoy.bench.yaml,
so that Envoy, not the Python server, is what a run measures. Figures:

1. Hot path: wrk `tools/call` on one initialized session, Envoy A (etcd store) against Envoy L
   (the same bootstrap without `store`: the local store), and a control L2 (a second Envoy like
   L: what two identical Envoys differ by on this machine), all `--concurrency 1` on core 0,
   wrk on core 1, one run each per round in a rotating order; ratios are taken per round. A's
   stats show whether the runs made etcd calls (`cache.misses`, `store.calls`).
2. Cache misses: sessions opened through Envoy B, then one `tools/call` each, one at a time, on
   A (each a miss: one linearizable read), then the same again (hits).
3. Initialize: one at a time on A and on L, interleaved (etcd: one transaction each).
4. Backend bytes per session: key and value sizes as stored, and etcd's backend growth for
   `--bytes-sessions` new sessions.
5. Writes under steady use: Envoys C and D (2 workers each, a short idle timeout so touches
   come often), S sessions each used about once a second through C and D alternately; etcd's
   write counters (its /metrics) before and after, per session per minute.

One build per run, the one the end-to-end harness renders: the Wasm filter by default, the
native module with MCP_ARTIFACT=native (tests/e2e/harness.py puts it in place of the Wasm
filter in every bootstrap). `make bench` (bench/run.sh) runs this script once per build.

Every process (etcd members, the demo server, Envoys, wrk, h2load, etcdctl) is started here and
stopped by its pid. This process pins itself to core 1 at start, so everything it starts runs
there except the Envoys it pins elsewhere (A, L and L2 on core 0, C and D on both cores).

Writes bench/cluster.json (the Wasm filter) or bench/cluster.native.json (the native module),
with its provenance (bench/provenance.py: commit, clean tree, the SHA-256 of the build measured,
machine, settings); bench/report.py turns each into the cluster section of its build in
BENCHMARKS.md. Exits 1 when a check of the harness failed (a wrong status, a transport error), 2
when the run could not be made; a missed target or an unexpected count of the filter is
reported in the section (Observations), not an error.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import bench  # noqa: E402  (puts tests/e2e on sys.path)
import harness  # noqa: E402
import provenance  # noqa: E402
import report  # noqa: E402
from etcd_cluster import (  # noqa: E402
    ETCD_BIN,
    ETCDCTL_BIN,
    HOSTS,
    EtcdCluster,
    render_cluster_bootstrap,
    store_config,
    without_store,
)

# The build measured (MCP_ARTIFACT, read by the harness at import), its file, and where its
# figures go.
ARTIFACT = harness.ARTIFACT
FILTER = bench.NATIVE_FILTER if ARTIFACT == "native" else bench.WASM_FILTER
RESULTS_JSON = report.OUTPUTS[report.CLUSTER_OUTPUT[ARTIFACT]]
# Logs and data per build: a native run after a Wasm one keeps the Wasm run's logs.
WORKDIR = BENCH / "out" / ("cluster-native" if ARTIFACT == "native" else "cluster")

# Ports nobody else uses (the tests: 22379/22380; make run-cluster: 2379/2380).
CLIENT_PORT = 42379
PEER_PORT = 42380

ENVOY_CORE, LOAD_CORE = bench.ENVOY_CORE, bench.LOAD_CORE
PATH = "/mcp"
DIRECT, UPSTREAM = "direct", "mcp"  # listener names (and stat prefixes)
LISTENER_LABEL = {DIRECT: "direct_response", UPSTREAM: "demo MCP server"}

# The plugin configuration over the shipped one (envoy/envoy.cluster.yaml: idle 1800 s, so a
# touch interval of 60 s; max_lifetime 86400 s). max_sessions is raised so that no phase comes
# near the cap (the etcd store checks it against a count taken every 5 s).
FILTER_CONFIG: dict[str, Any] = {"paths": [PATH], "max_sessions": 100_000}

TARGET_HOT_RATIO = 0.95  # etcd store vs local store, hot path throughput (the issue)

STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"cluster: [{time.monotonic() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


class HarnessError(harness.HarnessError):
    """The run could not be made as described; its numbers would mean nothing."""


def touch_interval_s(idle_s: float) -> float:
    """docs/DESIGN.md: clamp(idle/20, min(5 s, idle/4), 60 s)."""
    return min(max(idle_s / 20, min(5.0, idle_s / 4)), 60.0)


# --------------------------------------------------------------------------- bootstraps


def add_direct_listener(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """A second listener, `direct`: the shipped listener's session filter and configuration, its
    route a direct_response between the two buffer filters of bench/envoy.bench.yaml (see there
    and BENCHMARKS.md for why both are needed)."""
    listeners = bootstrap["static_resources"]["listeners"]
    (shipped,) = listeners
    shipped["name"] = UPSTREAM
    hcm = shipped["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = UPSTREAM
    (session_filter,) = [f for f in hcm["http_filters"] if f["name"] == harness.WASM_FILTER_NAME]
    template = bench.render_bootstrap({}, {})
    (bench_filter,) = [x for x in template["static_resources"]["listeners"] if x["name"] == "filter"]
    bench_hcm = bench_filter["filter_chains"][0]["filters"][0]["typed_config"]
    direct = json.loads(json.dumps(shipped))  # a deep copy
    direct["name"] = DIRECT
    direct["address"]["socket_address"]["port_value"] = 0
    d_hcm = direct["filter_chains"][0]["filters"][0]["typed_config"]
    d_hcm["stat_prefix"] = DIRECT
    d_hcm["route_config"] = json.loads(json.dumps(bench_hcm["route_config"]))
    d_hcm["http_filters"] = [
        json.loads(json.dumps(session_filter if f["name"] == "mcp_session" else f)) for f in bench_hcm["http_filters"]
    ]
    listeners.append(direct)
    return bootstrap


def bootstrap_for(
    etcd: EtcdCluster, upstream_port: int, prefix: str | None, config: dict[str, Any]
) -> dict[str, Any]:
    """The shipped cluster bootstrap with `config` over its plugin configuration; `prefix` None:
    the same without `store` (the local store), the etcd cluster and its health checks kept."""
    b = render_cluster_bootstrap(
        upstream_port=upstream_port,
        etcd=etcd,
        filter_config=config,
        store=store_config(prefix) if prefix is not None else None,
    )
    if prefix is None:
        b = without_store(b)
    return add_direct_listener(b)


# --------------------------------------------------------------------------- requests


JSON_HEADERS = {"content-type": "application/json", "accept": harness.ACCEPT_BOTH}
TOOLS_CALL = bench.BODIES["tools_call"]


class Conn:
    """One keep-alive HTTP/1.1 connection to a listener (http.client: little client work, so
    a timed request is mostly Envoy and what is behind it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.opened = 0

    def request(self, body: bytes, session: str | None = None) -> tuple[int, dict[str, str], bytes, float]:
        """POST /mcp; returns status, headers (lower-case), body and the time taken in µs."""
        headers = dict(JSON_HEADERS)
        if session is not None:
            headers |= {"mcp-session-id": session, "mcp-protocol-version": bench.PROTOCOL_VERSION}
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            self.conn.connect()
            self.opened += 1
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", PATH, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise HarnessError(f"POST to 127.0.0.1:{self.port}: {type(e).__name__}: {e}") from e
        us = (time.perf_counter() - t0) * 1e6
        got = {k.lower(): v for k, v in response.getheaders()}
        if got.get("connection", "").lower() == "close":
            self.close()
        return response.status, got, data, us

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def expect(status: int, want: int | tuple[int, ...], what: str, body: bytes) -> None:
    wants = (want,) if isinstance(want, int) else want
    if status not in wants:
        raise HarnessError(f"{what}: {status}, expected {'/'.join(map(str, wants))}: {body[:300]!r}")


def open_session(conn: Conn, listener: str) -> str:
    """initialize, then notifications/initialized, as a client does."""
    status, headers, body, _ = conn.request(bench.INITIALIZE)
    expect(status, 200, f"initialize on {listener}", body)
    session = headers.get("mcp-session-id")
    if not session:
        raise HarnessError(f"initialize on {listener}: no mcp-session-id: {body[:300]!r}")
    status, _, body, _ = conn.request(bench.INITIALIZED, session)
    # The demo server accepts a notification with 202; the direct_response answers 200.
    expect(status, (200, 202), f"notifications/initialized on {listener}", body)
    return session


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency_summary(times_us: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(times_us),
        "p50_us": pct(times_us, 50),
        "p90_us": pct(times_us, 90),
        "p99_us": pct(times_us, 99),
        "max_us": max(times_us) if times_us else float("nan"),
        "mean_us": statistics.fmean(times_us) if times_us else float("nan"),
    }


# --------------------------------------------------------------------------- etcd


def etcd_metrics(cluster: EtcdCluster, member: int = 0) -> dict[str, float]:
    """A member's Prometheus metrics, name -> value (labelled series summed per name)."""
    m = cluster.members[member]
    text = httpx.get(f"{m.client_url}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


# The counters and gauges read around each phase (those that exist in the running etcd).
WRITE_METRICS = (
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_mvcc_range_total",
    "etcd_debugging_mvcc_put_total",
    "etcd_debugging_mvcc_delete_total",
    "etcd_debugging_mvcc_txn_total",
    "etcd_debugging_mvcc_current_revision",
    "etcd_server_proposals_committed_total",
    "etcd_debugging_lease_granted_total",
    "etcd_debugging_lease_revoked_total",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    # etcd's own write latency (histograms: their sums and counts).
    "etcd_disk_wal_fsync_duration_seconds_sum",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_sum",
    "etcd_disk_backend_commit_duration_seconds_count",
)


def fsync_us(delta: dict[str, float]) -> float:
    """The mean WAL fsync of a phase, µs (one member's; every write waits for a quorum's)."""
    n = delta.get("etcd_disk_wal_fsync_duration_seconds_count", 0)
    return delta.get("etcd_disk_wal_fsync_duration_seconds_sum", 0) / n * 1e6 if n else float("nan")


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in WRITE_METRICS if k in after}


def settled_metrics(cluster: EtcdCluster) -> dict[str, float]:
    """Metrics once the backend committed what came before (etcd commits its batch every
    100 ms; the in-use size is computed at a commit): read until two readings agree."""
    previous = None
    for _ in range(20):
        time.sleep(0.3)
        now = etcd_metrics(cluster)
        key = (now.get("etcd_mvcc_db_total_size_in_use_in_bytes"), now.get("etcd_debugging_mvcc_current_revision"))
        if key == previous:
            return now
        previous = key
    return now


def steal_ns(core: int) -> int:
    """Time the hypervisor took from a core (/proc/stat `steal`), in ns: on a virtual machine,
    the part of the noise the guest can see."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == f"cpu{core}":
            return int(fields[8]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0
    return 0


# --------------------------------------------------------------------------- the run


@dataclass
class Env:
    args: argparse.Namespace
    stack: ExitStack
    etcd: EtcdCluster
    upstream: harness.McpServer
    files: dict[str, Path]
    problems: list[str]
    observations: list[str]
    pids: list[int]

    def envoy(self, name: str, bootstrap: dict[str, Any], *, workers: int, cores: str) -> harness.Envoy:
        envoy = harness.Envoy(
            bootstrap, WORKDIR, name=name, concurrency=workers, log_level=self.args.log_level, cpus=cores,
            ready_timeout=60,
        )  # fmt: skip
        envoy.log_path.unlink(missing_ok=True)
        envoy.start()
        self.pids.append(envoy.pid)
        self.stack.callback(envoy.stop)
        return envoy


def stat_delta(after: dict[str, int], before: dict[str, int], *names: str) -> dict[str, int]:
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


STORE_STATS = ("cache.hits", "cache.misses", "store.calls", "store.errors", "store.retries", "rejected.unavailable")


def wait_watch_up(envoy: harness.Envoy, want: int, timeout: float = 15) -> None:
    """The Envoy's VMs (natively: its workers) have their Watch up (store.watch_up), so cached
    sessions are trusted for a touch interval rather than 1 s."""
    deadline = time.monotonic() + timeout
    while envoy.stats().get("store.watch_up", 0) < want:
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{envoy.name}: store.watch_up {envoy.stats().get('store.watch_up', 0)} < {want} after {timeout:.0f} s"
            )
        time.sleep(0.1)


def best_rounds(h: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each Envoy's best round (highest req/s, lowest CPU µs per request): on a shared machine
    the noise only ever slows a run down, so the best round is the least disturbed one."""
    out: dict[str, dict[str, float]] = {}
    for store in ("etcd", "local", "control"):
        mine = [r for r in h["runs"] if r["store"] == store]
        if mine:
            out[store] = {
                "rps": max(r["rps"] for r in mine),
                "cpu_us": min(r["envoy_cpu_us_per_request"] for r in mine),
            }
    return out


def hot_path(env: Env, a: harness.Envoy, local: harness.Envoy, control: harness.Envoy | None, listener: str,
             rounds: int, duration: int, connections: int) -> dict[str, Any]:  # fmt: skip
    """wrk tools/call on one session, A (etcd) and L (local) in rounds, the order rotating from
    round to round; with `control` (a second local-store Envoy, L2), L2 / L is the ratio of two
    identical Envoys: the noise floor of the etcd / local ratio."""
    sessions = {}
    members = [(a, "etcd"), (local, "local")] + ([(control, "control")] if control is not None else [])
    for envoy, _ in members:
        conn = Conn(envoy.ports[listener])
        sessions[envoy.name] = open_session(conn, f"{envoy.name}/{listener}")
        status, _, body, _ = conn.request(TOOLS_CALL, sessions[envoy.name])
        expect(status, 200, f"tools/call on {envoy.name}/{listener}", body)
        conn.close()
    opened = time.monotonic()
    body_file = env.files["tools_call"]
    runs: list[dict[str, Any]] = []

    def one(envoy: harness.Envoy, store: str, round_no: int, seconds: int) -> dict[str, Any]:
        headers = {"mcp-session-id": sessions[envoy.name], "mcp-protocol-version": bench.PROTOCOL_VERSION}
        before = envoy.stats()
        steal_before, t0 = steal_ns(ENVOY_CORE), time.monotonic()
        result, measured = bench.wrk(envoy, listener, body_file, headers, connections, seconds)
        steal = (steal_ns(ENVOY_CORE) - steal_before) / ((time.monotonic() - t0) * 1e9)
        after = envoy.stats()
        where = f"hot path ({listener}), round {round_no}, {store}"
        transport = {k: v for k, v in result["errors"].items() if k != "status" and v}
        if transport:
            env.problems.append(f"{where}: transport errors {transport}")
        if result["errors"]["status"]:
            env.problems.append(f"{where}: {result['errors']['status']} non-2xx answers of {result['requests']}")
        if measured["connections_opened"] > connections + 1:
            env.problems.append(f"{where}: {measured['connections_opened']} connections for {connections} clients")
        seconds_run = result["duration_us"] / 1e6
        return {
            "store": store,
            "round": round_no,
            "requests": result["requests"],
            "seconds": seconds_run,
            "rps": result["requests"] / seconds_run,
            "p50_us": result["latency_us"]["p50"],
            "p99_us": result["latency_us"]["p99"],
            "envoy_cpu_us_per_request": measured["envoy_cpu_ns"] / 1000 / max(result["requests"], 1),
            "other_load_share": measured["other_load_share"],
            "steal_share": steal,
            "stats": stat_delta(after, before, *STORE_STATS),
        }

    if env.args.warmup > 0:
        for envoy, store in members:
            one(envoy, store, 0, env.args.warmup)
    for round_no in range(1, rounds + 1):
        k = (round_no - 1) % len(members)
        order = members[k:] + members[:k]  # who goes first rotates
        got = {store: one(envoy, store, round_no, duration) for envoy, store in order}
        runs += [got[store] for _, store in members]
        control_note = (
            f", control L2 {got['control']['rps']:,.0f}/s ({got['control']['envoy_cpu_us_per_request']:.1f} us "
            f"CPU/req), L2/L {got['control']['rps'] / got['local']['rps']:.3f}"
            if "control" in got
            else ""
        )
        log(
            f"  hot path ({LISTENER_LABEL[listener]}) round {round_no}/{rounds}: etcd {got['etcd']['rps']:,.0f}/s "
            f"({got['etcd']['envoy_cpu_us_per_request']:.1f} us CPU/req), local {got['local']['rps']:,.0f}/s "
            f"({got['local']['envoy_cpu_us_per_request']:.1f} us CPU/req), ratio {got['etcd']['rps'] / got['local']['rps']:.3f}"
            + control_note
        )
    etcd_runs = [r for r in runs if r["store"] == "etcd"]
    local_runs = [r for r in runs if r["store"] == "local"]
    control_runs = [r for r in runs if r["store"] == "control"]
    ratios = [e["rps"] / lo["rps"] for e, lo in zip(etcd_runs, local_runs)]
    control_ratios = [c["rps"] / lo["rps"] for c, lo in zip(control_runs, local_runs)]
    cpu_diff = [e["envoy_cpu_us_per_request"] - lo["envoy_cpu_us_per_request"] for e, lo in zip(etcd_runs, local_runs)]
    totals = {n: sum(r["stats"][n] for r in etcd_runs) for n in STORE_STATS}
    requests = sum(r["requests"] for r in etcd_runs)
    seconds = sum(r["seconds"] for r in etcd_runs)
    out = {
        "listener": listener,
        "rounds": rounds,
        "duration": duration,
        "connections": connections,
        "runs": runs,
        "etcd_rps": bench.median(r["rps"] for r in etcd_runs),
        "local_rps": bench.median(r["rps"] for r in local_runs),
        "ratio": bench.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "ratios": ratios,
        "control_ratio": bench.median(control_ratios) if control_ratios else None,
        "control_ratio_range": [min(control_ratios), max(control_ratios)] if control_ratios else None,
        "control_rps": bench.median(r["rps"] for r in control_runs) if control_runs else None,
        "control_cpu_us": bench.median(r["envoy_cpu_us_per_request"] for r in control_runs) if control_runs else None,
        "etcd_cpu_us": bench.median(r["envoy_cpu_us_per_request"] for r in etcd_runs),
        "local_cpu_us": bench.median(r["envoy_cpu_us_per_request"] for r in local_runs),
        "added_cpu_us": bench.median(cpu_diff),
        "etcd_p50_us": bench.median(r["p50_us"] for r in etcd_runs),
        "local_p50_us": bench.median(r["p50_us"] for r in local_runs),
        "other_load": bench.median(r["other_load_share"] for r in runs),
        "other_load_max": max(r["other_load_share"] for r in runs),
        "steal": bench.median(r["steal_share"] for r in runs),
        "steal_max": max(r["steal_share"] for r in runs),
        "cpu_us_range": {
            store: [min(x["envoy_cpu_us_per_request"] for x in rs), max(x["envoy_cpu_us_per_request"] for x in rs)]
            for store, rs in (("etcd", etcd_runs), ("local", local_runs))
        },
        "etcd_runs_requests": requests,
        "etcd_runs_seconds": seconds,
        "etcd_runs_stats": totals,
        "seconds_since_session_opened": time.monotonic() - opened,
    }
    out["best"] = best_rounds(out)
    # The check: every request of the etcd runs a cache hit (wrk may count a few requests of
    # its last moment as not completed: at most one per connection).
    slack = (connections + 1) * len(etcd_runs)
    if totals["cache.misses"] or totals["store.calls"] or not requests <= totals["cache.hits"] <= requests + slack:
        env.observations.append(
            f"hot path ({LISTENER_LABEL[listener]}): {totals['cache.hits']:,} cache hits and {totals['cache.misses']} "
            f"misses for {requests:,} requests completed by wrk (expected: hits = requests, no miss)"
        )
    return out


def timer_calls(a: harness.Envoy, seconds: float) -> dict[str, Any]:
    """store.calls of an idle Envoy over `seconds`: its VMs' (natively: its workers') timer
    chores (session count every 5 s per VM, a lease per window), the background of every etcd
    figure."""
    before = a.stats()
    time.sleep(seconds)
    after = a.stats()
    d = stat_delta(after, before, *STORE_STATS)
    return {"seconds": seconds, "stats": d, "calls_per_s": d["store.calls"] / seconds}


def miss_latency(env: Env, a: harness.Envoy, b: harness.Envoy, listener: str, n: int) -> dict[str, Any]:
    """N sessions opened through B, then one tools/call each on A (misses), then again (hits)."""
    opener = Conn(b.ports[listener])
    b_before, m_before = b.stats(), etcd_metrics(env.etcd)
    sessions = [open_session(opener, f"{b.name}/{listener}") for _ in range(n)]
    b_after, m_after = b.stats(), etcd_metrics(env.etcd)
    opener.close()
    conn = Conn(a.ports[listener])
    out: dict[str, Any] = {"listener": listener, "n": n}
    # What opening a session (initialize + notifications/initialized) cost B in etcd calls.
    opened = stat_delta(b_after, b_before, *STORE_STATS)
    md = metrics_delta(m_before, m_after)
    out["open"] = {
        "stats": opened,
        "calls_per_session": opened["store.calls"] / n,
        "writes_per_session": (md.get("etcd_mvcc_put_total", 0) + md.get("etcd_mvcc_delete_total", 0)) / n,
    }
    for phase in ("miss", "hit"):
        before = a.stats()
        times = []
        for session in sessions:
            status, _, body, us = conn.request(TOOLS_CALL, session)
            expect(status, 200, f"tools/call on {a.name}/{listener} ({phase})", body)
            times.append(us)
        after = a.stats()
        out[phase] = latency_summary(times)
        out[phase]["stats"] = stat_delta(after, before, *STORE_STATS)
        want_miss = n if phase == "miss" else 0
        got = out[phase]["stats"]
        if got["cache.misses"] != want_miss or got["cache.hits"] != n - want_miss:
            env.observations.append(
                f"cache misses ({LISTENER_LABEL[listener]}), {phase} pass: {got['cache.misses']} misses and "
                f"{got['cache.hits']} hits for {n} requests (expected {want_miss} misses)"
            )
    conn.close()
    out["added_p50_us"] = out["miss"]["p50_us"] - out["hit"]["p50_us"]
    out["added_p99_us"] = out["miss"]["p99_us"] - out["hit"]["p99_us"]
    # Misses per request: store.calls per miss (a Range each, plus the timer's share).
    out["calls_per_miss"] = out["miss"]["stats"]["store.calls"] / max(out["miss"]["stats"]["cache.misses"], 1)
    log(
        f"  misses ({LISTENER_LABEL[listener]}): p50 {out['miss']['p50_us']:,.0f} us, p99 {out['miss']['p99_us']:,.0f} us; "
        f"hits p50 {out['hit']['p50_us']:,.0f} us, p99 {out['hit']['p99_us']:,.0f} us"
    )
    return out


def initialize_latency(env: Env, a: harness.Envoy, local: harness.Envoy, listener: str, n: int) -> dict[str, Any]:
    """initialize one at a time, A and L interleaved request by request."""
    conns = {"etcd": Conn(a.ports[listener]), "local": Conn(local.ports[listener])}
    for c in conns.values():  # connect and warm
        status, _, body, _ = c.request(bench.INITIALIZE)
        expect(status, 200, f"initialize on {listener}", body)
    before = a.stats()
    metrics_before = etcd_metrics(env.etcd)
    times: dict[str, list[float]] = {"etcd": [], "local": []}
    for i in range(n):
        for store in (("etcd", "local") if i % 2 == 0 else ("local", "etcd")):
            status, headers, body, us = conns[store].request(bench.INITIALIZE)
            expect(status, 200, f"initialize on {store}/{listener}", body)
            if "mcp-session-id" not in headers:
                raise HarnessError(f"initialize on {store}/{listener}: no session minted")
            times[store].append(us)
    after = a.stats()
    metrics_after = etcd_metrics(env.etcd)
    for c in conns.values():
        c.close()
    out: dict[str, Any] = {"listener": listener, "n": n}
    out["etcd_delta"] = metrics_delta(metrics_before, metrics_after)
    out["wal_fsync_mean_us"] = fsync_us(out["etcd_delta"])
    for store in times:
        out[store] = latency_summary(times[store])
    out["etcd_stats"] = stat_delta(after, before, *STORE_STATS)
    out["added_p50_us"] = out["etcd"]["p50_us"] - out["local"]["p50_us"]
    out["added_p99_us"] = out["etcd"]["p99_us"] - out["local"]["p99_us"]
    log(
        f"  initialize ({LISTENER_LABEL[listener]}): etcd p50 {out['etcd']['p50_us']:,.0f} / p99 "
        f"{out['etcd']['p99_us']:,.0f} us; local p50 {out['local']['p50_us']:,.0f} / p99 {out['local']['p99_us']:,.0f} us"
    )
    return out


def backend_bytes(env: Env, a: harness.Envoy, prefix: str, n: int) -> dict[str, Any]:
    """Key and value sizes as stored; etcd's backend growth for `n` new sessions."""
    before_keys = env.etcd.count(prefix)
    before = settled_metrics(env.etcd)
    ok = bench.h2load(a.url(PATH, listener=DIRECT), env.files["initialize"], {}, n, connections=8)
    if ok != n:
        env.problems.append(f"backend bytes: {ok} of {n} initializes answered 2xx")
    after = settled_metrics(env.etcd)
    after_keys = env.etcd.count(prefix)
    kvs = env.etcd.kvs(prefix)
    key_sizes = [len(k) for k, _ in kvs]
    value_sizes = [len(v) for _, v in kvs]
    d = metrics_delta(before, after)
    created = after_keys - before_keys
    if created != n:
        env.observations.append(f"backend bytes: {created} new keys in etcd for {n} initializes")
    out = {
        "sessions": n,
        "new_keys": created,
        "keys_total": after_keys,
        "prefix": prefix,
        "key_bytes": {"min": min(key_sizes), "max": max(key_sizes), "median": statistics.median(key_sizes)},
        "value_bytes": {"min": min(value_sizes), "max": max(value_sizes), "median": statistics.median(value_sizes)},
        "delta": d,
        "in_use_before": before.get("etcd_mvcc_db_total_size_in_use_in_bytes"),
        "in_use_after": after.get("etcd_mvcc_db_total_size_in_use_in_bytes"),
        "db_before": before.get("etcd_mvcc_db_total_size_in_bytes"),
        "db_after": after.get("etcd_mvcc_db_total_size_in_bytes"),
    }
    out["in_use_per_session"] = d.get("etcd_mvcc_db_total_size_in_use_in_bytes", float("nan")) / max(created, 1)
    out["db_per_session"] = d.get("etcd_mvcc_db_total_size_in_bytes", float("nan")) / max(created, 1)
    out["revisions_per_session"] = d.get("etcd_debugging_mvcc_current_revision", float("nan")) / max(created, 1)
    log(
        f"  bytes: key {out['key_bytes']['median']:.0f} B, value {out['value_bytes']['median']:.0f} B; backend in use "
        f"+{out['in_use_per_session']:.0f} B per session, file +{out['db_per_session']:.0f} B per session"
    )
    return out


def steady_writes(env: Env, upstream_port: int) -> dict[str, Any]:
    """S sessions used about once a second each through C and D alternately; etcd's writes."""
    args = env.args
    idle = args.steady_idle
    prefix = f"mcp-bench/steady-{uuid.uuid4().hex[:8]}/"
    config = {**FILTER_CONFIG, "idle_timeout_seconds": idle}
    envoys = [
        env.envoy(f"envoy-{name}", bootstrap_for(env.etcd, upstream_port, prefix, config), workers=2, cores="0,1")
        for name in ("c", "d")
    ]
    # A few connections per Envoy, so that both workers of each serve the sessions.
    conns = [[Conn(e.ports[UPSTREAM]) for _ in range(4)] for e in envoys]
    s = args.steady_sessions
    sessions = [open_session(conns[i % 2][i % 4], f"{envoys[i % 2].name}/{UPSTREAM}") for i in range(s)]
    for e in envoys:
        wait_watch_up(e, 1)
    time.sleep(0.5)
    before = settled_metrics(env.etcd)
    stats_before = [e.stats() for e in envoys]
    period = 1.0 / s  # every session once a second
    requests = 0
    late = 0.0
    start = time.monotonic()
    deadline = start + args.steady_seconds
    i = 0
    while True:
        due = start + i * period
        if due >= deadline:
            break
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            late = max(late, now - due)
        k, r = i % s, i // s
        which = (k + r) % 2  # each session alternates between C and D from one use to the next
        status, _, body, _ = conns[which][i % 4].request(TOOLS_CALL, sessions[k])
        expect(status, 200, f"steady use: tools/call on {envoys[which].name}", body)
        requests += 1
        i += 1
    elapsed = time.monotonic() - start
    after = settled_metrics(env.etcd)
    stats_after = [e.stats() for e in envoys]
    for row in conns:
        for c in row:
            c.close()
    d = metrics_delta(before, after)
    minutes = elapsed / 60
    puts = d.get("etcd_mvcc_put_total", d.get("etcd_debugging_mvcc_put_total", float("nan")))
    deletes = d.get("etcd_mvcc_delete_total", d.get("etcd_debugging_mvcc_delete_total", float("nan")))
    revisions = d.get("etcd_debugging_mvcc_current_revision", float("nan"))
    ti = touch_interval_s(idle)
    filt = {n: sum(a.get(n, 0) - b.get(n, 0) for a, b in zip(stats_after, stats_before)) for n in STORE_STATS}
    out = {
        "sessions": s,
        "seconds": elapsed,
        "idle_timeout_s": idle,
        "touch_interval_s": ti,
        "requests": requests,
        "max_lateness_s": late,
        "requests_per_session_per_min": requests / s / minutes,
        "puts": puts,
        "deletes": deletes,
        "revisions": revisions,
        "writes_per_session_per_min": (puts + deletes) / s / minutes,
        "revisions_per_session_per_min": revisions / s / minutes,
        "expected_max_writes_per_session_per_min": 60 / ti,
        "delta": d,
        "filter_stats": filt,
        "misses_per_session_per_min": filt["cache.misses"] / s / minutes,
        "calls_per_session_per_min": filt["store.calls"] / s / minutes,
        "in_use_growth_per_write": d.get("etcd_mvcc_db_total_size_in_use_in_bytes", float("nan")) / max(revisions, 1),
        "lease_grants_per_min": d.get("etcd_debugging_lease_granted_total", float("nan")) / minutes,
        "proposals": d.get("etcd_server_proposals_committed_total", float("nan")),
        "workers_per_envoy": 2,
    }
    log(
        f"  steady use: {out['requests_per_session_per_min']:.1f} requests per session per minute, "
        f"{out['writes_per_session_per_min']:.2f} etcd writes per session per minute "
        f"(at most {out['expected_max_writes_per_session_per_min']:.1f} expected: touch interval {ti:g} s)"
    )
    if out["writes_per_session_per_min"] > out["expected_max_writes_per_session_per_min"] * 1.05:
        env.observations.append(
            f"steady use: {out['writes_per_session_per_min']:.2f} writes per session per minute, above the "
            f"{out['expected_max_writes_per_session_per_min']:.1f} of one touch per touch interval"
        )
    if late > 0.5:
        env.observations.append(f"steady use: the client fell behind its schedule by up to {late:.2f} s")
    for e in envoys:
        env.problems += [f"Envoy log ({e.name}): {line}" for line in e.log_problems()[:5]]
        e.stop()
    return out


def run(args: argparse.Namespace, origin: dict[str, Any]) -> dict[str, Any]:
    for tool in ("wrk", "h2load", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} is not installed (bench/run.sh installs it)")
    for path, hint in ((Path(ETCD_BIN), "make setup installs Debian's etcd-server"),
                       (Path(ETCDCTL_BIN), "make setup installs Debian's etcd-client"),
                       (bench.ENVOY, "make setup"), (FILTER, "make build")):  # fmt: skip
        if not path.exists():
            raise HarnessError(f"{path} is missing ({hint})")
    if (os.cpu_count() or 1) < 2:
        raise HarnessError("needs 2 cores: the measured Envoys on one, everything else on the other")
    for host in HOSTS:
        for port in (CLIENT_PORT, PEER_PORT):
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((host, port)) == 0:
                    raise HarnessError(
                        f"{host}:{port} is already in use (another bench/cluster.py run?): these ports are this "
                        "script's own"
                    )
    # Everything this process starts inherits core 1, unless pinned elsewhere (the Envoys).
    os.sched_setaffinity(0, {LOAD_CORE})

    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)  # a fresh cluster: no data of an earlier run
    WORKDIR.mkdir(parents=True)
    files = {}
    for name, body in bench.BODIES.items():
        files[name] = WORKDIR / f"{name}.json"
        files[name].write_bytes(body)

    results: dict[str, Any] = {
        "provenance": origin,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": bench.machine(),
        "command": args.command,
        "artifact": ARTIFACT,
        "etcd_version": subprocess.run([ETCD_BIN, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        .split(":")[-1].strip(),
        "etcd_ports": [CLIENT_PORT, PEER_PORT],
        "etcd_hosts": list(HOSTS),
        "cores": {"envoy": ENVOY_CORE, "load": LOAD_CORE},
        "targets": {"hot_ratio": TARGET_HOT_RATIO},
        # The build measured, under its name ("wasm" or "native").
        ARTIFACT: {
            "sha256": hashlib.sha256(FILTER.read_bytes()).hexdigest(),
            "modified": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(FILTER.stat().st_mtime)),
        },
        "config": FILTER_CONFIG,
        "log_level": args.log_level,
    }
    problems: list[str] = []
    observations: list[str] = []
    pids: list[int] = []
    phases = set(args.phases.split(","))
    with ExitStack() as stack:
        log(f"build: {ARTIFACT} ({FILTER.relative_to(REPO)}), figures to {RESULTS_JSON.relative_to(REPO)}")
        log(f"etcd: 3 members on 127.0.0.11-13, client port {CLIENT_PORT}, peer port {PEER_PORT}")
        etcd = EtcdCluster(WORKDIR / "etcd", client_port=CLIENT_PORT, peer_port=PEER_PORT)
        stack.callback(etcd.stop_all)
        etcd.start()
        pids += [m.pid for m in etcd.members]
        upstream = harness.McpServer(WORKDIR, name="demo-server")
        stack.callback(upstream.stop)
        upstream.start()
        pids.append(upstream.proc.pid)
        env = Env(args, stack, etcd, upstream, files, problems, observations, pids)
        prefix = f"mcp-bench/{uuid.uuid4().hex[:8]}/"
        results["prefix"] = prefix
        results["leader"] = etcd.leader().name

        if phases & {"hot", "miss", "init", "bytes"}:
            a = env.envoy("envoy-a", bootstrap_for(etcd, upstream.port, prefix, FILTER_CONFIG), workers=1,
                          cores=str(ENVOY_CORE))  # fmt: skip
            local = env.envoy("envoy-l", bootstrap_for(etcd, upstream.port, None, FILTER_CONFIG), workers=1,
                              cores=str(ENVOY_CORE))  # fmt: skip
            control = None
            if "hot" in phases and args.control:
                control = env.envoy("envoy-l2", bootstrap_for(etcd, upstream.port, None, FILTER_CONFIG), workers=1,
                                    cores=str(ENVOY_CORE))  # fmt: skip
            b = env.envoy("envoy-b", bootstrap_for(etcd, upstream.port, prefix, FILTER_CONFIG), workers=1,
                          cores=str(LOAD_CORE))  # fmt: skip
            results["envoy_version"] = bench.envoy_version(a)
            log(f"Envoy {report.short_version(results['envoy_version'])}: A (etcd, pid {a.pid}) and L (local, pid "
                f"{local.pid}) on core {ENVOY_CORE}, B (etcd, pid {b.pid}) on core {LOAD_CORE}")  # fmt: skip
            # A VM (natively: a worker) starts its etcd machinery (the watch, the timer's calls)
            # with its first store operation: one session on each etcd Envoy first.
            for e in (a, b):
                open_session(Conn(e.ports[DIRECT]), f"{e.name}/{DIRECT}")
                wait_watch_up(e, 1)
            if "hot" in phases:
                results["timer"] = timer_calls(a, args.idle_window)
                results["hot"] = {}
                for listener, rounds, seconds, connections, ctl in (
                    (DIRECT, args.rounds, args.duration, args.connections, control),
                    (UPSTREAM, args.upstream_rounds, args.upstream_duration, args.upstream_connections, None),
                ):
                    if rounds > 0:
                        log(f"hot path through {LISTENER_LABEL[listener]}: {rounds} rounds of {seconds} s")
                        results["hot"][listener] = hot_path(env, a, local, ctl, listener, rounds, seconds, connections)
                if control is not None:
                    problems += [f"Envoy log ({control.name}): {line}" for line in control.log_problems()[:5]]
                    control.stop()
            if "init" in phases:
                log(f"initialize, one at a time: {args.sessions} on A and on L, interleaved")
                results["initialize"] = {
                    listener: initialize_latency(env, a, local, listener, args.sessions)
                    for listener in (DIRECT, UPSTREAM)
                }
            if "miss" in phases:
                log(f"cache misses: {args.sessions} sessions opened through B, then used on A")
                results["miss"] = {
                    listener: miss_latency(env, a, b, listener, args.sessions) for listener in (DIRECT, UPSTREAM)
                }
            if "bytes" in phases:
                log(f"backend bytes: {args.bytes_sessions} initializes on A")
                results["bytes"] = backend_bytes(env, a, prefix, args.bytes_sessions)
            for e in (a, local, b):
                problems += [f"Envoy log ({e.name}): {line}" for line in e.log_problems()[:5]]
                results.setdefault("final_stats", {})[e.name] = e.stats()
                e.stop()
        if "writes" in phases:
            log(
                f"steady use: {args.steady_sessions} sessions, each once a second for {args.steady_seconds} s through "
                f"C and D alternately (idle timeout {args.steady_idle} s)"
            )
            results["writes"] = steady_writes(env, upstream.port)
        results.setdefault("envoy_version", subprocess.run([str(bench.ENVOY), "--version"], capture_output=True,
                                                           text=True).stdout.split("version:")[-1].strip())  # fmt: skip
        end = etcd_metrics(etcd)
        results["etcd_metrics_end"] = {k: v for k, v in end.items() if k in WRITE_METRICS}
        results["etcd_metrics_missing"] = [k for k in WRITE_METRICS if k not in end]
    # The members' data (their WAL files preallocate 64 MB each) is not needed after the run;
    # their logs stay in bench/out/cluster/etcd (natively: bench/out/cluster-native/etcd).
    for member in etcd.members:
        shutil.rmtree(member.data_dir, ignore_errors=True)
    # Every process started here is stopped: check it by pid.
    time.sleep(0.2)
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
    if left:
        problems.append(f"processes still running after the run: {left}")
    results["problems"] = problems
    results["observations"] = observations
    results["seconds"] = round(time.monotonic() - STARTED, 1)
    return results


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


# --------------------------------------------------------------------------- output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--rounds", type=int, default=12, help="hot path rounds, direct_response route (default 12)")
    add("--duration", type=int, default=1, help="seconds per wrk run, direct_response route (default 1)")
    add("--no-control", dest="control", action="store_false", help="no control Envoy L2 in the hot path rounds")
    add("--upstream-rounds", type=int, default=3, help="hot path rounds through the demo server (default 3; 0: none)")
    add("--upstream-duration", type=int, default=1, help="seconds per wrk run through the demo server (default 1)")
    add("--warmup", type=int, default=1, help="seconds of discarded wrk warm-up per Envoy (default 1)")
    add("--connections", type=int, default=50, help="wrk connections, direct_response route (default 50)")
    add("--upstream-connections", type=int, default=10, help="wrk connections, demo server (default 10)")
    add("--idle-window", type=float, default=3, help="seconds A's store calls are counted idle (default 3)")
    add("--sessions", type=int, default=200, help="requests for the miss and initialize latencies (default 200)")
    add("--bytes-sessions", type=int, default=2000, help="sessions created for the backend growth (default 2000)")
    add("--steady-sessions", type=int, default=100, help="sessions in steady use (default 100)")
    add("--steady-seconds", type=int, default=60, help="seconds of steady use (default 60)")
    add("--steady-idle", type=int, default=200, help="idle timeout in steady use (default 200: a touch each 10 s)")
    add("--phases", default="hot,init,miss,bytes,writes", help="which parts to run (default all)")
    add("--log-level", default="info", help="Envoy's log level (default info)")
    add("--no-write", action="store_true", help=f"print, but do not write {RESULTS_JSON.relative_to(REPO)}")
    add("--command", default="make bench", help="the command recorded in the provenance")
    args = parser.parse_args()
    not_settings = ("no_write", "command")
    settings = {k: v for k, v in vars(args).items() if k not in not_settings}
    defaults = {k: v for k, v in vars(parser.parse_args([])).items() if k not in not_settings}
    unknown = set(args.phases.split(",")) - {"hot", "init", "miss", "bytes", "writes"}
    if unknown:
        raise HarnessError(f"unknown phases: {sorted(unknown)}")
    if args.phases != parser.get_default("phases") and not args.no_write:
        log(f"only some phases (--phases): a partial run, {RESULTS_JSON.relative_to(REPO)} is not written")
        args.no_write = True
    origin = provenance.collect(
        command=args.command,
        settings=settings,
        defaults=defaults,
        artifacts=[FILTER],
        envoy_version=bench.envoy_binary_version(),
    )
    results = run(args, origin)
    print(report.render_cluster(results))
    if not args.no_write:
        RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
        log(f"wrote {RESULTS_JSON.relative_to(REPO)}: `python3 bench/report.py` puts it in BENCHMARKS.md")
    log(f"done in {results['seconds']:.0f} s")
    for o in results["observations"]:
        log(f"observation: {o}")
    for p in results["problems"]:
        log(f"CHECK FAILED: {p}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except harness.HarnessError as e:  # ours, the harness's (a process that did not start), etcdctl's
        log(f"error: {e}")
        sys.exit(2)
