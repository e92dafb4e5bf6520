"""The shipped compose files, run for real: podman, runc and podman-compose, images built here.

`scripts/containers.sh` (set up by `make setup`) gives podman an engine configuration and an
image store of the project's own, under `.containers/`, and builds stand-ins for the images the
compose files name (`containers/images.sh`): nothing is pulled, and a warm run reuses them.

Each pass of `make e2e` runs the compose files of its build (harness ARTIFACT):
`envoy/docker-compose.yaml` and the cluster file (two Envoys, etcd)
`envoy/docker-compose.cluster.yaml` with MCP_ARTIFACT=wasm; `envoy/docker-compose.native.yaml`
and `envoy/docker-compose.cluster.native.yaml` with MCP_ARTIFACT=native.

For each compose file: bring it up unmodified, wait on its own healthchecks (podman 4.3 ignores
`condition: service_healthy`, and with no systemd nothing runs the checks: the test runs them),
then on each Envoy's `/ready`; run the README walk-through through it; take it down, and nothing
of it may be left. A second compose file needs one more test: `compose(FILE)` brings it up and
`.envoys()` gives each Envoy service with the harness's request and stats helpers.

Where podman cannot run (no root, no podman), the test names what is missing: it fails under
CI=true, and is skipped, loudly, elsewhere.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import (
    INITIALIZED,
    MODERN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    ARTIFACT,
    FILTER_PATH,
    READY_TIMEOUT,
    REPO,
    SESSION_ID_RE,
    Envoy,
    HarnessError,
    _wait_until,
    assert_rejection,
    describe,
    expect_stats,
    first_message,
    initialize,
    post,
    request,
    rpc,
    stats_changes,
    tool_call,
)


CONTAINERS = REPO / "scripts" / "containers.sh"
# The compose file of the build under test: the Wasm filter, or the native module.
COMPOSE_FILES = {
    "wasm": REPO / "envoy" / "docker-compose.yaml",
    "native": REPO / "envoy" / "docker-compose.native.yaml",
}
COMPOSE_FILE = COMPOSE_FILES[ARTIFACT]
# Two Envoys sharing sessions through a 3-member etcd cluster, with the build under test.
CLUSTER_COMPOSE_FILES = {
    "wasm": REPO / "envoy" / "docker-compose.cluster.yaml",
    "native": REPO / "envoy" / "docker-compose.cluster.native.yaml",
}
CLUSTER_COMPOSE_FILE = CLUSTER_COMPOSE_FILES[ARTIFACT]

# The Envoy image the compose files name, and the container ports of envoy/envoy.compose.yaml.
ENVOY_IMAGE = "envoyproxy/envoy:"
LISTENER_PORT = 10000
ADMIN_PORT = 9901

PROJECT_LABEL = "io.podman.compose.project"
SERVICE_LABEL = "io.podman.compose.service"

# A cold run builds the images (about a minute, almost all of it debootstrap); a warm one
# checks their labels in about two seconds.
IMAGES_TIMEOUT = 600
COMPOSE_TIMEOUT = 120

pytestmark = pytest.mark.timeout(IMAGES_TIMEOUT + 2 * COMPOSE_TIMEOUT)


def containers(*args: str, timeout: float = COMPOSE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """scripts/containers.sh ARGS: podman and podman-compose on the project's engine and store."""
    return subprocess.run(
        ["bash", str(CONTAINERS), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(done.args[1:])}\nexit {done.returncode}\n{done.stdout}{done.stderr}"


def podman(*args: str) -> str:
    done = containers("podman", *args)
    if done.returncode != 0:
        raise HarnessError(output(done))
    return done.stdout


DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def seconds(duration: str) -> float:
    """A compose duration ("2s", "1m30s", "500ms") in seconds."""
    parts = DURATION_RE.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def published(ports: list[Any], container_port: int) -> int:
    """The host port a service's short-syntax `ports:` publishes `container_port` on."""
    for entry in ports:
        *_, host, inside = str(entry).split(":")
        if int(inside) == container_port:
            return int(host)
    raise AssertionError(f"port {container_port} is not published: {ports}")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


class ComposeEnvoy(Envoy):
    """An Envoy in a compose container: the harness's URL, admin and stats helpers on the ports
    the compose file publishes, and the container's log. Compose starts and stops it."""

    def __init__(self, project: ComposeProject, service: str, port: int, admin_port: int) -> None:
        super().__init__({}, project.workdir, name=f"{project.name}-{service}")
        self.project = project
        self.service = service
        self.port = port
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    def start(self) -> Envoy:
        raise NotImplementedError("compose starts this Envoy")

    def log_text(self) -> str:
        return self.project.logs(self.service)


class ComposeProject:
    """One compose file run by podman-compose under a project name of its own."""

    def __init__(self, file: Path, workdir: Path) -> None:
        self.file = file
        self.workdir = workdir
        self.name = f"mcp-session-filter-e2e-{file.stem}"
        self.services: dict[str, Any] = yaml.safe_load(file.read_text())["services"]
        self.is_up = False

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        return containers("compose", "--file", str(self.file), "--project-name", self.name, *args)

    def container(self, service: str) -> str:
        names = podman(
            "ps", "--all", "--filter", f"label={PROJECT_LABEL}={self.name}",
            "--filter", f"label={SERVICE_LABEL}={service}", "--format", "{{.Names}}",
        ).split()  # fmt: skip
        assert len(names) == 1, f"{self.name}: {len(names)} containers for {service}: {names}"
        return names[0]

    def logs(self, service: str) -> str:
        done = containers("podman", "logs", self.container(service))
        return done.stdout + done.stderr

    def running(self, service: str) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.container(service)).strip() == "true"

    def leftovers(self) -> list[str]:
        """This project's containers, pods and networks that still exist."""
        label = f"label={PROJECT_LABEL}={self.name}"
        found = [f"container {n}" for n in podman("ps", "--all", "--filter", label, "--format", "{{.Names}}").split()]
        found += [f"pod {n}" for n in podman("pod", "ls", "--filter", f"name=pod_{self.name}", "--format", "{{.Name}}").split()]
        found += [f"network {n}" for n in podman("network", "ls", "--filter", label, "--format", "{{.Name}}").split()]
        return found

    def up(self) -> None:
        if self.leftovers():
            # An earlier run of this test that never got to `down` (killed): its containers
            # hold the ports.
            self.down()
        for service in self.services.values():
            for port in service.get("ports", []):
                host_port = int(str(port).split(":")[-2])
                if port_in_use(host_port):
                    pytest.fail(f"{self.file.name} publishes port {host_port}, which is in use (`make run`?)", pytrace=False)
        for attempt in (1, 2):
            self.is_up = True
            done = self.compose("up", "--detach")
            if done.returncode != 0:
                raise HarnessError(f"{self.name}: up failed\n{output(done)}")
            try:
                self.wait_all_healthy()
                break
            except HarnessError as e:
                # The services' own healthchecks (etcd, the demo server) fail before any Envoy
                # is asked anything: podman's container DNS has been seen to stop answering here
                # for half a minute ("lookup etcd-3: i/o timeout"), and a 3-member etcd then
                # elects no leader. Such a start is taken down and made once more, with a
                # warning in the test report; a second failure fails the test.
                if attempt == 2:
                    raise
                warnings.warn(f"{self.name}: started again after: {str(e)[:2000]}", stacklevel=1)
                self.down()
        for envoy in self.envoys().values():
            _wait_until(f"{envoy.name}: admin /ready", lambda e=envoy: ready(e), READY_TIMEOUT, describe=envoy.log_tail)
            # Ready is not resolved: a cluster found by DNS has no host until the first answer,
            # and a request then gets Envoy's own 503 "no healthy upstream" (seen once in
            # `make test`, on the first initialize of the native cluster file).
            _wait_until(
                f"{envoy.name}: a healthy host in every cluster",
                lambda e=envoy: every_cluster_has_a_host(e),
                READY_TIMEOUT,
                describe=envoy.log_tail,
            )

    def wait_all_healthy(self) -> None:
        for service, spec in self.services.items():
            if "healthcheck" in spec and not spec["healthcheck"].get("disable", False):
                self.wait_healthy(service, spec["healthcheck"])

    def wait_healthy(self, service: str, healthcheck: dict[str, Any]) -> None:
        """Run the service's own healthcheck until it passes, within the time the file gives it
        (start_period + interval × retries); fail at once if the container stops."""
        budget = seconds(healthcheck.get("start_period", "0s")) + seconds(
            healthcheck.get("interval", "30s")
        ) * int(healthcheck.get("retries", 3))
        container = self.container(service)

        def healthy() -> bool:
            return containers("podman", "healthcheck", "run", container).returncode == 0

        _wait_until(
            f"{self.name}: {service}'s healthcheck",
            healthy,
            budget,
            alive=lambda: self.running(service),
            describe=lambda: self.logs(service),
        )

    def envoys(self) -> dict[str, ComposeEnvoy]:
        """The Envoy services, by name."""
        out = {}
        for service, spec in self.services.items():
            if str(spec.get("image", "")).startswith(ENVOY_IMAGE):
                ports = spec.get("ports", [])
                out[service] = ComposeEnvoy(self, service, published(ports, LISTENER_PORT), published(ports, ADMIN_PORT))
        return out

    def down(self) -> None:
        done = self.compose("down")
        self.is_up = False
        if done.returncode != 0:
            raise HarnessError(f"{self.name}: down failed\n{output(done)}")


