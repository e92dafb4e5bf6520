"""End-to-end harness: real Envoy (from .venv) with the built wasm filter, real MCP servers.

Reusable pieces, no pytest in here:

- `render_bootstrap()`: the reference `envoy/envoy.yaml` with the ports, the upstream, the wasm
  path and the plugin configuration replaced (or the filter left out), as a dict.
- `Envoy`: writes a bootstrap, starts `envoy --concurrency 2`, waits for the admin `/ready`,
  finds the listener's port, reads stats and the log, checks the log for wasm errors, stops.
  The benchmark (bench/) runs Envoy through it too (pinned to a core, one worker).
- `McpServer`: the demo MCP server (`tests/servers/demo_server.py`) on a socket bound here
  (port 0, so no free-port race), restartable on the same port, with its request record.
- small MCP-over-HTTP helpers: one request per fresh connection, JSON and SSE bodies.

Everything waits for readiness (a file, an admin endpoint, a health route) with a deadline
and fails with the process's log when it does not come; nothing sleeps and hopes.
"""

from __future__ import annotations

import copy
import http.client
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
ENVOY_BIN = VENV_BIN / "envoy"
# The Envoy binary itself (ENVOY_BIN is the package's launcher script).
ENVOY_BINARY = next(iter(sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/envoy/_bin/envoy"))), ENVOY_BIN)
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "mcp_session_filter.wasm"
NATIVE = REPO / "target" / "release" / "libmcp_session_native.so"

# Which build of the filter the run tests: `wasm` (the proxy-wasm module) or `native` (the
# Envoy dynamic module). `make e2e` runs the suite once for each; every bootstrap this module
# renders carries that build, in the same place of the same shape.
ARTIFACT = os.environ.get("MCP_ARTIFACT", "wasm")
if ARTIFACT not in ("wasm", "native"):
    raise SystemExit(f"MCP_ARTIFACT must be wasm or native, not {ARTIFACT!r}")
FILTER_PATH = NATIVE if ARTIFACT == "native" else WASM
# Where each build's own lines, stats and facts show up in Envoy.
LOG_COMPONENT = "[dynamic_modules]" if ARTIFACT == "native" else "[wasm]"
PROMETHEUS_PREFIX = "envoy_dynamicmodulescustom_" if ARTIFACT == "native" else ""
FACT_PREFIX = "" if ARTIFACT == "native" else "wasm."
DYNAMIC_MODULE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
REFERENCE_CONFIG = REPO / "envoy" / "envoy.yaml"
DEMO_SERVER = REPO / "tests" / "servers" / "demo_server.py"

MCP_PATH = "/mcp"
WASM_FILTER_NAME = "mcp_session"
STATS_PREFIX = ("dynamicmodulescustom" if ARTIFACT == "native" else "wasmcustom") + ".mcp_session."

PROTOCOL_VERSION = "2025-11-25"
MODERN_PROTOCOL_VERSION = "2026-07-28"
ACCEPT_BOTH = "application/json, text/event-stream"

# A session ID minted by the filter: 8 hex (slot) + 32 hex (secret).
SESSION_ID_RE = re.compile(r"^[0-9a-f]{40}$")

# What a clean Envoy log must not contain: a Rust panic (the filter's panic hook logs it at
# critical; an abort shows as a wasm runtime error), or any error / critical line from the
# wasm component (VM failures, failed callbacks, on_configure refusing the config).
LOG_PROBLEM_RES = (
    re.compile(r"panic", re.IGNORECASE),
    re.compile(r"\[(?:error|critical)\]\[(?:wasm|dynamic_modules)\]"),
)

READY_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0


class HarnessError(RuntimeError):
    """A process of the harness did not start or stop as it should."""


# --------------------------------------------------------------------------- bootstrap


def render_bootstrap(
    *,
    upstream_port: int,
    filter_config: Mapping[str, Any] | str | None = None,
    with_filter: bool = True,
    wasm_path: Path = WASM,
    listener_port: int = 0,
    admin_port: int = 0,
    vm_id: str | None = None,
    reference: Path = REFERENCE_CONFIG,
) -> dict[str, Any]:
    """The reference bootstrap with this test's ports, upstream, wasm and plugin configuration.

    `reference`: another shipped bootstrap of the same shape (one listener, one wasm filter
    named `mcp_session`, one cluster with one endpoint), e.g. `envoy/envoy.mcp-filters.yaml`.

    `filter_config`: a mapping is serialised to JSON; a string is passed verbatim (to test
    malformed configurations); None keeps the reference file's configuration.
    `with_filter=False` removes the wasm filter (Envoy and the upstream alone).
    """
    bootstrap = yaml.safe_load(reference.read_text())
    bootstrap = copy.deepcopy(bootstrap)
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port

    (listener,) = bootstrap["static_resources"]["listeners"]
    listener["address"]["socket_address"]["port_value"] = listener_port
    hcm = _http_connection_manager(listener)
    filters = hcm["http_filters"]
    (wasm_filter,) = [f for f in filters if f["name"] == WASM_FILTER_NAME]
    if with_filter:
        plugin = wasm_filter["typed_config"]["config"]
        plugin["vm_config"]["code"]["local"]["filename"] = str(wasm_path)
        if vm_id is not None:
            plugin["vm_config"]["vm_id"] = vm_id
        if filter_config is not None:
            value = filter_config if isinstance(filter_config, str) else json.dumps(filter_config)
            plugin["configuration"]["value"] = value
        for_artifact(bootstrap)
    else:
        filters.remove(wasm_filter)

    (cluster,) = bootstrap["static_resources"]["clusters"]
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    endpoint["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    return bootstrap


def native_filter(wasm_filter: Mapping[str, Any], module: Path = NATIVE) -> dict[str, Any]:
    """The native module in place of a rendered Wasm filter: the same name and the same JSON
    configuration (its `vm_id` becomes the `table` unless the JSON names one), loaded by path."""
    plugin = wasm_filter["typed_config"]["config"]
    value = plugin["configuration"]["value"]
    vm_id = plugin["vm_config"].get("vm_id")
    try:
        parsed = json.loads(value) if value.strip() else {}
    except ValueError:
        parsed = None  # malformed on purpose: passed verbatim
    if isinstance(parsed, dict) and vm_id and vm_id != "mcp_session" and "table" not in parsed:
        parsed["table"] = vm_id
        value = json.dumps(parsed)
    return {
        "name": wasm_filter["name"],
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER,
            "dynamic_module_config": {"module": {"local": {"filename": str(module)}}, "do_not_close": True},
            "filter_name": "mcp_session",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
        },
    }


def for_artifact(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap with the build under test: with MCP_ARTIFACT=native, the Wasm filter named
    `mcp_session` of every listener becomes the native module (in place)."""
    if ARTIFACT != "native":
        return bootstrap
    listeners = bootstrap["static_resources"].get("listeners", [])
    # Access log formats name the session facts as each build sets them (envoy.native.yaml).
    listeners[:] = json.loads(json.dumps(listeners).replace("FILTER_STATE(wasm.mcp_session_", "FILTER_STATE(mcp_session_"))
    for listener in listeners:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                filters = network_filter.get("typed_config", {}).get("http_filters", [])
                for i, f in enumerate(filters):
                    if f["name"] == WASM_FILTER_NAME and "config" in f.get("typed_config", {}):
                        filters[i] = native_filter(f)
    return bootstrap


def filter_configuration(f: Mapping[str, Any]) -> dict[str, Any]:
    """The StringValue holding a rendered filter's JSON, for either build."""
    typed = f["typed_config"]
    return typed["filter_config"] if typed["@type"] == DYNAMIC_MODULE_FILTER else typed["config"]["configuration"]


LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def make_listener_dynamic(bootstrap: dict[str, Any], lds_path: Path) -> dict[str, Any]:
    """Move the bootstrap's listener to a file-based LDS source (`lds_path`, watched), so a
    test can update the filter's configuration in a running Envoy. Returns the listener."""
    (listener,) = bootstrap["static_resources"].pop("listeners")
    bootstrap.setdefault("node", {"id": "e2e", "cluster": "e2e"})
    bootstrap["dynamic_resources"] = {
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds_path), "watched_directory": {"path": str(lds_path.parent)}},
        }
    }
    write_lds(listener, lds_path)
    return listener


