"""The filter's cost against Envoy without it, measured in one run (`make bench`).

One Envoy (`--concurrency 1`, pinned to core 0) with listeners that differ only in the filter
(bench/envoy.bench.yaml): none (the limit); the Wasm build: the empty filter (the Wasm floor:
any V8 Wasm filter; bench/empty-filter) and the session filter; the native build: the empty
dynamic module (the native floor: any dynamic module; bench/empty-native) and the session
module (libmcp_session_native.so, the same JSON configuration); and, on the session hot path,
Envoy's own `envoy.filters.http.mcp`. wrk (pinned to core 1) drives five scenarios, listener
after listener, for several rounds; every figure reported is a median over rounds, and every
ratio is taken pair by pair within a round before its median. Then, once per build, another
Envoy run measures the heap against the heap before the first session: per live session at
the peak, what is left per peak session once every session expired, and the same after a
churn of a million sessions on a second store.

Writes bench/results.json, with its provenance (bench/provenance.py: commit, clean tree, the
SHA-256 of the Wasm modules and native modules measured, machine, settings); bench/report.py
turns it into the tables of BENCHMARKS.md and bench/results.svg (bench/run.sh runs it after
the runs). Exits non-zero when a check of the harness failed (a wrong status, a closed
connection, a transport error): then the numbers are not what they say they are. Missing a
performance target is reported, not an error.

Run it through `make bench` (bash bench/run.sh), which installs wrk and h2load and builds the
filters first. Environment-free; the knobs are the flags (see --help).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import string
import subprocess
import sys
import threading
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
import report  # noqa: E402

BENCH = REPO / "bench"
ENVOY = harness.ENVOY_BIN
WASM_FILTER = REPO / "target" / "wasm32-wasip1" / "release" / "mcp_session_filter.wasm"
WASM_EMPTY = BENCH / "empty-filter" / "target" / "wasm32-wasip1" / "release" / "empty_filter.wasm"
NATIVE_FILTER = harness.NATIVE  # target/release/libmcp_session_native.so (make build)
NATIVE_EMPTY = BENCH / "empty-native" / "target" / "release" / "libempty_native.so"
# The session floor: the empty module built with its `session-floor` feature (the least any
# session module does per request; measured by bench/profile.py only).
NATIVE_SESSION_FLOOR = BENCH / "empty-native" / "target" / "session-floor" / "release" / "libempty_native.so"
TEMPLATE = BENCH / "envoy.bench.yaml"
WRK_SCRIPT = BENCH / "wrk.lua"
RESULTS_JSON = BENCH / "results.json"

ENVOY_CORE = 0
LOAD_CORE = 1
BOTH_CORES = f"{ENVOY_CORE},{LOAD_CORE}"
PATH = "/mcp"
PROTOCOL_VERSION = "2025-11-25"
SESSIONLESS_VERSION = "2026-07-28"

# The listeners the scenarios compare, in the order they run within a round (the order the
# report's tables show them in, so they are defined once, there): Envoy alone, the Wasm build
# (its floor, the session filter), the native build (its floor, the session module), and
# Envoy's own MCP filter, on the scenarios that name it (Scenario.builtin) only.
NOFILTER, EMPTY, FILTER = report.NOFILTER, report.EMPTY, report.FILTER
EMPTY_NATIVE, NATIVE, MCP = report.EMPTY_NATIVE, report.NATIVE, report.MCP
LISTENERS = report.LISTENERS
LABELS = report.LABELS
# The listeners with sessions, by build; each answers a scenario with its `filter_status`.
BUILDS = {"wasm": FILTER, "native": NATIVE}
SESSION_LISTENERS = tuple(BUILDS.values())
# Where each build's stats show in /stats (the same names after the prefix).
STATS_PREFIX = {"wasm": "wasmcustom.mcp_session.", "native": "dynamicmodulescustom.mcp_session."}

# The hot-path listener's plugin configuration: the defaults.
FILTER_CONFIG: dict[str, Any] = {}
# Scenario 3 mints a session per request. With the defaults (10,000 sessions, 30 min idle) the
# store is full after about a second of load, and every initialize after that is refused with
# 503 after a bounded number of probes, which is a different path (measured apart, "at the
# cap"). So scenario 3 runs on a listener of its own (its own vm_id, so its own store) whose
# only change is a capacity the run cannot reach: every initialize takes the normal path of a
# store that only grows (the free-slot hint is empty, so the table grows by one slot).
INITIALIZE_CONFIG: dict[str, Any] = {"max_sessions": 10_000_000}
# The native listeners get the same JSON plus a "table" of their own: a Wasm listener's store
# is its VM's (its vm_id), a native listener's is the table it names (default "default", which
# every listener would then share).
NATIVE_TABLES = {"filter": "bench_native", "initialize": "bench_native_initialize"}

# The memory run: a store that holds the live set (its idle timeout, --live-idle, outlasts the
# fill and then lets every session expire), and one that churns (short idle, so the sweep and
# the probes reclaim expired slots while the churn goes on).
MEMORY_LIVE_CONFIG: dict[str, Any] = {"max_sessions": 200_000}
MEMORY_CHURN_IDLE_S = 2
MEMORY_CHURN_CONFIG: dict[str, Any] = {"max_sessions": 200_000, "idle_timeout_seconds": MEMORY_CHURN_IDLE_S}

# Targets from issue 4 (throughput and latency, against the floor).
TARGET_HOT_RATIO = 0.90  # throughput vs the floor, scenarios 1, 2, 4
TARGET_HOT_ADDED_US = 5.0  # added p50 over the floor, scenarios 1, 2, 4
TARGET_INIT_RATIO = 0.80  # throughput vs the floor, scenario 3
# Memory, against the heap before the first session (issue 19). A live session holds its
# record, its key and Envoy's map entry: at most 256 bytes of heap each (issue 4). Once a
# session expired, its record is freed, but on the Wasm build its slot's key stays: the
# proxy-wasm ABI cannot delete a shared-data key (docs/DESIGN.md), so what is left is one key
# and its map entry per slot, as many slots as sessions were ever live at once (the peak), not
# one per session ever created. What is left may be at most half of the live budget: the
# record must be gone, and nothing may grow with the sessions created.
TARGET_BYTES_PER_LIVE_SESSION = 256
TARGET_BYTES_LEFT_PER_PEAK_SESSION = 128
TARGET_CHURN_SLACK = 0.10  # the heap during the churn: last checkpoint / first
# Targets of the native build (issue 17), against Envoy without a filter; the memory targets
# are the Wasm build's (the native table keeps shared data's semantics, a key per slot).
TARGET_NATIVE_HOT_RATIO = 0.95  # throughput vs no filter, NATIVE_HOT_SCENARIOS
NATIVE_HOT_SCENARIOS = ("1", "2")  # the session hot path and the 64 KiB call
TARGET_NATIVE_INIT_RATIO = 0.85  # throughput vs no filter, scenario 3
TARGET_NATIVE_VS_MCP = 1.5  # throughput vs Envoy's mcp filter, scenario 1


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
    own_store: bool  # the session listeners' side runs on `<listener>_initialize` (see below)
    filter_status: int  # what the session filter answers (the others answer 200)
    hot_path: bool
    builtin: bool = False  # Envoy's mcp filter runs this scenario too

    def request_headers(self, session: str, unknown: str) -> dict[str, str]:
        return {k: v.format(session=session, unknown=unknown) for k, v in self.headers.items()}

    def listeners(self) -> tuple[str, ...]:
        return tuple(x for x in LISTENERS if x != MCP or self.builtin)

    def target(self, listener: str) -> str:
        """The listener a run of this scenario on `listener` goes to."""
        return f"{listener}_initialize" if self.own_store and listener in SESSION_LISTENERS else listener

    def status(self, listener: str) -> int:
        return self.filter_status if listener in SESSION_LISTENERS else 200


SESSION_HEADERS = {"mcp-session-id": "{session}", "mcp-protocol-version": PROTOCOL_VERSION}
SCENARIOS = (
    Scenario("1", "hot path: tools/call on a session", "hot path", "tools_call", SESSION_HEADERS, False, 200, True,
             builtin=True),
    Scenario("2", "hot path: 64 KiB tools/call on a session", "hot path, 64 KiB", "tools_call_64k", SESSION_HEADERS,
             False, 200, True),
    Scenario("3", "initialize (mints a session)", "initialize", "initialize", {}, True, 200, False),
    Scenario(
        "4",
        "sessionless era (2026-07-28) passes",
        "sessionless era",
        "tools_call",
        {"mcp-protocol-version": SESSIONLESS_VERSION},
        False,
        200,
        True,
    ),
    Scenario(
        "5",
        "unknown session: 404",
        "unknown session",
        "tools_call",
        {"mcp-session-id": "{unknown}", "mcp-protocol-version": PROTOCOL_VERSION},
        False,
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


def native_config(config: dict[str, Any], store: str) -> dict[str, Any]:
    """A Wasm listener's JSON for the native listener in its place: the same, and its own table."""
    return config | {"table": NATIVE_TABLES[store]}


