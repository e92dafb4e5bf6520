"""The filter's cost against Envoy without it, measured in one run (`make bench`).

One Envoy (`--concurrency 1`, pinned to core 0) with listeners that differ only in the Wasm
filter (bench/envoy.bench.yaml): none (the limit), the empty filter (the floor: any V8 Wasm
filter; bench/empty-filter) and the session filter. wrk (pinned to core 1) drives five
scenarios, listener after listener, for several rounds; every figure reported is a median over
rounds, and every ratio is taken pair by pair within a round before its median. A second Envoy
run measures the heap per live session and after a churn of a million sessions.

Writes bench/results.json (every run), bench/results.svg (the chart) and the results section of
BENCHMARKS.md (between its bench:results markers). Exits non-zero when a check of the harness
failed (a wrong status, a closed connection, a transport error): then the numbers are not what
they say they are. Missing a performance target is reported, not an error.

Run it through `make bench` (bash bench/run.sh), which installs wrk and h2load and builds both
filters first. Environment-free; the knobs are the flags (see --help).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
# Envoy is started, watched and stopped by the end-to-end harness's launcher, the one the tests use.
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import harness  # noqa: E402

BENCH = REPO / "bench"
ENVOY = harness.ENVOY_BIN
WASM_FILTER = REPO / "target" / "wasm32-wasip1" / "release" / "mcp_session_filter.wasm"
WASM_EMPTY = BENCH / "empty-filter" / "target" / "wasm32-wasip1" / "release" / "empty_filter.wasm"
TEMPLATE = BENCH / "envoy.bench.yaml"
WRK_SCRIPT = BENCH / "wrk.lua"
RESULTS_JSON = BENCH / "results.json"
RESULTS_SVG = BENCH / "results.svg"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
MARK_BEGIN = "<!-- bench:results:begin (written by bench/bench.py; edit outside the markers) -->"
MARK_END = "<!-- bench:results:end -->"

ENVOY_CORE = 0
LOAD_CORE = 1
BOTH_CORES = f"{ENVOY_CORE},{LOAD_CORE}"
PATH = "/mcp"
PROTOCOL_VERSION = "2025-11-25"
SESSIONLESS_VERSION = "2026-07-28"

# The three listeners every scenario compares, in the order they run within a round.
NOFILTER, EMPTY, FILTER = "nofilter", "empty", "filter"
LISTENERS = (NOFILTER, EMPTY, FILTER)
LABELS = {NOFILTER: "no filter", EMPTY: "empty filter (floor)", FILTER: "session filter"}

# The hot-path listener's plugin configuration: the defaults.
FILTER_CONFIG: dict[str, Any] = {}
# Scenario 3 mints a session per request. With the defaults (10,000 sessions, 30 min idle) the
# store is full after about a second of load, and every initialize after that is refused with
# 503 after a bounded number of probes, which is a different path (measured apart, "at the
# cap"). So scenario 3 runs on a listener of its own (its own vm_id, so its own store) whose
# only change is a capacity the run cannot reach: every initialize takes the normal path of a
# store that only grows (the free-slot hint is empty, so the table grows by one slot).
INITIALIZE_CONFIG: dict[str, Any] = {"max_sessions": 10_000_000}

# The memory run: a store that keeps 100k sessions (long idle), and one that churns (short
# idle, so the sweep and the probes reclaim expired slots while the churn goes on).
MEMORY_LIVE_CONFIG: dict[str, Any] = {"max_sessions": 200_000, "idle_timeout_seconds": 3600}
MEMORY_CHURN_IDLE_S = 2
MEMORY_CHURN_CONFIG: dict[str, Any] = {"max_sessions": 200_000, "idle_timeout_seconds": MEMORY_CHURN_IDLE_S}

# Targets from issue 4.
TARGET_HOT_RATIO = 0.90  # throughput vs the floor, scenarios 1, 2, 4
TARGET_HOT_ADDED_US = 5.0  # added p50 over the floor, scenarios 1, 2, 4
TARGET_INIT_RATIO = 0.80  # throughput vs the floor, scenario 3
TARGET_BYTES_PER_SESSION = 256
TARGET_CHURN_SLACK = 0.10


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"bench: [{time.monotonic() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


class HarnessError(harness.HarnessError):
    """The benchmark could not run as described; its numbers would mean nothing."""


# --------------------------------------------------------------------------- requests


def jsonrpc(method: str, request_id: int | None, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0"}
    if request_id is not None:
        message["id"] = request_id
    message["method"] = method
    if params is not None:
        message["params"] = params
    return json.dumps(message, separators=(",", ":")).encode()


def tool_call(size: int | None = None) -> bytes:
    """A `tools/call`; with `size`, padded with one string argument to exactly `size` bytes."""
    body = jsonrpc("tools/call", 2, {"name": "echo", "arguments": {"text": "hello"}})
    if size is None:
        return body
    pad = size - len(body) + len("hello")
    if pad < 0:
        raise ValueError(f"{size} bytes is smaller than the smallest tools/call")
    body = jsonrpc("tools/call", 2, {"name": "echo", "arguments": {"text": "x" * pad}})
    assert len(body) == size, len(body)
    return body


INITIALIZE = jsonrpc(
    "initialize",
    1,
    {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-session-filter-bench", "version": "1"},
    },
)
INITIALIZED = jsonrpc("notifications/initialized", None)
BODIES = {
    "tools_call": tool_call(),
    "tools_call_64k": tool_call(64 * 1024),
    "initialize": INITIALIZE,
}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    short: str  # for the chart
    body: str  # a key of BODIES
    headers: dict[str, str]  # {session} / {unknown} are filled in once a session exists
    filter_listener: str  # where the session filter's side of this scenario runs
    filter_status: int  # what the session filter answers (the others answer 200)
    hot_path: bool

    def request_headers(self, session: str, unknown: str) -> dict[str, str]:
        return {k: v.format(session=session, unknown=unknown) for k, v in self.headers.items()}


SESSION_HEADERS = {"mcp-session-id": "{session}", "mcp-protocol-version": PROTOCOL_VERSION}
SCENARIOS = (
    Scenario("1", "hot path: tools/call on a session", "hot path", "tools_call", SESSION_HEADERS, FILTER, 200, True),
    Scenario("2", "hot path: 64 KiB tools/call on a session", "hot path, 64 KiB", "tools_call_64k", SESSION_HEADERS, FILTER, 200, True),
    Scenario("3", "initialize (mints a session)", "initialize", "initialize", {}, "filter_initialize", 200, False),
    Scenario(
        "4",
        "sessionless era (2026-07-28) passes",
        "sessionless era",
        "tools_call",
        {"mcp-protocol-version": SESSIONLESS_VERSION},
        FILTER,
        200,
        True,
    ),
    Scenario(
        "5",
        "unknown session: 404",
        "unknown session",
        "tools_call",
        {"mcp-session-id": "{unknown}", "mcp-protocol-version": PROTOCOL_VERSION},
        FILTER,
        404,
        False,
    ),
)


# --------------------------------------------------------------------------- processes


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns (schedstat: finer than the 10 ms of stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def core_busy_ns(core: int) -> int:
    """Busy time of one core (everything but idle and iowait), in ns."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == f"cpu{core}":
            ticks = [int(x) for x in fields[1:]]
            busy = sum(ticks) - ticks[3] - ticks[4]
            return busy * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    raise HarnessError(f"no cpu{core} in /proc/stat")


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def render_bootstrap(config_filter: dict[str, Any], config_initialize: dict[str, Any]) -> dict[str, Any]:
    """bench/envoy.bench.yaml with the Wasm files and the two plugin configurations."""
    text = string.Template(TEMPLATE.read_text()).substitute(
        admin_port=0,
        wasm_empty=str(WASM_EMPTY),
        wasm_filter=str(WASM_FILTER),
        config_filter=json.dumps(config_filter),
        config_initialize=json.dumps(config_initialize),
    )
    return yaml.safe_load(text)