def write_lds(listener: Mapping[str, Any], lds_path: Path) -> None:
    """Replace the LDS file atomically (a rename is what the directory watch reacts to)."""
    staging = lds_path.with_name(f".{lds_path.name}.{uuid.uuid4().hex[:8]}")
    staging.write_text(yaml.safe_dump({"resources": [{"@type": LISTENER_TYPE, **listener}]}, sort_keys=False))
    os.replace(staging, lds_path)


def set_plugin_configuration(listener: dict[str, Any], filter_config: Mapping[str, Any]) -> None:
    for f in _http_connection_manager(listener)["http_filters"]:
        if f["name"] == WASM_FILTER_NAME:
            filter_configuration(f)["value"] = json.dumps(filter_config)
            return
    raise KeyError(WASM_FILTER_NAME)


def _http_connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    return hcm["typed_config"]


def plugin_configuration(bootstrap: Mapping[str, Any]) -> str | None:
    """The plugin configuration string of a rendered bootstrap (None without the filter)."""
    (listener,) = bootstrap["static_resources"]["listeners"]
    for f in _http_connection_manager(dict(listener))["http_filters"]:
        if f["name"] == WASM_FILTER_NAME:
            return filter_configuration(f)["value"]
    return None


def write_bootstrap(bootstrap: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(bootstrap), sort_keys=False))
    return path


