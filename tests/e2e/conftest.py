"""Fixtures: shared demo MCP servers and one shared Envoy per (upstream, filter configuration).

Starting Envoy with the wasm filter costs about a second, so Envoys are shared for the whole
run and keyed by what they are: tests that need a clean slate (capacity, restarts) ask for a
`fresh` one. After every test the new lines of every running Envoy's log are checked: a wasm
error or a panic fails the test that caused it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness import ARTIFACT, FILTER_PATH, Envoy, McpServer, log_problems, render_bootstrap

# The configuration most tests run against: the reference shape, a small body limit so the
# 413 is cheap to reach.
MAIN_CONFIG: dict[str, Any] = {"paths": ["/mcp"], "max_body_bytes": 4096}

UPSTREAM_KINDS = {
    # kind: (stateful, sse)
    "json": (False, False),
    "sse": (False, True),
    "stateful-json": (True, False),
    "stateful-sse": (True, True),
}


class Upstreams:
    """Demo MCP servers by kind, started on first use, shared by the whole run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, McpServer] = {}
        self.count = 0

    def get(self, kind: str) -> McpServer:
        if kind not in self.running:
            self.running[kind] = self.new(kind)
        return self.running[kind]

    def new(self, kind: str) -> McpServer:
        """A server of its own (for tests that restart it), stopped at the end of the run."""
        stateful, sse = UPSTREAM_KINDS[kind]
        self.count += 1
        server = McpServer(self.workdir, stateful=stateful, sse=sse, name=f"upstream-{self.count}-{kind}").start()
        self.running[f"{kind}#{self.count}"] = server
        return server

    def stop_all(self) -> None:
        for server in self.running.values():
            server.stop()
        self.running.clear()


class Envoys:
    """Envoys keyed by (upstream port, filter configuration), and the log check."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.shared: dict[tuple[int, str, bool], Envoy] = {}
        self.all: list[Envoy] = []
        self.checked: dict[int, int] = {}  # id(envoy) -> log bytes already checked
        self.count = 0

    def get(
        self,
        upstream: McpServer,
        config: Mapping[str, Any] | None,
        *,
        fresh: bool = False,
        with_filter: bool = True,
    ) -> Envoy:
        key = (upstream.port, json.dumps(config, sort_keys=True), with_filter)
        if not fresh and key in self.shared:
            return self.shared[key]
        if with_filter and not FILTER_PATH.exists():
            pytest.fail(f"the filter is not built: {FILTER_PATH} is missing (run `make build`)", pytrace=False)
        self.count += 1
        bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config=config, with_filter=with_filter)
        envoy = Envoy(bootstrap, self.workdir, name=f"envoy-{self.count}").start()
        self.all.append(envoy)
        if not fresh:
            self.shared[key] = envoy
        return envoy

    def start(self, bootstrap: Mapping[str, Any], name: str) -> Envoy:
        """An Envoy for a bootstrap a test built itself (more filters, TLS, another shipped
        file). Its log is checked after every test like the others'; the test stops it (and
        the pool stops it at the end of the run if the test did not get to)."""
        if not FILTER_PATH.exists():
            pytest.fail(f"the filter is not built: {FILTER_PATH} is missing (run `make build`)", pytrace=False)
        self.count += 1
        envoy = Envoy(bootstrap, self.workdir, name=f"envoy-{self.count}-{name}").start()
        self.all.append(envoy)
        return envoy

    def new_problems(self) -> list[str]:
        """Wasm errors and panics logged since the last call, by Envoy."""
        problems = []
        for envoy in self.all:
            text = envoy.log_text()
            seen = self.checked.get(id(envoy), 0)
            self.checked[id(envoy)] = len(text)
            problems += [f"{envoy.name}: {line}" for line in log_problems(text[seen:])]
        return problems

    def stop_all(self) -> None:
        for envoy in self.all:
            envoy.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With MCP_ARTIFACT=native, tests marked `wasm_only` are skipped, with their reason."""
    if ARTIFACT != "native":
        return
    for item in items:
        marker = item.get_closest_marker("wasm_only")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"Wasm build only: {marker.args[0]}"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"filter build under test: {ARTIFACT} ({FILTER_PATH})"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def upstreams(workdir: Path) -> Iterator[Upstreams]:
    pool = Upstreams(workdir)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def envoys(workdir: Path) -> Iterator[Envoys]:
    pool = Envoys(workdir)
    yield pool
    pool.stop_all()
    # Shutdown too must be clean.
    problems = pool.new_problems()
    if problems:
        pytest.fail("Envoy logged wasm errors or a panic at shutdown:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def envoy_log_is_clean(envoys: Envoys) -> Iterator[None]:
    """After each test: no new wasm error or panic line in any Envoy's log. (Envoys that are
    meant to refuse a bad configuration are not in the pool.)"""
    yield
    problems = envoys.new_problems()
    if problems:
        pytest.fail("Envoy logged wasm errors or a panic:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def envoy_for(envoys: Envoys, upstreams: Upstreams) -> Callable[..., Envoy]:
    """envoy_for(upstream_kind_or_server, config, fresh=False, with_filter=True) -> Envoy."""

    def make(
        upstream: str | McpServer = "json",
        config: Mapping[str, Any] | None = None,
        *,
        fresh: bool = False,
        with_filter: bool = True,
    ) -> Envoy:
        server = upstreams.get(upstream) if isinstance(upstream, str) else upstream
        return envoys.get(server, MAIN_CONFIG if config is None else config, fresh=fresh, with_filter=with_filter)

    return make


@pytest.fixture
def upstream(upstreams: Upstreams) -> McpServer:
    """The stateless JSON demo server behind the main Envoy."""
    return upstreams.get("json")


@pytest.fixture
def envoy(envoy_for: Callable[..., Envoy]) -> Envoy:
    """The main Envoy: MAIN_CONFIG in front of the stateless JSON demo server."""
    return envoy_for("json", MAIN_CONFIG)