def start_envoy(
    workdir: Path,
    name: str,
    bootstrap: dict[str, Any],
    log_level: str,
    workers: int = 1,
    cores: str = str(ENVOY_CORE),
) -> harness.Envoy:
    """The harness's Envoy (tests/e2e/harness.py), by default one worker pinned to core 0.

    The harness appends to an Envoy's log (an e2e Envoy may be restarted); a benchmark run
    starts a new log, so that the log check reads this run's lines only."""
    envoy = harness.Envoy(
        bootstrap, workdir, name=name, concurrency=workers, log_level=log_level, cpus=cores, ready_timeout=60
    )
    envoy.log_path.unlink(missing_ok=True)
    return envoy.start()


def heap_bytes(envoy: harness.Envoy) -> int:
    """tcmalloc's bytes in use (admin /memory, `allocated`)."""
    return int(envoy.admin_get("/memory").json()["allocated"])


def envoy_version(envoy: harness.Envoy) -> str:
    return envoy.admin_get("/server_info").json()["version"]


# --------------------------------------------------------------------------- load


@dataclass
class Run:
    scenario: str
    listener: str
    mode: str  # "throughput" (wrk -c N) or "latency" (wrk -c 1)
    round: int
    requests: int
    seconds: float
    rps: float
    p50_us: float
    p99_us: float
    envoy_cpu_us_per_request: float
    envoy_cpu_share: float  # of one core, during the run
    other_load_share: float  # core 0 busy time not Envoy's, as a share of the run
    load_cpu_share: float  # wrk's CPU, as a share of one core
    connections_opened: int
    non_2xx: int
    errors: dict[str, int]