def validate_bootstrap(bootstrap: Mapping[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: loads the config (and the wasm, running on_configure) and exits."""
    path = write_bootstrap(bootstrap, workdir / f"validate-{uuid.uuid4().hex[:8]}.yaml")
    return subprocess.run(
        [str(ENVOY_BIN), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- processes


def _wait_until(what: str, check, timeout: float, alive=None, describe=None) -> Any:
    """Poll `check()` until it returns a truthy value; fail when the deadline passes or the
    process behind it died. Polling an explicit readiness signal is not sleep-and-hope."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if alive is not None and not alive():
            raise HarnessError(f"{what}: the process exited\n{describe() if describe else ''}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{what}: not ready after {timeout:.0f}s\n{describe() if describe else ''}")
        time.sleep(0.05)


def _terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=grace)


class Envoy:
    """One Envoy process (2 workers unless told otherwise), its admin API, stats and log.

    The keyword-only arguments are for the benchmark (bench/bench.py, bench/profile.py), which
    runs this same launcher: `cpus` pins Envoy with `taskset -c`, `wrapper` goes between that and
    the binary (e.g. valgrind), `binary` replaces .venv/bin/envoy, and `ready_timeout` /
    `admin_timeout` give a slow Envoy (under valgrind) longer to start and to answer.
    """

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        workdir: Path,
        name: str = "envoy",
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
        *,
        log_level: str = os.environ.get("E2E_ENVOY_LOG_LEVEL", "info"),
        cpus: str | None = None,
        wrapper: Sequence[str] = (),
        binary: Path = ENVOY_BIN,
        ready_timeout: float = READY_TIMEOUT,
        admin_timeout: float = 5.0,
    ):
        self.bootstrap = bootstrap
        self.extra_args = list(extra_args)  # more command-line arguments (e.g. component log levels)
        self.workdir = workdir
        self.name = name
        self.concurrency = concurrency
        self.log_level = log_level
        self.cpus = cpus
        self.wrapper = list(wrapper)
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.admin_timeout = admin_timeout
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.admin_address_path = workdir / f"{name}.admin"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_url = ""
        self.port = 0  # the listener's port, when the bootstrap has one listener
        self.ports: dict[str, int] = {}  # every listener's port, by listener name

    # lifecycle

    def start(self) -> Envoy:
        write_bootstrap(self.bootstrap, self.config_path)
        self.admin_address_path.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        pin = ["taskset", "-c", self.cpus] if self.cpus is not None else []
        self.proc = subprocess.Popen(
            [
                *pin,
                *self.wrapper,
                str(self.binary),
                "-c",
                str(self.config_path),
                "--concurrency",
                str(self.concurrency),
                "--disable-hot-restart",
                "--admin-address-path",
                str(self.admin_address_path),
                "-l",
                self.log_level,
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        alive = lambda: self.proc is not None and self.proc.poll() is None  # noqa: E731
        address = _wait_until(
            f"{self.name}: admin address file",
            lambda: self.admin_address_path.exists() and self.admin_address_path.read_text().strip(),
            self.ready_timeout,
            alive,
            self.log_tail,
        )
        self.admin_url = f"http://{address}"

        def ready() -> bool:
            try:
                return httpx.get(f"{self.admin_url}/ready", timeout=self.admin_timeout).status_code == 200
            except httpx.TransportError:
                return False

        _wait_until(f"{self.name}: admin /ready", ready, self.ready_timeout, alive, self.log_tail)
        self.refresh_port()

    def stop(self) -> int | None:
        code = None
        if self.proc is not None:
            code = _terminate(self.proc)
            self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    # addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = MCP_PATH, *, listener: str | None = None) -> str:
        """A URL on the listener (the named one, for a bootstrap with several)."""
        if listener is None:
            return f"{self.base_url}{path}"
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    # admin

    def admin_get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        response = httpx.get(f"{self.admin_url}{path}", params=params, timeout=self.admin_timeout)
        response.raise_for_status()
        return response

    def stats(self) -> dict[str, int]:
        """The filter's stats, names without the `wasmcustom.mcp_session.` prefix."""
        out: dict[str, int] = {}
        for line in self.admin_get("/stats?filter=mcp_session").text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and name.startswith(STATS_PREFIX) and value.strip().lstrip("-").isdigit():
                out[name[len(STATS_PREFIX) :]] = int(value)
        return out

    def server_stats(self, filter_regex: str) -> dict[str, int]:
        """Any of Envoy's own counters and gauges matching a /stats filter."""
        out: dict[str, int] = {}
        for line in self.admin_get("/stats", {"filter": filter_regex}).text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                out[name] = int(value)
        return out

    def refresh_port(self) -> None:
        listeners = self.admin_get("/listeners?format=json").json()
        self.ports = {
            status["name"]: int(status["local_address"]["socket_address"]["port_value"])
            for status in listeners["listener_statuses"]
        }
        self.port = next(iter(self.ports.values())) if len(self.ports) == 1 else 0

    def worker_connections(self) -> dict[str, int]:
        """Downstream connections accepted per worker on the MCP listener."""
        pattern = re.compile(r"^listener\.127\.0\.0\.1_\d+\.(worker_\d+)\.downstream_cx_total: (\d+)$")
        out: dict[str, int] = {}
        for line in self.admin_get("/stats?filter=downstream_cx_total").text.splitlines():
            if m := pattern.match(line):
                out[m.group(1)] = int(m.group(2))
        return out

    # log

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        return log_problems(self.log_text())


def log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(r.search(line) for r in LOG_PROBLEM_RES)]


@dataclass
class McpServer:
    """The demo MCP server in a child process, on a socket this process keeps.

    The listening socket is bound here (port 0) and inherited by the child, so the port is
    known before the server starts, and a restart serves the same port.
    """

    workdir: Path
    stateful: bool = False
    sse: bool = False
    name: str = "upstream"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    sock: socket.socket | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    # Set by `down()`: the port the next `start()` binds again.
    rebind_port: int = field(default=0, init=False)

    @property
    def port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> McpServer:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", self.rebind_port))
            self.rebind_port = 0
            self.sock.listen(128)
        fd = self.sock.fileno()
        args = [
            str(PYTHON),
            str(DEMO_SERVER),
            "--fd",
            str(fd),
            "--stateful" if self.stateful else "--stateless",
            "--sse" if self.sse else "--json",
            "--record",
            "--name",
            self.name,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            _wait_until(
                f"{self.name}: /healthz", healthy, READY_TIMEOUT, lambda: self.proc.poll() is None, self.log_tail
            )
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """Stop the process and start a new one on the same socket: all SDK sessions are gone."""
        if self.proc is not None:
            _terminate(self.proc)
        self.restarts += 1
        self.start()

    def down(self) -> None:
        """Stop the process and close the listening socket: connections to the port are refused
        (a crashed or stopped server) until `start()` binds the same port again."""
        port = self.port
        self.stop()
        self.rebind_port = port

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # the request record

    def requests(self, tag: str | None = None) -> list[dict[str, Any]]:
        """What reached this server (see demo_server.Recorder), optionally only one test's tag."""
        entries = httpx.get(f"{self.base_url}/debug/requests", timeout=5).json()
        if tag is not None:
            entries = [e for e in entries if e["headers"].get(TAG_HEADER) == tag]
        return entries


# --------------------------------------------------------------------------- MCP over HTTP

TAG_HEADER = "x-test-tag"


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that writes no log line per request."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


class HandlerServer:
    """A standard-library HTTP server on 127.0.0.1 (a free port), serving `handler` on a thread
    of its own: an upstream that answers what no SDK server sends."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def new_tag() -> str:
    """A value for the `x-test-tag` header, to find a test's requests in the upstream record."""
    return uuid.uuid4().hex


def request(
    method: str,
    url: str,
    *,
    session: str | None = None,
    body: Any = None,
    content: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    protocol_version: str | None = None,
    content_type: str | None = "application/json",
    accept: str | None = ACCEPT_BOTH,
    timeout: float = REQUEST_TIMEOUT,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Response:
    """One HTTP request on a fresh connection (a new client each time, so requests spread over
    Envoy's workers). `body` is JSON-encoded; `content` is sent as is. `verify`: the TLS client
    context for an `https://` URL (e.g. one that presents a client certificate)."""
    h: dict[str, str] = {}
    if accept is not None:
        h["accept"] = accept
    if session is not None:
        h["mcp-session-id"] = session
    if protocol_version is not None:
        h["mcp-protocol-version"] = protocol_version
    if body is not None or content is not None:
        if content_type is not None:
            h["content-type"] = content_type
        if content is None:
            content = json.dumps(body)
    h.update(headers or {})
    with httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0), verify=verify) as client:
        return client.request(method, url, content=content, headers=h)


@dataclass
class Timed:
    """A response read by `timed_request`, with the client's monotonic clock around it."""

    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    sent: float  # just before connecting
    received: float  # after the whole body was read

    def json(self) -> Any:
        return json.loads(self.body)


def timed_request(
    port: int,
    method: str,
    body: Any = None,
    *,
    session: str | None = None,
    protocol_version: str | None = PROTOCOL_VERSION,
    path: str = MCP_PATH,
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT,
    connection: http.client.HTTPConnection | None = None,
) -> Timed:
    """One request on a fresh connection to 127.0.0.1:`port` with the standard library's
    http.client: a few hundred microseconds of client work (an httpx client costs far more to
    build), so load and timing tests measure Envoy, not the client. `body` is JSON-encoded;
    `protocol_version` is sent with a session only.

    `connection`: send it on this open connection instead and leave it open (keep-alive), so
    `sent` .. `received` holds no connection setup and the request reaches the worker that
    accepted that connection (`port` is then unused)."""
    h = {"accept": ACCEPT_BOTH}
    if connection is None:
        h["connection"] = "close"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        h["content-type"] = "application/json"
    if session is not None:
        h["mcp-session-id"] = session
        if protocol_version is not None:
            h["mcp-protocol-version"] = protocol_version
    h.update(headers or {})
    sent = time.monotonic()
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=payload, headers=h)
        response = conn.getresponse()
        data = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
        return Timed(response.status, got, data, sent, time.monotonic())
    finally:
        if connection is None:
            conn.close()