def render_bootstrap(config_filter: dict[str, Any], config_initialize: dict[str, Any]) -> dict[str, Any]:
    """bench/envoy.bench.yaml with the modules and the two configurations (each build gets both)."""
    text = string.Template(TEMPLATE.read_text()).substitute(
        admin_port=0,
        wasm_empty=str(WASM_EMPTY),
        wasm_filter=str(WASM_FILTER),
        native_empty=str(NATIVE_EMPTY),
        native_session_floor=str(NATIVE_SESSION_FLOOR),
        native_filter=str(NATIVE_FILTER),
        config_filter=json.dumps(config_filter),
        config_initialize=json.dumps(config_initialize),
        config_native=json.dumps(native_config(config_filter, "filter")),
        config_native_initialize=json.dumps(native_config(config_initialize, "initialize")),
    )
    return yaml.safe_load(text)


def filter_stats(envoy: harness.Envoy, build: str) -> dict[str, int]:
    """One build's stats, names without its prefix (the harness's `stats` reads one build's only)."""
    prefix = STATS_PREFIX[build]
    out: dict[str, int] = {}
    for line in envoy.admin_get("/stats?filter=mcp_session").text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name.startswith(prefix) and value.strip().lstrip("-").isdigit():
            out[name[len(prefix) :]] = int(value)
    return out


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
    prefix = listener  # every listener's stat_prefix is its name
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
    url: str, body_file: Path, headers: dict[str, str], count: int, connections: int = 50, cores: str = str(LOAD_CORE),
    rate: int = 0,
) -> int:
    """Sends exactly `count` POSTs (h2load, HTTP/1.1, on `cores`; at most `rate` a second in
    all, when it is not 0); returns how many got 2xx."""
    command = ["taskset", "-c", cores, "h2load", "--h1", "-t", "1", "-c", str(connections)]
    if rate:
        command += ["--rps", str(max(1, rate // connections))]
    command += ["-n", str(count), "-d", str(body_file), "-H", "content-type: application/json"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=False)
    match = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if out.returncode != 0 or match is None:
        raise HarnessError(f"h2load failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return int(match.group(1))


# --------------------------------------------------------------------------- the runs


def open_session(envoy: harness.Envoy, client: httpx.Client, listener: str = FILTER) -> str:
    """A session on a build's hot-path listener, initialized as a client would."""
    url = envoy.url(PATH, listener=listener)
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


@dataclass(frozen=True)
class Sessions:
    """The session each session listener's runs use, and a well-formed unknown ID for it."""

    live: dict[str, str]
    unknown: dict[str, str]

    def headers(self, scenario: Scenario, listener: str) -> dict[str, str]:
        # The listeners without sessions get the Wasm build's IDs: the same bytes, ignored.
        key = listener if listener in self.live else FILTER
        return scenario.request_headers(self.live[key], self.unknown[key])


def preflight(envoy: harness.Envoy, client: httpx.Client, files: dict[str, Path], sessions: Sessions) -> None:
    """One request of every scenario on every listener answers as the scenario says."""
    for scenario in SCENARIOS:
        for listener in scenario.listeners():
            target = scenario.target(listener)
            headers = {"content-type": "application/json"} | sessions.headers(scenario, listener)
            url = envoy.url(PATH, listener=target)
            answer = client.post(url, content=files[scenario.body].read_bytes(), headers=headers)
            want = scenario.status(listener)
            if answer.status_code != want:
                raise HarnessError(
                    f"scenario {scenario.key} on {target}: {answer.status_code}, expected {want}: {answer.text}"
                )
            if scenario.key == "3" and listener in SESSION_LISTENERS and "mcp-session-id" not in answer.headers:
                raise HarnessError(f"scenario 3: {target} answered the initialize without a session")
            if answer.headers.get("connection", "").lower() == "close":
                raise HarnessError(f"scenario {scenario.key} on {target}: Envoy closes the connection")


def run_matrix(
    envoy: harness.Envoy, client: httpx.Client, files: dict[str, Path], args: argparse.Namespace, problems: list[str]
) -> list[Run]:
    live = {listener: open_session(envoy, client, listener) for listener in SESSION_LISTENERS}
    # A well-formed ID for the live session's slot with a wrong secret: the store reads the
    # record and compares the secret, the costliest way for an ID to be unknown.
    sessions = Sessions(live, {k: v[:8] + secrets.token_hex(16) for k, v in live.items()})
    preflight(envoy, client, files, sessions)
    modes = (("throughput", args.connections, args.duration), ("latency", 1, args.latency_duration))
    runs: list[Run] = []

    def one(scenario: Scenario, listener: str, mode: str, connections: int, seconds: int, round_no: int) -> Run:
        target = scenario.target(listener)
        headers = sessions.headers(scenario, listener)
        result, measured = wrk(envoy, target, files[scenario.body], headers, connections, seconds)
        requests = result["requests"]
        status_errors = result["errors"]["status"]
        expect_non_2xx = requests if scenario.status(listener) >= 300 else 0
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
            for listener in scenario.listeners():
                one(scenario, listener, "throughput", args.connections, args.warmup, 0)
    for round_no in range(1, args.rounds + 1):
        log(f"round {round_no}/{args.rounds}")
        for scenario in SCENARIOS:
            for mode, connections, seconds in modes:
                for listener in scenario.listeners():
                    run = one(scenario, listener, mode, connections, seconds, round_no)
                    runs.append(run)
                line = "  ".join(
                    f"{r.listener}={r.rps:,.0f}/s p50={r.p50_us:.0f}us" for r in runs[-len(scenario.listeners()) :]
                )
                log(f"  {scenario.key} {mode:10} {line}")
    return runs


def run_at_cap(
    envoy: harness.Envoy, client: httpx.Client, files: dict[str, Path], args: argparse.Namespace, listener: str = FILTER
) -> dict[str, Any]:
    """Initialize on the default configuration once the store is full: 503 after the free-slot
    hint and 16 random probes (before the hint: a scan of the whole table).

    Runs after the matrix, on a build's hot-path listener, whose store holds one session so far.
    (The stats cannot tell the two stores apart: both listeners define the same names.)
    """
    cap = 10_000  # the default max_sessions
    log(f"at the cap ({listener}): filling the default store ({cap - 1:,} initializes)")
    url = envoy.url(PATH, listener=listener)
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
    log(f"  at the cap ({listener}): p50 {out['p50_us']:,.0f} us, {cpu_us:,.0f} us of Envoy CPU per initialize "
        "(all 503)")
    return out


def run_memory(workdir: Path, files: dict[str, Path], args: argparse.Namespace, build: str = "wasm") -> dict[str, Any]:
    """The heap against the heap before the first session: per live session at the peak, and
    what is left per peak session once every session expired; then a churn of `args.churn`
    sessions on a second store, and again what is left once they expired. One build's
    listeners (`build`: wasm or native) in an Envoy of their own: the native module's sessions
    are in process memory, the Wasm's in Envoy's shared data, both in the same heap."""
    # Memory, not speed: two workers and the load generator share both cores, so the million
    # initializes take half the time, and the store is written by two workers as in production.
    live_config = MEMORY_LIVE_CONFIG | {"idle_timeout_seconds": args.live_idle}
    bootstrap = render_bootstrap(live_config, MEMORY_CHURN_CONFIG)
    name = "envoy-memory" if build == "wasm" else f"envoy-memory-{build}"
    envoy = start_envoy(workdir, name, bootstrap, "warning", workers=2, cores=BOTH_CORES)
    h2load = functools.partial(globals()["h2load"], cores=BOTH_CORES)
    stats = functools.partial(filter_stats, envoy, build)
    listener = BUILDS[build]
    log(f"memory ({build}): listeners {listener} and {listener}_initialize")
    try:
        live_url, churn_url = envoy.url(PATH, listener=listener), envoy.url(PATH, listener=f"{listener}_initialize")
        # Warm both listeners with requests that create nothing (404: unknown session), on as
        # many connections as the fills use, so that what is allocated once per VM, per
        # connection or per stream is in the baseline and not charged to sessions.
        unknown = {"mcp-session-id": "0" * 40, "mcp-protocol-version": PROTOCOL_VERSION}
        for url in (live_url, churn_url):
            h2load(url, files["tools_call"], unknown, 10_000)
        time.sleep(1)
        if stats().get("created", 0):
            raise HarnessError("the memory run's baseline has sessions in it")
        base = heap_bytes(envoy)
        out: dict[str, Any] = {
            "build": build,
            "configs": {"live": live_config, "churn": MEMORY_CHURN_CONFIG},
            "churn_rate_asked": args.churn_rate,
            "workers": 2,
            "baseline_heap": base,
            "live": [],
            "churn": [],
        }
        log(f"memory ({build}): heap before the first session {base:,} bytes")

        # 1. The live set, on a store whose idle timeout outlasts the fill: every reading is
        # taken while every session created is still live. Then all of them expire.
        created = 0
        first = time.monotonic()
        for target in args.live_sets:
            created += h2load(live_url, files["initialize"], {}, target - created)
            wait_until("the live gauge", lambda: stats().get("live", 0) >= target, 10)
            live = stats()["live"]
            heap = heap_bytes(envoy)
            if time.monotonic() - first >= args.live_idle - 1:
                raise HarnessError(
                    f"the live set took {time.monotonic() - first:.0f} s to fill: its first sessions may have "
                    f"expired before the reading (raise --live-idle above {args.live_idle} s)"
                )
            per = (heap - base) / live
            out["live"].append({"sessions": live, "heap": heap, "bytes_per_session": per})
            log(f"memory ({build}): {live:,} live sessions: heap {heap:,} bytes, {per:.0f} bytes per session over "
                "the baseline")
        peak = out["live"][-1]["sessions"]
        if len(out["live"]) >= 2:
            a, b = out["live"][0], out["live"][-1]
            out["marginal_bytes_per_session"] = (b["heap"] - a["heap"]) / (b["sessions"] - a["sessions"])
        # Expiry, then the sweep (a full pass of the table in at most ~30 s) ends them.
        t0 = time.monotonic()
        wait_until("the live set to expire", lambda: stats().get("live", 0) == 0, args.live_idle + 90, 1)
        time.sleep(1)
        heap = heap_bytes(envoy)
        out["live_expired"] = {
            "peak": peak,
            "heap": heap,
            "stats": stats(),
            "wait_seconds": round(time.monotonic() - t0, 1),
            "left_per_peak_session": (heap - base) / peak,
        }
        log(
            f"memory ({build}): every live-set session expired: heap {heap:,} bytes, "
            f"{(heap - base) / peak:.0f} bytes per peak session over the baseline"
        )

        # 2. The churn: sessions minted on a store whose idle timeout is short, chunk by chunk;
        # the live gauge is polled meanwhile for the churn's peak (the live set is gone). At a
        # fixed rate: the churn's live set (the sessions of its last few seconds) follows the
        # rate, and the heap follows the live set, so at whatever rate h2load reached the heap
        # moved with it (a first chunk slower than the rest, still starting, made a heap that
        # tracked the live set exactly look 10% up between the first and the last checkpoint).
        chunk = max(1, args.churn // args.churn_checkpoints)
        done = 0
        started = time.monotonic()
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append(stats().get("live", 0))
                except Exception:  # noqa: BLE001 (an admin call that timed out under load: skip it)
                    pass
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            while done < args.churn:
                n = min(chunk, args.churn - done)
                t0 = time.monotonic()
                ok = h2load(churn_url, files["initialize"], {}, n, rate=args.churn_rate)
                rate = n / (time.monotonic() - t0)
                done += n
                churn_live = stats().get("live", 0)
                heap = heap_bytes(envoy)
                out["churn"].append({"sent": done, "answered_2xx": ok, "live": churn_live, "heap": heap, "rate": rate})
                log(f"memory ({build}): churn {done:,} sent ({rate:,.0f}/s), {churn_live:,} churn sessions live, "
                    f"heap {heap:,}")
        finally:
            stop.set()
            sampler.join()
        out["churn_seconds"] = time.monotonic() - started
        out["churn_rate"] = args.churn / out["churn_seconds"]
        out["churn_peak"] = max(samples + [c["live"] for c in out["churn"]])
        out["churn_samples"] = len(samples)
        out["churn_growth"] = out["churn"][-1]["heap"] / out["churn"][0]["heap"]
        # Then every churned session expires and the sweep frees its slot. The slots themselves
        # stay (Envoy cannot delete a shared-data key): an empty value in a key per slot, as many
        # slots as the store had at once.
        t0 = time.monotonic()
        wait_until(
            "the churned sessions to expire",
            lambda: stats().get("live", 0) == 0,
            MEMORY_CHURN_IDLE_S + 90,
            interval=1,
        )
        time.sleep(1)
        after = heap_bytes(envoy)
        peaks = peak + out["churn_peak"]
        out["after_churn"] = {
            "heap": after,
            "stats": stats(),
            "wait_seconds": round(time.monotonic() - t0, 1),
            "peaks": peaks,
            "left_per_peak_session": (after - base) / peaks,
            "churn_left_per_peak_session": (after - out["live_expired"]["heap"]) / out["churn_peak"],
        }
        log(
            f"memory ({build}): after the churn, everything expired: heap {after:,} bytes, "
            f"{(after - base) / peaks:.0f} bytes per peak session over the baseline (peaks {peak:,} + "
            f"{out['churn_peak']:,}); during the churn the heap moved {out['churn_growth']:.3f}x from the first "
            "checkpoint to the last"
        )
        out["log_problems"] = envoy.log_problems()
        return out
    finally:
        envoy.stop()


# --------------------------------------------------------------------------- summary


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


# Per-round pairs the summary takes (key: listener, against). The Wasm build's keys are those
# of the earlier outputs; a pair whose listeners did not both run a scenario is left out.
RATIOS = {
    "ratio_filter_nofilter": (FILTER, NOFILTER),
    "ratio_filter_floor": (FILTER, EMPTY),
    "ratio_floor_nofilter": (EMPTY, NOFILTER),
    "ratio_native_nofilter": (NATIVE, NOFILTER),
    "ratio_native_floor": (NATIVE, EMPTY_NATIVE),
    "ratio_native_floor_nofilter": (EMPTY_NATIVE, NOFILTER),
    "ratio_native_filter": (NATIVE, FILTER),
    "ratio_native_mcp": (NATIVE, MCP),
    "ratio_mcp_nofilter": (MCP, NOFILTER),
}
ADDED_P50 = {
    "added_p50_us_vs_nofilter": (FILTER, NOFILTER),
    "added_p50_us_vs_floor": (FILTER, EMPTY),
    "floor_added_p50_us": (EMPTY, NOFILTER),
    "native_added_p50_us_vs_nofilter": (NATIVE, NOFILTER),
    "native_added_p50_us_vs_floor": (NATIVE, EMPTY_NATIVE),
    "native_floor_added_p50_us": (EMPTY_NATIVE, NOFILTER),
    "mcp_added_p50_us_vs_nofilter": (MCP, NOFILTER),
}
ADDED_CPU = {
    "added_cpu_us_vs_floor": (FILTER, EMPTY),
    "added_cpu_us_vs_nofilter": (FILTER, NOFILTER),
    "native_added_cpu_us_vs_floor": (NATIVE, EMPTY_NATIVE),
    "native_added_cpu_us_vs_nofilter": (NATIVE, NOFILTER),
}
# The spread of a ratio across rounds, to show how noisy the run was: each build's ratio to
# its target's reference.
RANGES = {
    "ratio_filter_floor_range": (FILTER, EMPTY),
    "ratio_native_nofilter_range": (NATIVE, NOFILTER),
}


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Medians per scenario and listener; ratios and differences pair by pair per round."""
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        s: dict[str, Any] = {"title": scenario.title, "listeners": list(scenario.listeners())}
        for mode in ("throughput", "latency"):
            by = {(r.listener, r.round): r for r in runs if r.scenario == scenario.key and r.mode == mode}
            rounds = sorted({k[1] for k in by})
            m: dict[str, Any] = {}
            for listener in scenario.listeners():
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

            def paired(f: Callable[[Run, Run], float], a: str, b: str) -> list[float]:
                return [f(by[(a, n)], by[(b, n)]) for n in rounds if (a, n) in by and (b, n) in by]

            def put(table: dict[str, tuple[str, str]], f: Callable[[Run, Run], float]) -> None:
                for key, (a, b) in table.items():
                    values = paired(f, a, b)
                    if values:
                        m[key] = median(values)

            put(RATIOS, lambda x, y: x.rps / y.rps)
            put(ADDED_P50, lambda x, y: x.p50_us - y.p50_us)
            put(ADDED_CPU, lambda x, y: x.envoy_cpu_us_per_request - y.envoy_cpu_us_per_request)
            for key, (a, b) in RANGES.items():
                ratios = paired(lambda x, y: x.rps / y.rps, a, b)
                m[key] = [min(ratios), max(ratios)] if ratios else []
            s[mode] = m
        out[scenario.key] = s
    return out


def verdicts(
    summary: dict[str, Any] | None, memory: dict[str, Any] | None, memory_native: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Each target of the issues, measured against this run: the Wasm build's (issue 4, against
    its floor) and the native build's (issue 17, against no filter and Envoy's mcp filter)."""
    out: list[dict[str, Any]] = []

    def verdict(build: str, target: str, measured: str, met: bool) -> None:
        out.append({"build": build, "target": target, "measured": measured, "met": met})

    for scenario in SCENARIOS if summary else ():
        thr, lat = summary[scenario.key]["throughput"], summary[scenario.key]["latency"]
        ratio = thr["ratio_filter_floor"]
        if scenario.hot_path:
            verdict("wasm", f"{scenario.key}: throughput >= {TARGET_HOT_RATIO:.2f}x floor", f"{ratio:.3f}x",
                    ratio >= TARGET_HOT_RATIO)  # fmt: skip
            added = lat["added_p50_us_vs_floor"]
            verdict("wasm", f"{scenario.key}: added p50 over floor <= {TARGET_HOT_ADDED_US:g} us", f"{added:+.1f} us",
                    added <= TARGET_HOT_ADDED_US)  # fmt: skip
        elif scenario.key == "3":
            verdict("wasm", f"3: throughput >= {TARGET_INIT_RATIO:.2f}x floor", f"{ratio:.3f}x",
                    ratio >= TARGET_INIT_RATIO)  # fmt: skip
    for scenario in SCENARIOS if summary else ():
        thr = summary[scenario.key]["throughput"]
        ratio = thr.get("ratio_native_nofilter")
        if ratio is None:
            continue
        if scenario.key in NATIVE_HOT_SCENARIOS:
            verdict("native", f"{scenario.key}: throughput >= {TARGET_NATIVE_HOT_RATIO:.2f}x no filter",
                    f"{ratio:.3f}x", ratio >= TARGET_NATIVE_HOT_RATIO)  # fmt: skip
        elif scenario.key == "3":
            verdict("native", f"3: throughput >= {TARGET_NATIVE_INIT_RATIO:.2f}x no filter", f"{ratio:.3f}x",
                    ratio >= TARGET_NATIVE_INIT_RATIO)  # fmt: skip
        if "ratio_native_mcp" in thr:
            vs = thr["ratio_native_mcp"]
            verdict("native", f"{scenario.key}: throughput >= {TARGET_NATIVE_VS_MCP:g}x Envoy's mcp filter",
                    f"{vs:.3f}x", vs >= TARGET_NATIVE_VS_MCP)  # fmt: skip
    for build, mem in (("wasm", memory), ("native", memory_native)):
        if not mem:
            continue
        # Every memory figure is against the heap before the first session.
        for point in mem["live"]:
            per = point["bytes_per_session"]
            verdict(build, f"heap per live session at {point['sessions']:,} live <= {TARGET_BYTES_PER_LIVE_SESSION} B",
                    f"{per:.0f} B", per <= TARGET_BYTES_PER_LIVE_SESSION)  # fmt: skip
        left = mem["live_expired"]["left_per_peak_session"]
        verdict(build, f"heap left per peak session once all {mem['live_expired']['peak']:,} expired "
                f"<= {TARGET_BYTES_LEFT_PER_PEAK_SESSION} B", f"{left:.0f} B",
                left <= TARGET_BYTES_LEFT_PER_PEAK_SESSION)  # fmt: skip
        # The churn keeps its own live set (the sessions of its last few seconds); what must not
        # happen is a heap that grows with the sessions created, or stays up once they expired.
        growth = mem["churn_growth"]
        verdict(build, f"heap flat during the churn: last / first checkpoint <= {1 + TARGET_CHURN_SLACK:.2f}",
                f"{growth:.3f}x", growth <= 1 + TARGET_CHURN_SLACK)  # fmt: skip
        after = mem["after_churn"]
        verdict(build, f"heap left per peak session once everything expired, {mem['churn'][-1]['sent']:,} churned "
                f"too (peaks {mem['live_expired']['peak']:,} + {mem['churn_peak']:,}) "
                f"<= {TARGET_BYTES_LEFT_PER_PEAK_SESSION} B", f"{after['left_per_peak_session']:.0f} B",
                after["left_per_peak_session"] <= TARGET_BYTES_LEFT_PER_PEAK_SESSION)  # fmt: skip
    return out


# --------------------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": provenance.cpu_model(),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "wrk": wrk_version[0].split(" Copyright")[0] if wrk_version else "?",
    }


# --------------------------------------------------------------------------- main


def envoy_binary_version() -> str:
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
    return out.split("version:")[-1].strip()


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every scenario (default 5)")
    parser.add_argument("--duration", type=int, default=2, help="seconds per throughput run, whole (default 2)")
    parser.add_argument("--latency-duration", type=int, default=1, help="seconds per latency run (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of discarded warm-up per pair (default 1)")
    parser.add_argument("--connections", type=int, default=50, help="connections for throughput (default 50)")
    parser.add_argument("--log-level", default="info", help="Envoy's log level in the matrix (default: Envoy's, info)")
    parser.add_argument("--churn", type=int, default=1_000_000, help="sessions churned (default 1,000,000)")
    parser.add_argument("--churn-checkpoints", type=int, default=5, help="heap readings during the churn")
    parser.add_argument("--churn-rate", type=int, default=12_000,
                        help="initializes a second during the churn, at most (default 12,000; 0: as fast as it goes)")
    parser.add_argument("--live-sets", type=int, nargs="+", default=[10_000, 100_000], help="live sessions measured")
    parser.add_argument("--live-idle", type=int, default=20,
                        help="idle timeout of the live set's store, s: outlasts the fill, then all expire (default 20)")  # fmt: skip
    parser.add_argument("--skip-memory", action="store_true", help="no memory run (a partial run: writes nothing)")
    parser.add_argument("--skip-matrix", action="store_true", help="only the memory run (partial: writes nothing)")
    parser.add_argument("--scenarios", default="", help="only these scenarios, e.g. 1,3 (partial: writes nothing)")
    parser.add_argument("--no-write", action="store_true", help="print, but do not write bench/results.json")
    parser.add_argument("--command", default="make bench", help="the command recorded in the provenance")
    return parser


# Flags that say how a run is made, recorded in its provenance; the others only say what is written.
NOT_SETTINGS = ("no_write", "command")


def main() -> int:
    parser = arguments()
    args = parser.parse_args()
    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    defaults = {k: v for k, v in vars(parser.parse_args([])).items() if k not in NOT_SETTINGS}
    partial = args.skip_memory or args.skip_matrix or bool(args.scenarios)
    if partial and not args.no_write:
        log("a partial run (--skip-memory, --skip-matrix or --scenarios): bench/results.json is not written")
        args.no_write = True
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        global SCENARIOS
        SCENARIOS = tuple(sc for sc in SCENARIOS if sc.key in wanted)
        if not SCENARIOS:
            raise HarnessError(f"no scenario in {args.scenarios!r}")

    for tool in ("wrk", "h2load", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} is not installed (bench/run.sh installs it)")
    for path in (ENVOY, WASM_FILTER, WASM_EMPTY, NATIVE_FILTER, NATIVE_EMPTY, NATIVE_SESSION_FLOOR):
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
        # What this output was measured from: commit, tree, the Wasm modules, machine, settings.
        "provenance": provenance.collect(
            command=args.command,
            settings=settings,
            defaults=defaults,
            artifacts=[WASM_FILTER, WASM_EMPTY, NATIVE_FILTER, NATIVE_EMPTY],
            envoy_version=envoy_binary_version(),
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "command": args.command,
        "rounds": args.rounds,
        "duration": args.duration,
        "latency_duration": args.latency_duration,
        "warmup": args.warmup,
        "connections": args.connections,
        "log_level": args.log_level,
        "cores": {"envoy": ENVOY_CORE, "load": LOAD_CORE},
        "configs": {
            "filter": FILTER_CONFIG,
            "filter_initialize": INITIALIZE_CONFIG,
            "native": native_config(FILTER_CONFIG, "filter"),
            "native_initialize": native_config(INITIALIZE_CONFIG, "initialize"),
        },
        "labels": LABELS,
        "scenarios": [
            {"key": sc.key, "title": sc.title, "short": sc.short, "hot_path": sc.hot_path} for sc in SCENARIOS
        ],
        "targets": {
            "hot_ratio": TARGET_HOT_RATIO,
            "hot_added_us": TARGET_HOT_ADDED_US,
            "init_ratio": TARGET_INIT_RATIO,
            "bytes_per_live_session": TARGET_BYTES_PER_LIVE_SESSION,
            "bytes_left_per_peak_session": TARGET_BYTES_LEFT_PER_PEAK_SESSION,
            "churn_slack": TARGET_CHURN_SLACK,
            "native_hot_ratio": TARGET_NATIVE_HOT_RATIO,
            "native_hot_scenarios": list(NATIVE_HOT_SCENARIOS),
            "native_init_ratio": TARGET_NATIVE_INIT_RATIO,
            "native_vs_mcp": TARGET_NATIVE_VS_MCP,
        },
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
            results["filter_stats"] = filter_stats(envoy, "wasm")
            results["native_stats"] = filter_stats(envoy, "native")
            results["at_cap"] = run_at_cap(envoy, client, files, args)
            results["at_cap_native"] = run_at_cap(envoy, client, files, args, NATIVE)
            problems += [f"Envoy log: {line}" for line in envoy.log_problems()[:10]]
        finally:
            client.close()
            envoy.stop()
        results["runs"] = [vars(r) for r in runs]
        results["summary"] = summarise(runs)
        results["other_load_median"] = median(r.other_load_share for r in runs)
    if not args.skip_memory:
        for build, key in (("wasm", "memory"), ("native", "memory_native")):
            results[key] = run_memory(workdir, files, args, build)
            problems += [f"Envoy log ({build} memory run): {line}" for line in results[key].pop("log_problems")[:10]]
        results.setdefault("envoy_version", results["provenance"]["envoy_version"])
    results["problems"] = problems
    results["seconds"] = round(time.monotonic() - started, 1)
    results["verdicts"] = verdicts(results.get("summary"), results.get("memory"), results.get("memory_native"))
    if partial:
        keys = ("summary", "memory", "memory_native", "verdicts")
        print(json.dumps({k: results[k] for k in keys if k in results}, indent=1))
    else:
        for name in ("matrix", "memory", "targets"):
            print(report.BLOCKS[name][1](results) + "\n")
    if not args.no_write:
        RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
        log(f"wrote {RESULTS_JSON.relative_to(REPO)}: `python3 bench/report.py` puts it in BENCHMARKS.md")
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