def wrk(
    envoy: harness.Envoy,
    listener: str,
    body_file: Path,
    headers: dict[str, str],
    connections: int,
    seconds: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """One wrk run on core 1; returns wrk's numbers and what was measured around it."""
    env = dict(os.environ)
    env["BENCH_BODY_FILE"] = str(body_file)
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
    env["BENCH_PATH"] = PATH
    prefix = "filter_initialize" if listener == "filter_initialize" else listener
    cx_key = f"http.{prefix}.downstream_cx_total"
    cx_before = envoy.server_stats(rf"^http\.{prefix}\.downstream_cx_total$").get(cx_key, 0)
    cpu_before, core_before = cpu_ns(envoy.pid), core_busy_ns(ENVOY_CORE)
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            "taskset", "-c", str(LOAD_CORE),
            "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), envoy.url(PATH, listener=listener),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    elapsed = time.monotonic() - started
    cpu_after, core_after = cpu_ns(envoy.pid), core_busy_ns(ENVOY_CORE)
    cx_after = envoy.server_stats(rf"^http\.{prefix}\.downstream_cx_total$").get(cx_key, 0)
    if proc.returncode != 0:
        raise HarnessError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    line = next((x for x in out.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise HarnessError(f"wrk printed no result:\n{out}\n{err}")
    result = json.loads(line[len("BENCH_RESULT ") :])
    envoy_ns = cpu_after - cpu_before
    measured = {
        "envoy_cpu_ns": envoy_ns,
        "envoy_cpu_share": envoy_ns / (elapsed * 1e9),
        "other_load_share": max(0, (core_after - core_before) - envoy_ns) / (elapsed * 1e9),
        "load_cpu_share": (usage.ru_utime + usage.ru_stime) / elapsed,
        "connections_opened": cx_after - cx_before,
    }
    return result, measured


def h2load(
    url: str, body_file: Path, headers: dict[str, str], count: int, connections: int = 50, cores: str = str(LOAD_CORE)
) -> int:
    """Sends exactly `count` POSTs (h2load, HTTP/1.1, on `cores`); returns how many got 2xx."""
    command = ["taskset", "-c", cores, "h2load", "--h1", "-t", "1", "-c", str(connections)]
    command += ["-n", str(count), "-d", str(body_file), "-H", "content-type: application/json"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=False)
    match = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if out.returncode != 0 or match is None:
        raise HarnessError(f"h2load failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return int(match.group(1))


# --------------------------------------------------------------------------- the runs


def open_session(envoy: harness.Envoy, client: httpx.Client) -> str:
    """A session on the hot-path listener, initialized as a client would."""
    url = envoy.url(PATH, listener=FILTER)
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    answer = client.post(url, content=INITIALIZE, headers=headers)
    session = answer.headers.get("mcp-session-id")
    if answer.status_code != 200 or not session:
        raise HarnessError(f"initialize through the filter gave {answer.status_code}, no session: {answer.text}")
    headers |= {"mcp-session-id": session, "mcp-protocol-version": PROTOCOL_VERSION}
    answer = client.post(url, content=INITIALIZED, headers=headers)
    if answer.status_code != 200:
        raise HarnessError(f"notifications/initialized gave {answer.status_code}: {answer.text}")
    answer = client.post(url, content=BODIES["tools_call"], headers=headers)
    if answer.status_code != 200:
        raise HarnessError(f"tools/call on the new session gave {answer.status_code}: {answer.text}")
    return session


def preflight(envoy: harness.Envoy, client: httpx.Client, files: dict[str, Path], session: str, unknown: str) -> None:
    """One request of every scenario on every listener answers as the scenario says."""
    for scenario in SCENARIOS:
        for listener in (NOFILTER, EMPTY, scenario.filter_listener):
            headers = {"content-type": "application/json"} | scenario.request_headers(session, unknown)
            url = envoy.url(PATH, listener=listener)
            answer = client.post(url, content=files[scenario.body].read_bytes(), headers=headers)
            want = scenario.filter_status if listener == scenario.filter_listener else 200
            if answer.status_code != want:
                raise HarnessError(
                    f"scenario {scenario.key} on {listener}: {answer.status_code}, expected {want}: {answer.text}"
                )
            if scenario.key == "3" and listener == scenario.filter_listener and "mcp-session-id" not in answer.headers:
                raise HarnessError("scenario 3: the filter answered the initialize without a session")
            if answer.headers.get("connection", "").lower() == "close":
                raise HarnessError(f"scenario {scenario.key} on {listener}: Envoy closes the connection")


def run_matrix(
    envoy: harness.Envoy, client: httpx.Client, files: dict[str, Path], args: argparse.Namespace, problems: list[str]
) -> list[Run]:
    session = open_session(envoy, client)
    # A well-formed ID for the live session's slot with a wrong secret: the store reads the
    # record and compares the secret, the costliest way for an ID to be unknown.
    unknown = session[:8] + secrets.token_hex(16)
    preflight(envoy, client, files, session, unknown)
    modes = (("throughput", args.connections, args.duration), ("latency", 1, args.latency_duration))
    runs: list[Run] = []

    def one(scenario: Scenario, listener: str, mode: str, connections: int, seconds: int, round_no: int) -> Run:
        target = scenario.filter_listener if listener == FILTER else listener
        headers = scenario.request_headers(session, unknown)
        result, measured = wrk(envoy, target, files[scenario.body], headers, connections, seconds)
        requests = result["requests"]
        status_errors = result["errors"]["status"]
        expect_non_2xx = requests if (listener == FILTER and scenario.filter_status >= 300) else 0
        where = f"round {round_no}, scenario {scenario.key}, {listener}, {mode}"
        transport = {k: v for k, v in result["errors"].items() if k != "status" and v}
        if transport:
            problems.append(f"{where}: transport errors {transport}")
        if status_errors != expect_non_2xx:
            problems.append(f"{where}: {status_errors} non-2xx answers of {requests}, expected {expect_non_2xx}")
        # wrk opens one connection of its own before the run (its address check).
        if measured["connections_opened"] > connections + 1:
            problems.append(f"{where}: {measured['connections_opened']} connections for {connections} clients")
        seconds_run = result["duration_us"] / 1e6
        return Run(
            scenario=scenario.key,
            listener=listener,
            mode=mode,
            round=round_no,
            requests=requests,
            seconds=seconds_run,
            rps=requests / seconds_run,
            p50_us=float(result["latency_us"]["p50"]),
            p99_us=float(result["latency_us"]["p99"]),
            envoy_cpu_us_per_request=measured["envoy_cpu_ns"] / 1000 / max(requests, 1),
            envoy_cpu_share=measured["envoy_cpu_share"],
            other_load_share=measured["other_load_share"],
            load_cpu_share=measured["load_cpu_share"],
            connections_opened=measured["connections_opened"],
            non_2xx=status_errors,
            errors=result["errors"],
        )

    if args.warmup > 0:
        log(f"warm-up: {args.warmup:g} s per scenario and listener (discarded)")
        for scenario in SCENARIOS:
            for listener in LISTENERS:
                one(scenario, listener, "throughput", args.connections, args.warmup, 0)
    for round_no in range(1, args.rounds + 1):
        log(f"round {round_no}/{args.rounds}")
        for scenario in SCENARIOS:
            for mode, connections, seconds in modes:
                for listener in LISTENERS:
                    run = one(scenario, listener, mode, connections, seconds, round_no)
                    runs.append(run)
                line = "  ".join(
                    f"{r.listener}={r.rps:,.0f}/s p50={r.p50_us:.0f}us" for r in runs[-len(LISTENERS) :]
                )
                log(f"  {scenario.key} {mode:10} {line}")
    return runs


def run_at_cap(
    envoy: harness.Envoy, client: httpx.Client, files: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    """Initialize on the default configuration once the store is full: 503 after the free-slot
    hint and 16 random probes (before the hint: a scan of the whole table).

    Runs after the matrix, on the hot-path listener, whose store holds one session so far.
    (The stats cannot tell the two stores apart: both listeners' VMs define the same names.)
    """
    cap = 10_000  # the default max_sessions
    log(f"at the cap: filling the default store ({cap - 1:,} initializes)")
    url = envoy.url(PATH, listener=FILTER)
    minted = h2load(url, files["initialize"], {}, cap - 1)
    headers = {"content-type": "application/json"}
    for _ in range(100):  # in case a preflight initialize was not counted as expected
        answer = client.post(url, content=INITIALIZE, headers=headers)
        if answer.status_code == 503:
            break
        minted += 1
    else:
        raise HarnessError("the default store never reached its cap")
    # One request at a time, as when each refused initialize scanned the whole table (a wrk
    # run with 50 connections then only measured its own queue); kept for comparison.
    n = 20
    times = []
    headers = {"content-type": "application/json"}
    cpu_before = cpu_ns(envoy.pid)
    for _ in range(n):
        t0 = time.perf_counter()
        answer = client.post(url, content=INITIALIZE, headers=headers)
        times.append((time.perf_counter() - t0) * 1e6)
        if answer.status_code != 503:
            raise HarnessError(f"at the cap: initialize answered {answer.status_code}, not 503")
    cpu_us = (cpu_ns(envoy.pid) - cpu_before) / 1000 / n
    out = {
        "live": minted + 1,
        "requests": n,
        "p50_us": median(times),
        "max_us": max(times),
        "envoy_cpu_us_per_request": cpu_us,
        "max_rps": 1e6 / cpu_us,
    }
    log(f"  at the cap: p50 {out['p50_us']:,.0f} us, {cpu_us:,.0f} us of Envoy CPU per initialize (all 503)")
    return out


def run_memory(workdir: Path, files: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Heap per live session at 10k and 100k, then a churn of `args.churn` sessions."""
    # Memory, not speed: two workers and the load generator share both cores, so the million
    # initializes take half the time, and the store is written by two workers as in production.
    bootstrap = render_bootstrap(MEMORY_LIVE_CONFIG, MEMORY_CHURN_CONFIG)
    envoy = start_envoy(workdir, "envoy-memory", bootstrap, "warning", workers=2, cores=BOTH_CORES)
    h2load = functools.partial(globals()["h2load"], cores=BOTH_CORES)
    try:
        live_url, churn_url = envoy.url(PATH, listener=FILTER), envoy.url(PATH, listener="filter_initialize")
        # Warm both listeners with requests that create nothing (404: unknown session), on as
        # many connections as the fills use, so that what is allocated once per VM, per
        # connection or per stream is in the baseline and not charged to sessions.
        unknown = {"mcp-session-id": "0" * 40, "mcp-protocol-version": PROTOCOL_VERSION}
        for url in (live_url, churn_url):
            h2load(url, files["tools_call"], unknown, 10_000)
        time.sleep(1)
        base = heap_bytes(envoy)
        out: dict[str, Any] = {"baseline_heap": base, "live": [], "churn": []}
        log(f"memory: baseline heap {base:,} bytes")
        created = 0
        for target in args.live_sets:
            created += h2load(live_url, files["initialize"], {}, target - created)
            live = wait_until("the live gauge", lambda: envoy.stats().get("live", 0) >= target, 10)
            live = envoy.stats()["live"]
            heap = heap_bytes(envoy)
            per = (heap - base) / live
            out["live"].append({"sessions": live, "heap": heap, "bytes_per_session": per})
            log(f"memory: {live:,} live sessions: heap {heap:,} bytes, {per:.0f} bytes per session")
        live_heap = out["live"][-1]["heap"]
        live_set = out["live"][-1]["sessions"]
        if len(out["live"]) >= 2:
            a, b = out["live"][0], out["live"][-1]
            out["marginal_bytes_per_session"] = (b["heap"] - a["heap"]) / (b["sessions"] - a["sessions"])
        # The churn: sessions minted on a store whose idle timeout is short, chunk by chunk.
        chunk = max(1, args.churn // args.churn_checkpoints)
        done = 0
        started = time.monotonic()
        while done < args.churn:
            n = min(chunk, args.churn - done)
            t0 = time.monotonic()
            ok = h2load(churn_url, files["initialize"], {}, n)
            rate = n / (time.monotonic() - t0)
            done += n
            stats = envoy.stats()
            heap = heap_bytes(envoy)
            churn_live = stats.get("live", 0) - live_set
            out["churn"].append({"sent": done, "answered_2xx": ok, "live": churn_live, "heap": heap, "rate": rate})
            log(f"memory: churn {done:,} sent ({rate:,.0f}/s), {churn_live:,} churn sessions live, heap {heap:,}")
        out["churn_seconds"] = time.monotonic() - started
        out["churn_rate"] = args.churn / out["churn_seconds"]
        # Then every churned session expires and the sweep (a full pass in at most ~30 s)
        # frees its slot. The slots themselves stay (Envoy cannot delete a shared-data key):
        # an empty value in a key per slot, as many slots as the churn had at once.
        wait_until(
            "the churned sessions to expire",
            lambda: envoy.stats().get("live", 0) <= live_set,
            MEMORY_CHURN_IDLE_S + 90,
            interval=1,
        )
        time.sleep(1)
        stats = envoy.stats()
        after = heap_bytes(envoy)
        out["after_churn"] = {"heap": after, "live": stats.get("live", 0), "stats": stats}
        out["live_set_heap"] = live_heap
        out["after_churn_vs_live_set"] = after / live_heap
        out["after_churn_residual_bytes"] = after - live_heap
        out["churn_growth"] = out["churn"][-1]["heap"] / out["churn"][0]["heap"]
        log(
            f"memory: after the churn {after:,} bytes: {out['after_churn_vs_live_set']:.3f}x the heap with the "
            f"live set ({after - live_heap:+,} bytes); during the churn the heap grew {out['churn_growth']:.3f}x "
            f"from the first checkpoint to the last"
        )
        out["log_problems"] = envoy.log_problems()
        return out
    finally:
        envoy.stop()


# --------------------------------------------------------------------------- summary


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Medians per scenario and listener; ratios and differences pair by pair per round."""
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        s: dict[str, Any] = {"title": scenario.title}
        for mode in ("throughput", "latency"):
            by = {(r.listener, r.round): r for r in runs if r.scenario == scenario.key and r.mode == mode}
            rounds = sorted({k[1] for k in by})
            m: dict[str, Any] = {}
            for listener in LISTENERS:
                mine = [by[(listener, n)] for n in rounds if (listener, n) in by]
                m[listener] = {
                    "rps": median(r.rps for r in mine),
                    "p50_us": median(r.p50_us for r in mine),
                    "p99_us": median(r.p99_us for r in mine),
                    "cpu_us_per_request": median(r.envoy_cpu_us_per_request for r in mine),
                    "envoy_cpu_share": median(r.envoy_cpu_share for r in mine),
                    "other_load_share": median(r.other_load_share for r in mine),
                    "load_cpu_share": median(r.load_cpu_share for r in mine),
                }

            def paired(f: Callable[[Run, Run], float], a: str, b: str) -> float:
                return median(f(by[(a, n)], by[(b, n)]) for n in rounds if (a, n) in by and (b, n) in by)

            m["ratio_filter_nofilter"] = paired(lambda x, y: x.rps / y.rps, FILTER, NOFILTER)
            m["ratio_filter_floor"] = paired(lambda x, y: x.rps / y.rps, FILTER, EMPTY)
            m["ratio_floor_nofilter"] = paired(lambda x, y: x.rps / y.rps, EMPTY, NOFILTER)
            m["added_p50_us_vs_nofilter"] = paired(lambda x, y: x.p50_us - y.p50_us, FILTER, NOFILTER)
            m["added_p50_us_vs_floor"] = paired(lambda x, y: x.p50_us - y.p50_us, FILTER, EMPTY)
            m["floor_added_p50_us"] = paired(lambda x, y: x.p50_us - y.p50_us, EMPTY, NOFILTER)
            m["added_cpu_us_vs_floor"] = paired(
                lambda x, y: x.envoy_cpu_us_per_request - y.envoy_cpu_us_per_request, FILTER, EMPTY
            )
            m["added_cpu_us_vs_nofilter"] = paired(
                lambda x, y: x.envoy_cpu_us_per_request - y.envoy_cpu_us_per_request, FILTER, NOFILTER
            )
            # The spread of the pair ratios, to show how noisy the run was.
            ratios = [by[(FILTER, n)].rps / by[(EMPTY, n)].rps for n in rounds if (FILTER, n) in by and (EMPTY, n) in by]
            m["ratio_filter_floor_range"] = [min(ratios), max(ratios)] if ratios else []
            s[mode] = m
        out[scenario.key] = s
    return out


def verdicts(summary: dict[str, Any] | None, memory: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each target of the issue, measured against this run."""
    out: list[dict[str, Any]] = []

    def verdict(target: str, measured: str, met: bool) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    for scenario in SCENARIOS if summary else ():
        thr, lat = summary[scenario.key]["throughput"], summary[scenario.key]["latency"]
        ratio = thr["ratio_filter_floor"]
        if scenario.hot_path:
            verdict(f"{scenario.key}: throughput >= {TARGET_HOT_RATIO:.2f}x floor", f"{ratio:.3f}x",
                    ratio >= TARGET_HOT_RATIO)  # fmt: skip
            added = lat["added_p50_us_vs_floor"]
            verdict(f"{scenario.key}: added p50 over floor <= {TARGET_HOT_ADDED_US:g} us", f"{added:+.1f} us",
                    added <= TARGET_HOT_ADDED_US)  # fmt: skip
        elif scenario.key == "3":
            verdict(f"3: throughput >= {TARGET_INIT_RATIO:.2f}x floor", f"{ratio:.3f}x", ratio >= TARGET_INIT_RATIO)
    if memory:
        for point in memory["live"]:
            per = point["bytes_per_session"]
            verdict(f"heap per live session at {point['sessions']:,} <= {TARGET_BYTES_PER_SESSION} B", f"{per:.0f} B",
                    per <= TARGET_BYTES_PER_SESSION)  # fmt: skip
        # The churn keeps its own live set (the sessions of its last few seconds); what must not
        # happen is a heap that grows with the sessions created, or stays up once they expired.
        growth = memory["churn_growth"]
        verdict(f"heap flat during the churn: last / first checkpoint (same live set) <= {1 + TARGET_CHURN_SLACK:.2f}",
                f"{growth:.3f}x", growth <= 1 + TARGET_CHURN_SLACK)  # fmt: skip
        back = memory["after_churn"]["heap"] / memory["churn"][0]["heap"]
        verdict(f"heap after {memory['churn'][-1]['sent']:,} sessions churned and expired within "
                f"{TARGET_CHURN_SLACK:.0%} of the heap with the churn's live set", f"{back:.3f}x",
                back <= 1 + TARGET_CHURN_SLACK)  # fmt: skip
    return out


# --------------------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "wrk": wrk_version[0].split(" Copyright")[0] if wrk_version else "?",
    }


def short_version(version: str) -> str:
    """`<commit>/1.40.0/Clean/RELEASE/BoringSSL` -> `1.40.0 (RELEASE, BoringSSL)`."""
    fields = version.split("/")
    return f"{fields[1]} ({', '.join(fields[3:])})" if len(fields) >= 5 else version


def fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def render_markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["summary"]
    lines = [
        MARK_BEGIN,
        "",
        f"Run of {results['date']} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, "
        f"Envoy {short_version(results['envoy_version'])}, {m['wrk']}.",
        f"Command: `{results['command']}` ({results['rounds']} rounds; throughput: {results['duration']} s of "
        f"`wrk -t1 -c{results['connections']}`, latency: {results['latency_duration']} s of `wrk -t1 -c1`; Envoy "
        f"`--concurrency 1` on core {ENVOY_CORE}, wrk on core {LOAD_CORE}; Envoy log level `{results['log_level']}`).",
        f"Load on Envoy's core from other processes during the runs (median): "
        f"{100 * results['other_load_median']:.0f}%. Load average at the start: "
        + ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
        + ".",
    ]
    spreads = {
        key: value["throughput"]["ratio_filter_floor_range"]
        for key, value in s.items()
        if value["throughput"]["ratio_filter_floor_range"]
    }
    widest = max(spreads.items(), key=lambda kv: kv[1][1] - kv[1][0], default=None)
    causes = []
    if results["other_load_median"] > 0.05:
        causes.append(f"other processes took {100 * results['other_load_median']:.0f}% of Envoy's core")
    if widest and widest[1][1] - widest[1][0] > 0.25:
        causes.append(
            f"the filter/floor ratio of scenario {widest[0]} spread from {widest[1][0]:.2f} to {widest[1][1]:.2f} "
            "across rounds"
        )
    if causes:
        lines.append(
            f"\n**A noisy run**: {'; '.join(causes)}. The medians are indicative; the Envoy CPU time per request "
            "is steadier, and the instruction counts under *Where the time goes* do not move with the load. "
            "Re-run `make bench` on a quiet machine before quoting these numbers."
        )
    lines += [
        "",
        "![throughput and added latency per scenario](bench/results.svg)",
        "",
        "**Throughput at saturation** (requests/s, medians; ratios are medians of per-round pairs):",
        "",
        "| scenario | no filter | empty filter (floor) | session filter | floor / no filter | filter / no filter "
        "| filter / floor (range) | Envoy CPU µs/request: none / floor / filter |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in SCENARIOS:
        t = s[scenario.key]["throughput"]
        rng = t["ratio_filter_floor_range"]
        lines.append(
            f"| {scenario.key}. {scenario.title} | {fmt_rps(t[NOFILTER]['rps'])} | {fmt_rps(t[EMPTY]['rps'])} "
            f"| {fmt_rps(t[FILTER]['rps'])} | {t['ratio_floor_nofilter']:.3f} | {t['ratio_filter_nofilter']:.3f} "
            f"| **{t['ratio_filter_floor']:.3f}** ({rng[0]:.2f}–{rng[1]:.2f}) "
            f"| {t[NOFILTER]['cpu_us_per_request']:.1f} / {t[EMPTY]['cpu_us_per_request']:.1f} "
            f"/ {t[FILTER]['cpu_us_per_request']:.1f} |"
        )
    lines += [
        "",
        "**Latency at concurrency 1** (µs, medians; added = filter − other, per-round pairs):",
        "",
        "| scenario | p50 none / floor / filter | p99 none / floor / filter | floor adds (p50) "
        "| filter adds vs no filter (p50) | filter adds vs floor (p50) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for scenario in SCENARIOS:
        t = s[scenario.key]["latency"]
        lines.append(
            f"| {scenario.key}. {scenario.title} "
            f"| {t[NOFILTER]['p50_us']:.0f} / {t[EMPTY]['p50_us']:.0f} / {t[FILTER]['p50_us']:.0f} "
            f"| {t[NOFILTER]['p99_us']:.0f} / {t[EMPTY]['p99_us']:.0f} / {t[FILTER]['p99_us']:.0f} "
            f"| {t['floor_added_p50_us']:+.1f} | {t['added_p50_us_vs_nofilter']:+.1f} "
            f"| **{t['added_p50_us_vs_floor']:+.1f}** |"
        )
    cap = results.get("at_cap")
    if cap:
        lines += [
            "",
            f"**Initialize at the cap** (the default configuration once {cap['live']:,} sessions = `max_sessions` "
            f"are live; {cap['requests']} initializes one at a time, every answer a 503): p50 "
            f"{cap['p50_us']:,.0f} µs, {cap['envoy_cpu_us_per_request']:,.0f} µs of Envoy CPU per request, so at "
            f"most {cap['max_rps']:,.0f} refused initializes per second per worker.",
        ]
    mem = results.get("memory")
    if mem:
        lines += [
            "",
            "**Memory** (Envoy heap: admin `/memory`, `allocated`; a separate Envoy run with 2 workers, "
            f"`max_sessions` {MEMORY_LIVE_CONFIG['max_sessions']:,}, idle timeout "
            f"{MEMORY_LIVE_CONFIG['idle_timeout_seconds']} s for the live set; churn on a second store with "
            f"idle timeout {MEMORY_CHURN_IDLE_S} s):",
            "",
            "| measurement | heap (bytes) | per session |",
            "|---|--:|--:|",
            f"| baseline (no session) | {mem['baseline_heap']:,} | |",
        ]
        for point in mem["live"]:
            lines.append(
                f"| {point['sessions']:,} live sessions | {point['heap']:,} | **{point['bytes_per_session']:.0f} B** |"
            )
        if "marginal_bytes_per_session" in mem:
            lines.append(f"| marginal, between the two | | {mem['marginal_bytes_per_session']:.0f} B |")
        for point in mem["churn"]:
            lines.append(
                f"| churn: {point['sent']:,} initializes sent ({point['live']:,} churn sessions live, "
                f"{point['rate']:,.0f}/s) | {point['heap']:,} | |"
            )
        back = mem["after_churn"]["heap"] / mem["churn"][0]["heap"]
        lines.append(
            f"| after the churn, every churned session expired ({mem['after_churn']['live']:,} live) "
            f"| {mem['after_churn']['heap']:,} | **{back:.3f}×** the heap at the first churn checkpoint; "
            f"{mem['after_churn_vs_live_set']:.3f}× the heap with the live set before the churn "
            f"({mem['after_churn_residual_bytes']:+,} bytes: the churn store's slots, one key each, kept) |"
        )
    lines += ["", "**Targets** (issue 4):", "", "| target | measured | met |", "|---|--:|:-:|"]
    for v in results["verdicts"]:
        lines.append(f"| {v['target']} | {v['measured']} | {'yes' if v['met'] else '**no**'} |")
    if results["problems"]:
        lines += ["", "**Harness checks that failed** (the numbers above are suspect):", ""]
        lines += [f"- {p}" for p in results["problems"]]
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_section(section: str, begin_mark: str = MARK_BEGIN, end_mark: str = MARK_END) -> None:
    """Replaces the section between two markers of BENCHMARKS.md (appends it if absent)."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    begin, end = text.find(begin_mark), text.find(end_mark)
    if begin < 0 or end < begin:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = text[:begin] + section + text[end + len(end_mark) :]
    BENCHMARKS_MD.write_text(text)


def render_svg(results: dict[str, Any]) -> str:
    """Two panels: throughput per listener, and the p50 latency each filter adds."""
    s = results["summary"]
    keys = [sc.key for sc in SCENARIOS]
    titles = {sc.key: sc.short for sc in SCENARIOS}
    colours = {NOFILTER: "#9e9e9e", EMPTY: "#90caf9", FILTER: "#1565c0"}
    width, panel_h, left, top = 900, 300, 70, 40
    plot_w = width - left - 20
    group_w = plot_w / len(keys)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_h + 130}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="100%" height="100%" fill="white"/>',
    ]

    def text(x: float, y: float, body: str, anchor: str = "middle", size: int = 12, weight: str = "normal") -> None:
        body = body.replace("&", "&amp;").replace("<", "&lt;")
        out.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" font-weight="{weight}">{body}</text>'
        )

    def axis(y0: float, h: float, vmax: float, ticks: int, unit: str) -> Callable[[float], float]:
        # A round step (1, 2, 2.5 or 5 times a power of ten) and an axis that ends on one.
        raw = vmax / ticks
        power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
        step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
        ticks = math.ceil(vmax / step)
        vmax = ticks * step
        scale = lambda v: y0 + h - (v / vmax) * h  # noqa: E731
        for i in range(ticks + 1):
            v = step * i
            y = scale(v)
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
            text(left - 6, y + 4, f"{v:,.0f}{unit}", anchor="end", size=11)
        out.append(f'<line x1="{left}" x2="{left}" y1="{y0}" y2="{y0 + h}" stroke="#616161"/>')
        return scale

    m = results["machine"]
    text(width / 2, 14, f"{results['date']}, {m['nproc']} cores ({m['cpu']}), Envoy "
         f"{short_version(results['envoy_version'])} --concurrency 1; median of {results['rounds']} rounds", size=11)
    # Panel 1: throughput.
    y0, h = top + 10, panel_h - 60
    text(width / 2, y0 - 16, "Throughput at saturation (requests/s, median)", size=14, weight="bold")
    vmax = max(s[k]["throughput"][lst]["rps"] for k in keys for lst in LISTENERS) * 1.1
    scale = axis(y0, h, vmax, 5, "")
    bar_w = group_w / 4.5
    for i, k in enumerate(keys):
        x0 = left + i * group_w + group_w / 2 - 1.5 * bar_w
        for j, lst in enumerate(LISTENERS):
            v = s[k]["throughput"][lst]["rps"]
            y = scale(v)
            out.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{y0 + h - y:.1f}" '
                f'fill="{colours[lst]}"/>'
            )
        ratio = s[k]["throughput"]["ratio_filter_floor"]
        text(x0 + 2.5 * bar_w, scale(s[k]["throughput"][FILTER]["rps"]) - 5, f"{ratio:.2f}x", size=11)
        text(left + i * group_w + group_w / 2, y0 + h + 16, f"{k}. {titles[k]}", size=11)
    # Legend.
    lx = left + 10
    for lst in LISTENERS:
        out.append(f'<rect x="{lx}" y="{y0 + h + 28}" width="12" height="12" fill="{colours[lst]}"/>')
        text(lx + 16, y0 + h + 38, LABELS[lst], anchor="start", size=11)
        lx += 170
    text(lx + 10, y0 + h + 38, "(label: session filter / floor)", anchor="start", size=11)

    # Panel 2: added p50 latency.
    y0 = top + panel_h + 60
    text(width / 2, y0 - 16, "Added p50 latency at concurrency 1 (µs over no filter, median of pairs)", size=14,
         weight="bold")  # fmt: skip
    added = {
        k: (s[k]["latency"]["floor_added_p50_us"], s[k]["latency"]["added_p50_us_vs_nofilter"]) for k in keys
    }
    vmax = max(max(max(a, b) for a, b in added.values()) * 1.1, 10)
    scale = axis(y0, h, vmax, 5, "")
    for i, k in enumerate(keys):
        x0 = left + i * group_w + group_w / 2 - bar_w
        for j, (lst, v) in enumerate(zip((EMPTY, FILTER), added[k])):
            v = max(v, 0)
            y = scale(v)
            out.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{y0 + h - y:.1f}" '
                f'fill="{colours[lst]}"/>'
            )
            text(x0 + j * bar_w + bar_w / 2, y - 5, f"{added[k][j]:.0f}", size=11)
        if any(sc.key == k and sc.hot_path for sc in SCENARIOS):
            # The target: at most 5 µs over the floor.
            y = scale(min(added[k][0] + TARGET_HOT_ADDED_US, vmax))
            out.append(
                f'<line x1="{x0 - 4:.1f}" x2="{x0 + 2 * bar_w + 2:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#c62828" stroke-dasharray="4 3"/>'
            )
        text(left + i * group_w + group_w / 2, y0 + h + 16, f"{k}. {titles[k]}", size=11)
    lx = left + 10
    for lst in (EMPTY, FILTER):
        out.append(f'<rect x="{lx}" y="{y0 + h + 28}" width="12" height="12" fill="{colours[lst]}"/>')
        text(lx + 16, y0 + h + 38, LABELS[lst], anchor="start", size=11)
        lx += 170
    out.append(
        f'<line x1="{lx}" x2="{lx + 20}" y1="{y0 + h + 34}" y2="{y0 + h + 34}" stroke="#c62828" '
        'stroke-dasharray="4 3"/>'
    )
    text(lx + 26, y0 + h + 38, "target: floor + 5 µs (hot path)", anchor="start", size=11)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every scenario (default 5)")
    parser.add_argument("--duration", type=int, default=2, help="seconds per throughput run, whole (default 2)")
    parser.add_argument("--latency-duration", type=int, default=1, help="seconds per latency run (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of discarded warm-up per pair (default 1)")
    parser.add_argument("--connections", type=int, default=50, help="connections for throughput (default 50)")
    parser.add_argument("--log-level", default="info", help="Envoy's log level in the matrix (default: Envoy's, info)")
    parser.add_argument("--churn", type=int, default=1_000_000, help="sessions churned (default 1,000,000)")
    parser.add_argument("--churn-checkpoints", type=int, default=5, help="heap readings during the churn")
    parser.add_argument("--live-sets", type=int, nargs="+", default=[10_000, 100_000], help="live sessions measured")
    parser.add_argument("--skip-memory", action="store_true", help="no memory run")
    parser.add_argument("--skip-matrix", action="store_true", help="only the memory run")
    parser.add_argument("--no-write", action="store_true", help="print, but do not write results and BENCHMARKS.md")
    parser.add_argument("--command", default="make bench", help="the command recorded in BENCHMARKS.md")
    parser.add_argument("--scenarios", default="", help="run only these scenarios, e.g. 1,3 (default: all)")
    parser.add_argument("--render", action="store_true", help="only re-render BENCHMARKS.md and the chart from results.json")
    args = parser.parse_args()
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        global SCENARIOS
        SCENARIOS = tuple(sc for sc in SCENARIOS if sc.key in wanted)
        if not SCENARIOS:
            raise HarnessError(f"no scenario in {args.scenarios!r}")
    if args.render:
        results = json.loads(RESULTS_JSON.read_text())
        results["verdicts"] = verdicts(results.get("summary"), results.get("memory"))
        RESULTS_SVG.write_text(render_svg(results))
        write_section(render_markdown(results))
        return 0

    for tool in ("wrk", "h2load", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} is not installed (bench/run.sh installs it)")
    for path in (ENVOY, WASM_FILTER, WASM_EMPTY):
        if not path.exists():
            raise HarnessError(f"{path.relative_to(REPO)} is missing (run `make bench`)")
    if (os.cpu_count() or 1) < 2:
        raise HarnessError("needs 2 cores: Envoy on one, the load generator on the other")

    workdir = BENCH / "out"
    workdir.mkdir(exist_ok=True)
    files = {}
    for name, body in BODIES.items():
        files[name] = workdir / f"{name}.json"
        files[name].write_bytes(body)

    started = time.monotonic()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "command": args.command,
        "rounds": args.rounds,
        "duration": args.duration,
        "latency_duration": args.latency_duration,
        "connections": args.connections,
        "log_level": args.log_level,
        "configs": {"filter": FILTER_CONFIG, "filter_initialize": INITIALIZE_CONFIG},
    }
    problems: list[str] = []
    runs: list[Run] = []
    if not args.skip_matrix:
        envoy = start_envoy(workdir, "envoy", render_bootstrap(FILTER_CONFIG, INITIALIZE_CONFIG), args.log_level)
        client = httpx.Client(timeout=10)  # one keep-alive connection for the requests made one by one
        try:
            results["envoy_version"] = envoy_version(envoy)
            log(f"Envoy {results['envoy_version']} (pid {envoy.pid}) on core {ENVOY_CORE}; ports {envoy.ports}")
            runs = run_matrix(envoy, client, files, args, problems)
            results["filter_stats"] = envoy.stats()
            results["at_cap"] = run_at_cap(envoy, client, files, args)
            problems += [f"Envoy log: {line}" for line in envoy.log_problems()[:10]]
        finally:
            client.close()
            envoy.stop()
        results["runs"] = [vars(r) for r in runs]
        results["summary"] = summarise(runs)
        results["other_load_median"] = median(r.other_load_share for r in runs)
    if not args.skip_memory:
        results["memory"] = run_memory(workdir, files, args)
        problems += [f"Envoy log (memory run): {line}" for line in results["memory"].pop("log_problems")[:10]]
        results.setdefault("envoy_version", subprocess.run([str(ENVOY), "--version"], capture_output=True,
                                                           text=True).stdout.split("version:")[-1].strip())
    results["problems"] = problems
    results["seconds"] = round(time.monotonic() - started, 1)
    if "summary" in results:
        results["verdicts"] = verdicts(results["summary"], results.get("memory"))
        section = render_markdown(results)
        print(section)
        if not args.no_write:
            RESULTS_SVG.write_text(render_svg(results))
            write_section(section)
    else:
        results["verdicts"] = verdicts(None, results.get("memory"))
        print(json.dumps({k: results[k] for k in ("memory", "verdicts")}, indent=1))
    if not args.no_write:
        RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
    log(f"done in {results['seconds']:.0f} s")
    for p in problems:
        log(f"CHECK FAILED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except harness.HarnessError as e:  # the benchmark's own, or Envoy not starting
        log(f"error: {e}")
        sys.exit(2)