def ready(envoy: Envoy) -> bool:
    try:
        return httpx.get(f"{envoy.admin_url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def every_cluster_has_a_host(envoy: Envoy) -> bool:
    """Whether each of the Envoy's clusters counts a healthy host (`membership_healthy`)."""
    try:
        stats = httpx.get(f"{envoy.admin_url}/stats", params={"filter": r"\.membership_healthy$"}, timeout=2)
    except httpx.TransportError:
        return False
    counts = [line.rpartition(":")[2].strip() for line in stats.text.splitlines() if line.strip()]
    return stats.status_code == 200 and bool(counts) and all(c.isdigit() and int(c) > 0 for c in counts)


@pytest.fixture(scope="module")
def engine() -> None:
    """Podman on the project's engine and store, with the images built; or the reason it is not."""
    check = containers("check")
    if check.returncode != 0:
        message = (
            "THE COMPOSE FILES WERE NOT RUN: podman cannot run here.\n"
            + (check.stdout + check.stderr).strip()
            + "\n(`make setup` as root on Debian sets it up; under CI=true this fails the run)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    built = containers("images", timeout=IMAGES_TIMEOUT)
    if built.returncode != 0:
        pytest.fail(f"building the images failed\n{output(built)}", pytrace=False)


@pytest.fixture
def compose(engine: None, workdir: Path) -> Iterator[Callable[[Path], ComposeProject]]:
    """compose(FILE) brings a compose file up and waits until it serves; whatever a test leaves
    up is taken down after it."""
    if not FILTER_PATH.exists():
        pytest.fail(f"the filter is not built: {FILTER_PATH} is missing (run `make build`)", pytrace=False)
    projects: list[ComposeProject] = []

    def up(file: Path) -> ComposeProject:
        project = ComposeProject(file, workdir)
        projects.append(project)
        project.up()
        return project

    yield up
    for project in projects:
        if project.is_up:
            project.down()


def test_compose_file_serves_the_readme_walk_through(compose: Callable[[Path], ComposeProject]) -> None:
    """The compose file of the build under test (docker-compose.yaml or
    docker-compose.native.yaml) serves the README walk-through, counted in that build's stats."""
    project = compose(COMPOSE_FILE)
    (envoy,) = project.envoys().values()
    url = envoy.url()

    with expect_stats(
        envoy,
        {
            "created": 1,
            "rejected.lifecycle": 1,
            "rejected.missing": 1,
            "terminated": 1,
            "rejected.unknown": 1,
            "passthrough.sessionless": 1,
        },
    ):
        # initialize: the demo server's answer, and the filter's session ID.
        response = initialize(url)
        assert response.status_code == 200, describe(response)
        assert first_message(response)["result"]["serverInfo"]["name"] == "demo", describe(response)
        session = response.headers.get("mcp-session-id")
        assert session is not None and SESSION_ID_RE.match(session), describe(response)

        # Before notifications/initialized, the filter refuses.
        early = post(url, rpc("tools/list", 2), session=session)
        assert_rejection(
            early, 400, -32000, "Bad Request: Session not initialized: send notifications/initialized first", 2
        )

        ack = post(url, INITIALIZED, session=session)
        assert ack.status_code == 202, describe(ack)

        call = post(url, tool_call("add", {"a": 2, "b": 3}, 3), session=session, protocol_version=PROTOCOL_VERSION)
        assert call.status_code == 200, describe(call)
        result = first_message(call)["result"]
        assert result["structuredContent"] == {"result": 5}, describe(call)
        assert result["content"] == [{"type": "text", "text": "5"}], describe(call)

        missing = post(url, rpc("tools/list", 4))
        assert_rejection(missing, 400, -32000, "Bad Request: Mcp-Session-Id header is required", 4)

        ended = request("DELETE", url, session=session, accept=None, content_type=None)
        assert ended.status_code == 204, describe(ended)

        gone = post(url, rpc("tools/list", 5), session=session)
        assert_rejection(gone, 404, -32001, "Session not found")

        # Sessionless-era traffic passes untouched.
        discover = post(
            url,
            rpc(
                "server/discover",
                6,
                {
                    "_meta": {
                        "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL_VERSION,
                        "io.modelcontextprotocol/clientCapabilities": {},
                    }
                },
            ),
            protocol_version=MODERN_PROTOCOL_VERSION,
            headers={"mcp-method": "server/discover"},
        )
        assert discover.status_code == 200, describe(discover)
        assert MODERN_PROTOCOL_VERSION in first_message(discover)["result"]["supportedVersions"], describe(discover)
        assert "mcp-session-id" not in discover.headers, describe(discover)

    # What the compose file says of the demo server's DNS-rebinding check: a Host of localhost
    # with a port passes, a Host without one gets 421.
    with_port = initialize(url, headers={"host": f"localhost:{envoy.port}"})
    assert with_port.status_code == 200, describe(with_port)
    without_port = initialize(url, headers={"host": "localhost"})
    assert without_port.status_code == 421, describe(without_port)

    assert envoy.log_problems() == [], envoy.log_tail()

    project.down()
    assert project.leftovers() == []


# How long a session ended through one Envoy may still be served by another: the end reaches
# the other Envoys by their etcd watch (milliseconds), not by the DELETE's answer.
END_PROPAGATION_TIMEOUT = 2.0


def test_cluster_compose_file_shares_sessions_between_two_envoys(compose: Callable[[Path], ComposeProject]) -> None:
    """The cluster compose file of the build under test (docker-compose.cluster.yaml or
    docker-compose.cluster.native.yaml): two Envoys (:10000, :10001) with one session store, a
    3-member etcd cluster. A session minted by one is used and ended through the other, and the
    first then answers 404 for it, counted in that build's stats."""
    project = compose(CLUSTER_COMPOSE_FILE)
    envoys = {envoy.port: envoy for envoy in project.envoys().values()}
    assert set(envoys) == {10000, 10001}, envoys
    first, second = envoys[10000], envoys[10001]
    before = {port: envoy.stats() for port, envoy in envoys.items()}

    response = initialize(first.url())
    assert response.status_code == 200, describe(response)
    assert first_message(response)["result"]["serverInfo"]["name"] == "demo", describe(response)
    session = response.headers.get("mcp-session-id")
    assert session is not None and SESSION_ID_RE.match(session), describe(response)
    ack = post(first.url(), INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
    assert ack.status_code == 202, describe(ack)

    # The other Envoy knows the session, and that it was initialized.
    call = post(second.url(), tool_call("add", {"a": 2, "b": 3}, 3), session=session, protocol_version=PROTOCOL_VERSION)
    assert call.status_code == 200, describe(call)
    assert first_message(call)["result"]["structuredContent"] == {"result": 5}, describe(call)

    ended = request("DELETE", second.url(), session=session, accept=None, content_type=None)
    assert ended.status_code == 204, describe(ended)

    # The end reaches the first Envoy within the bound; until then it may still serve the
    # session, and nothing else.
    def gone() -> httpx.Response | None:
        answer = post(first.url(), rpc("tools/list", 5), session=session, protocol_version=PROTOCOL_VERSION)
        assert answer.status_code in (200, 404), describe(answer)
        return answer if answer.status_code == 404 else None

    assert_rejection(_wait_until("the end on :10000", gone, END_PROPAGATION_TIMEOUT), 404, -32001, "Session not found")

    after = {port: envoy.stats() for port, envoy in envoys.items()}
    delta = {port: stats_changes(before[port], after[port]) for port in envoys}
    assert delta[10000].get("created") == 1 and delta[10000].get("rejected.unknown") == 1, delta
    assert delta[10001].get("terminated") == 1 and "created" not in delta[10001], delta
    for envoy in envoys.values():
        assert envoy.log_problems() == [], envoy.log_tail()

    project.down()
    assert project.leftovers() == []
