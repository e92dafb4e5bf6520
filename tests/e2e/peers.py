"""Node peers for the end-to-end tests: the TypeScript SDK client and the MCP conformance suite
(`tests/peers/`), and the Node they need.

- `node_path()`: runs `scripts/setup_node.sh` once per test run (Node 22+ into `.tools/node`
  when the system node is older, `npm ci` in `tests/peers`; idempotent, installs everything on
  a fresh machine) and returns the PATH to run Node with.
- `node_peers` (session fixture): that PATH, and the peers' commands run with it.
- `ConformanceServer`: `tests/peers/conformance_server.mjs` in a child process, ready when it
  prints its JSON ready line, stopped at the end.

Import the fixture into a test module (`from peers import node_peers`); `node_path()` is cached,
so the setup script runs once however many modules use it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness import READY_TIMEOUT, REPO, HarnessError, _terminate, _wait_until

PEERS = REPO / "tests" / "peers"
SETUP_NODE = REPO / "scripts" / "setup_node.sh"
TS_CLIENT = PEERS / "ts_client.mjs"
CONFORMANCE_RUNNER = PEERS / "conformance.mjs"
CONFORMANCE_SERVER = PEERS / "conformance_server.mjs"
CONFORMANCE_CLI = PEERS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

# A fresh machine downloads Node and the npm packages: give it time (the script itself fails
# fast on a refusal).
SETUP_TIMEOUT = 600
PEER_TIMEOUT = 90


@functools.cache
def node_path() -> str:
    """The PATH under which `node` is 22+ and tests/peers/node_modules is installed."""
    try:
        result = subprocess.run(
            ["bash", str(SETUP_NODE)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"scripts/setup_node.sh did not finish in {SETUP_TIMEOUT}s\n{e.stderr or ''}") from e
    if result.returncode != 0:
        raise HarnessError(f"scripts/setup_node.sh failed ({result.returncode})\n{result.stderr}")
    bin_dir = result.stdout.strip()
    path = os.environ.get("PATH", "")
    return f"{bin_dir}:{path}" if bin_dir else path


def run_json_line(args: list[str], env: dict[str, str], timeout: float = PEER_TIMEOUT) -> tuple[dict[str, Any], str]:
    """Run a Node peer that prints one JSON line on stdout; (that object, its stderr).
    A non-zero exit is for the caller to judge (the peers report failures in the JSON)."""
    result = subprocess.run(
        args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]), result.stderr
    except (IndexError, json.JSONDecodeError) as e:
        raise HarnessError(
            f"{' '.join(args)}: exit {result.returncode}, no JSON line\nstdout: {result.stdout[-3000:]}\n"
            f"stderr: {result.stderr[-3000:]}"
        ) from e


@dataclass
class NodePeers:
    path: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": self.path}

    def ts_client(self, url: str, *, message: str | None = None, headers: dict[str, str] | None = None):
        """tests/peers/ts_client.mjs: (its JSON summary, its stderr)."""
        args = ["node", str(TS_CLIENT), url]
        if message is not None:
            args += ["--message", message]
        for name, value in (headers or {}).items():
            args += ["--header", f"{name}:{value}"]
        return run_json_line(args, self.env)

    def conformance(self, url: str, *, suite: str = "all", scenarios: list[str] | None = None):
        """tests/peers/conformance.mjs: ({"exit_code", "scenarios": {name: {result, failures,
        warnings}}}, the suite's own output)."""
        args = ["node", str(CONFORMANCE_RUNNER), url]
        if scenarios:
            for name in scenarios:
                args += ["--scenario", name]
        else:
            args += ["--suite", suite]
        return run_json_line(args, self.env)

    def conformance_checks(self, url: str, scenario: str, outdir: Path) -> list[dict[str, Any]]:
        """Every check (SUCCESS, WARNING, FAILURE, INFO) of one scenario, from the suite's CLI
        directly: the runner above lists only failures and warnings."""
        outdir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["node", str(CONFORMANCE_CLI), "server", "--url", url, "--scenario", scenario, "-o", str(outdir)],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PEER_TIMEOUT,
            check=False,
        )
        found = sorted(outdir.glob(f"server-{scenario}-*/checks.json"))
        if len(found) != 1:
            raise HarnessError(f"{scenario}: expected one checks.json in {outdir}, found {found}\n{result.stdout}")
        return json.loads(found[0].read_text())


@pytest.fixture(scope="session")
def node_peers() -> NodePeers:
    try:
        return NodePeers(node_path())
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)


@dataclass
class ConformanceServer:
    """tests/peers/conformance_server.mjs on 127.0.0.1 (a port it picks), stateful by default."""

    workdir: Path
    env: dict[str, str]
    stateless: bool = False
    name: str = "conformance-upstream"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    url: str = field(default="", init=False)

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.out"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> ConformanceServer:
        args = ["node", str(CONFORMANCE_SERVER), "--port", "0"] + (["--stateless"] if self.stateless else [])
        with open(self.stdout_path, "wb") as out, open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=log)

        def ready() -> dict[str, Any] | None:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(message, dict) and message.get("ready"):
                    return message
            return None

        try:
            line = _wait_until(
                f"{self.name}: ready line", ready, READY_TIMEOUT, lambda: self.proc.poll() is None, self.log_tail
            )
        except BaseException:
            self.stop()
            raise
        self.url = line["url"]
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