def post(url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return request("POST", url, body=body, **kwargs)


def initialize_body(request_id: Any = 1, protocol_version: str = PROTOCOL_VERSION, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": protocol_version,
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1.0.0"},
            **params,
        },
    }


def rpc(method: str, request_id: Any = None, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-RPC request (or a notification when `request_id` is None)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params is not None:
        message["params"] = dict(params)
    return message


INITIALIZED = rpc("notifications/initialized")


def tool_call(name: str, arguments: Mapping[str, Any], request_id: Any = 1, **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": dict(arguments)}
    if meta:
        params["_meta"] = meta
    return rpc("tools/call", request_id, params)


def initialize(url: str, **kwargs: Any) -> httpx.Response:
    body = kwargs.pop("body", None) or initialize_body()
    return post(url, body, **kwargs)


def open_session(url: str, *, initialized: bool = True, headers: Mapping[str, str] | None = None) -> str:
    """initialize (+ notifications/initialized): the filter's session ID."""
    response = initialize(url, headers=headers)
    assert response.status_code == 200, describe(response)
    assert "result" in first_message(response), describe(response)
    session = response.headers.get("mcp-session-id")
    assert session is not None and SESSION_ID_RE.match(session), describe(response)
    if initialized:
        ack = post(url, INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION, headers=headers)
        assert ack.status_code == 202, describe(ack)
    return session


def messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a JSON or SSE (`text/event-stream`) response body."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        out = []
        for event in sse_events(response.text):
            if event.get("data"):
                out.append(json.loads(event["data"]))
        return out
    if not response.content:
        return []
    data = response.json()
    return data if isinstance(data, list) else [data]


def first_message(response: httpx.Response) -> dict[str, Any]:
    """The response message (the one with an `id` and a result or error) of a JSON or SSE body."""
    for message in messages(response):
        if "result" in message or "error" in message:
            return message
    raise AssertionError(f"no JSON-RPC response in the body\n{describe(response)}")


def sse_events(text: str) -> Iterator[dict[str, str]]:
    """Parse an SSE body into events ({'event': ..., 'data': ..., 'id': ...})."""
    event: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        event[name] = f"{event[name]}\n{value}" if name == "data" and name in event else value
    if event:
        yield event


def describe(response: httpx.Response) -> str:
    """A response as text, for assertion messages."""
    headers = "\n".join(f"  {k}: {v}" for k, v in response.headers.items())
    request = response.request
    req_headers = "\n".join(f"  {k}: {v}" for k, v in request.headers.items())
    body = request.content[:2000].decode(errors="replace") if request.content else ""
    return (
        f"request: {request.method} {request.url}\n{req_headers}\n  {body}\n"
        f"response: {response.status_code}\n{headers}\n  {response.text[:2000]}"
    )


def assert_rejection(
    response: httpx.Response,
    status: int,
    code: int,
    message: str | None = None,
    request_id: Any = None,
) -> dict[str, Any]:
    """A filter rejection: the status, `content-type: application/json`, and a JSON-RPC 2.0
    error body with the exact code (and message, and id: null unless the body was read)."""
    info = describe(response)
    assert response.status_code == status, info
    assert response.headers.get("content-type", "").split(";")[0].strip() == "application/json", info
    body = response.json()
    assert body.get("jsonrpc") == "2.0", info
    assert "id" in body and body["id"] == request_id, info
    assert "result" not in body, info
    error = body.get("error")
    assert isinstance(error, dict), info
    assert error.get("code") == code, info
    assert isinstance(error.get("message"), str), info
    if message is not None:
        assert error["message"] == message, info
    return body


# --------------------------------------------------------------------------- stats


# The workers' cache epoch (core/src/cache.rs): it moves with every end and every configuration, and
# test_stats checks it on its own.
INTERNAL_STATS = {"epoch"}


def stats_changes(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The stats whose value changed, and by how much (internal ones aside)."""
    names = (set(before) | set(after)) - INTERNAL_STATS
    return {n: after.get(n, 0) - before.get(n, 0) for n in sorted(names) if after.get(n, 0) != before.get(n, 0)}


@contextmanager
def expect_stats(envoy: Envoy, expected: Mapping[str, int]) -> Iterator[None]:
    """Assert that the block changes the filter's stats by exactly `expected` (name: delta),
    every other mcp_session stat unchanged."""
    before = envoy.stats()
    yield
    after = envoy.stats()
    assert stats_changes(before, after) == dict(expected), f"before={before}\nafter={after}"

