"""A 3-member etcd 3.4 cluster on loopback, and the bootstrap of a filtering Envoy in front of it.

Reusable pieces, no pytest in here (tests/e2e/test_cluster.py and `make run-cluster` use them):

- `EtcdCluster`: three `etcd` processes (Debian's etcd-server 3.4.23, installed by
  scripts/setup.sh) on 127.0.0.11, .12 and .13, each with its data directory under one work
  directory. Started and stopped by pid, never by name. Waits for health (a leader elected,
  a linearizable read served on every running member); kills (SIGKILL), stops (SIGTERM) and
  restarts a member on its own data; finds the leader and the followers (`etcdctl endpoint
  status`); compacts to the current revision; reads the raw keys and values under a prefix.
- `render_cluster_bootstrap()`: the shipped `envoy/envoy.cluster.yaml` with the ports, the
  upstream, the wasm path, the etcd members' addresses and the plugin configuration (its
  `store` included) replaced, rendered with harness.render_bootstrap.

Loopback aliases: Linux routes all of 127.0.0.0/8 to `lo`, so 127.0.0.11-13 work with no setup.
Ports: `make run-cluster` uses etcd's standard ports (client 2379, peer 2380), as
envoy/envoy.cluster.yaml says; the tests use 22379 / 22380 (`TEST_CLIENT_PORT`,
`TEST_PEER_PORT`), so they run beside a `make run-cluster`. Every other end-to-end process
listens on 127.0.0.1 with a port the kernel picks (above 32767): no collision either way.

As a script, for scripts/run-cluster.sh: `python tests/e2e/etcd_cluster.py serve --data-dir
DIR` starts the cluster, says when it is healthy, and stops the members on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness import (
    REPO,
    WASM,
    HarnessError,
    _terminate,
    _wait_until,
    filter_configuration,
    plugin_configuration,
    render_bootstrap,
)

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"

HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
CLIENT_PORT = 2379  # envoy/envoy.cluster.yaml, make run-cluster
PEER_PORT = 2380
TEST_CLIENT_PORT = 22379  # the end-to-end tests
TEST_PEER_PORT = 22380

CLUSTER_CONFIG = REPO / "envoy" / "envoy.cluster.yaml"
ETCD_CLUSTER = "etcd"  # the Envoy cluster of the etcd members in that file
UPSTREAM_CLUSTER = "mcp_server"

READY_TIMEOUT = 30.0
ETCDCTL_TIMEOUT = 10.0

# Heartbeat 100 ms and election timeout 500 ms (etcd's defaults: 100 / 1000): a dead leader is
# replaced in about a second on loopback, which keeps the failover tests short; 5 heartbeats per
# election timeout is the ratio etcd's tuning guide asks for at least.
HEARTBEAT_MS = 100
ELECTION_MS = 500

# Flags every member runs with, beside its name, addresses and data directory.
MEMBER_FLAGS = (
    # Debian's 3.4.23 panics with --experimental-enable-lease-checkpoint unless the zap
    # logger is on (SCALE-OUT.md; the default is the older capnslog).
    "--logger=zap",
    "--log-outputs=stderr",
    # A leader change keeps each lease's remaining TTL instead of resetting it to the full TTL
    # (leases would live on as long as leaders keep changing); `-persist` keeps it across a
    # restart of every member too (3.4.23 accepts it and warns without it, though `etcd --help`
    # does not list it).
    "--experimental-enable-lease-checkpoint",
    "--experimental-enable-lease-checkpoint-persist",
    # Auto-compaction is off by default: every touch of a session is a revision, so without it
    # the history grows until the quota (2 GB) stops all writes. An hour of history, as
    # docs/OPERATIONS.md says (a watch that reconnects within that resumes where it was; the
    # tests compact by hand).
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=1h",
    # A restarted or partitioned member asks before it calls an election, so its return does not
    # depose a healthy leader (the default from 3.5 on).
    "--pre-vote=true",
    f"--heartbeat-interval={HEARTBEAT_MS}",
    f"--election-timeout={ELECTION_MS}",
)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (a pytest run
    or a `serve` that was killed cannot leave members behind). Linux only; best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Member:
    """One etcd member: its addresses, data directory, log and process."""

    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """As etcdctl and Envoy name it: host:port."""
        return f"{self.host}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def command(self, initial_cluster: str, token: str) -> list[str]:
        return [
            ETCD_BIN,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            # Read only on the first start; a member that has data rejoins with what it knows.
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            *MEMBER_FLAGS,
        ]

    def start(self, initial_cluster: str, token: str) -> None:
        assert not self.running, f"{self.name} is already running (pid {self.pid})"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start {self.starts + 1} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(initial_cluster, token),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads start members)
                # Out of the terminal's process group: a Ctrl-C reaches the members only
                # through whoever started them, which stops them one by one. (Interrupted all
                # at once, the leader hands over to a follower that is shutting down too and
                # waits ~6 s for the hand-over to time out.)
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: a crash. The data directory stays as the crash left it."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (a leader hands over first)."""
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None

    def healthy(self) -> bool:
        """etcd's /health (the JSON gateway on the client port): a leader is known and a
        linearizable read went through. False when the member cannot reach a quorum."""
        if not self.running:
            return False
        try:
            response = httpx.get(f"{self.client_url}/health", timeout=2)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """Three members on `hosts`, with data under `workdir`/<name>."""

    def __init__(
        self,
        workdir: Path,
        *,
        hosts: Sequence[str] = HOSTS,
        client_port: int = TEST_CLIENT_PORT,
        peer_port: int = TEST_PEER_PORT,
    ) -> None:
        self.workdir = workdir
        self.token = f"mcp-e2e-{uuid.uuid4().hex[:8]}"
        self.members = [
            Member(
                name=f"m{i + 1}",
                host=host,
                client_port=client_port,
                peer_port=peer_port,
                data_dir=workdir / f"m{i + 1}",
                log_path=workdir / f"m{i + 1}.log",
            )
            for i, host in enumerate(hosts)
        ]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    # lifecycle

    def start(self, timeout: float = READY_TIMEOUT) -> EtcdCluster:
        for member in self.members:
            if not member.running:
                member.start(self.initial_cluster, self.token)
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop_all()
            raise
        return self

    def stop_all(self) -> None:
        """SIGTERM every running member, by pid, and wait for it."""
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def kill(self, member: Member) -> None:
        member.kill()

    def stop(self, member: Member) -> None:
        member.stop()

    def restart(self, member: Member, timeout: float = READY_TIMEOUT) -> None:
        """Start a stopped or killed member again on its own data; wait until every running
        member is healthy (it rejoined and caught up)."""
        if member.running:
            member.stop()
        member.start(self.initial_cluster, self.token)
        self.wait_healthy(timeout)

    def running(self) -> list[Member]:
        return [m for m in self.members if m.running]

    def by_endpoint(self, endpoint: str) -> Member:
        endpoint = endpoint.removeprefix("http://")
        (member,) = [m for m in self.members if m.endpoint == endpoint]
        return member

    # health

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> None:
        """Every running member answers /health (a leader is elected and it serves reads), and
        they agree on the leader."""

        def ready() -> bool:
            members = self.running()
            if not members or not all(m.healthy() for m in members):
                return False
            try:
                return len({s["leader"] for s in self.status()}) == 1
            except HarnessError:
                return False

        _wait_until("etcd: cluster health", ready, timeout, lambda: bool(self.running()), self.describe)

    def describe(self) -> str:
        return "\n".join(
            f"--- {m.name} ({m.endpoint}, {'running' if m.running else 'down'})\n{m.log_tail()}"
            for m in self.members
        )

    # etcdctl

    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.running())

    def etcdctl(self, *args: str, endpoints: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ETCDCTL_API": "3"}
        command = [
            ETCDCTL_BIN,
            f"--endpoints={endpoints if endpoints is not None else self.endpoints()}",
            "--dial-timeout=2s",
            "--command-timeout=5s",
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=ETCDCTL_TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise HarnessError(f"etcdctl {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def status(self) -> list[dict[str, Any]]:
        """`etcdctl endpoint status` of every running member: [{member, member_id, leader,
        revision, raft_term}]; leader 0 when the member knows of none (during an election: the
        JSON then leaves the field out, as protobuf's JSON does with zeros)."""
        out = []
        for entry in json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout):
            status = entry["Status"]
            out.append(
                {
                    "member": self.by_endpoint(entry["Endpoint"]),
                    "member_id": status["header"]["member_id"],
                    "leader": status.get("leader", 0),
                    "revision": status["header"]["revision"],
                    "raft_term": status["raftTerm"],
                }
            )
        return out

    def leader(self) -> Member:
        """The member the running members agree is the leader."""
        statuses = self.status()
        leaders = {s["leader"] for s in statuses}
        if len(leaders) != 1 or 0 in leaders:
            raise HarnessError(f"etcd: no agreed leader: {statuses}")
        (leader_id,) = leaders
        for s in statuses:
            if s["member_id"] == leader_id:
                return s["member"]
        raise HarnessError(f"etcd: the leader {leader_id:x} is not a running member: {statuses}")

    def followers(self) -> list[Member]:
        leader = self.leader()
        return [m for m in self.running() if m is not leader]

    def revision(self) -> int:
        """The cluster's current revision (a linearizable read)."""
        # Any key: the answer's header carries the revision the read was served at.
        return int(json.loads(self.etcdctl("get", "--limit=1", "-w", "json", "/").stdout)["header"]["revision"])

    def compact(self, revision: int | None = None, *, physical: bool = True) -> int:
        """Compact the history up to `revision` (default: the current one); `physical` waits
        until the members have removed it from their backends. Returns the revision."""
        revision = self.revision() if revision is None else revision
        self.etcdctl("compact", str(revision), *(["--physical"] if physical else []))
        return revision

    # data

    def kvs(self, prefix: str) -> list[tuple[bytes, bytes]]:
        """Every key under `prefix` with its value, raw bytes (a linearizable read)."""
        data = json.loads(self.etcdctl("get", prefix, "--prefix", "-w", "json").stdout)
        return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in data.get("kvs", [])]

    def count(self, prefix: str) -> int:
        """The number of keys under `prefix`. (etcdctl 3.4 has no --count-only; a range answer's
        `count` is the number of keys in the range whatever its limit.)"""
        data = json.loads(self.etcdctl("get", prefix, "--prefix", "--keys-only", "--limit=1", "-w", "json").stdout)
        return int(data.get("count", 0))

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)


# --------------------------------------------------------------------------- Envoy


def store_config(
    prefix: str,
    *,
    cluster: str = ETCD_CLUSTER,
    timeout_ms: int = 1000,
    unavailable: str = "reject",
) -> dict[str, Any]:
    """The plugin configuration's `store` key for etcd."""
    return {"etcd": {"cluster": cluster, "prefix": prefix, "timeout_ms": timeout_ms, "unavailable": unavailable}}


def render_cluster_bootstrap(
    *,
    upstream_port: int,
    etcd: EtcdCluster | Sequence[tuple[str, int]],
    filter_config: Mapping[str, Any] | None = None,
    store: Mapping[str, Any] | None = None,
    with_filter: bool = True,
    wasm_path: Path = WASM,
    listener_port: int = 0,
    admin_port: int = 0,
    reference: Path = CLUSTER_CONFIG,
) -> dict[str, Any]:
    """`envoy/envoy.cluster.yaml` for one filtering Envoy of this test's cluster.

    `etcd`: the members the `etcd` Envoy cluster balances over (an EtcdCluster, or
    (host, port) pairs). The plugin configuration is the reference file's, with the keys of
    `filter_config` set over it and then `store` (see `store_config`) as its `store` key when
    given. `with_filter=False` leaves the wasm filter out (the etcd cluster stays).
    """
    shipped = yaml.safe_load(reference.read_text())
    clusters = shipped["static_resources"]["clusters"]
    (etcd_cluster,) = [c for c in clusters if c["name"] == ETCD_CLUSTER]
    # harness.render_bootstrap takes a reference of envoy/envoy.yaml's shape (one cluster):
    # hand it the file without the etcd cluster, then put that back with this run's members.
    shipped["static_resources"]["clusters"] = [c for c in clusters if c["name"] != ETCD_CLUSTER]
    config = json.loads(plugin_configuration(shipped) or "{}")
    config.update(filter_config or {})
    if store is not None:
        config["store"] = dict(store)
    with tempfile.TemporaryDirectory(prefix="cluster-bootstrap-") as tmp:
        single = Path(tmp) / "reference.yaml"
        single.write_text(yaml.safe_dump(shipped, sort_keys=False))
        bootstrap = render_bootstrap(
            upstream_port=upstream_port,
            filter_config=config,
            with_filter=with_filter,
            wasm_path=wasm_path,
            listener_port=listener_port,
            admin_port=admin_port,
            reference=single,
        )
    members = [(m.host, m.client_port) for m in etcd.members] if isinstance(etcd, EtcdCluster) else list(etcd)
    etcd_cluster = copy.deepcopy(etcd_cluster)
    (locality,) = etcd_cluster["load_assignment"]["endpoints"]
    locality["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}} for host, port in members
    ]
    bootstrap["static_resources"]["clusters"].append(etcd_cluster)
    return bootstrap


def without_store(bootstrap: Mapping[str, Any]) -> dict[str, Any]:
    """The same bootstrap with the plugin configuration's `store` key removed: the filter as it
    was before the etcd store (to check the Envoy side of a cluster bootstrap on its own)."""
    out = copy.deepcopy(dict(bootstrap))
    (listener,) = out["static_resources"]["listeners"]
    for f in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
        if f["name"] == "mcp_session":
            value = filter_configuration(f)
            config = json.loads(value["value"])
            config.pop("store", None)
            value["value"] = json.dumps(config)
    return out


# --------------------------------------------------------------------------- make run-cluster


def serve(args: argparse.Namespace) -> int:
    """Start the cluster, say so, keep it until SIGINT or SIGTERM, then stop every member."""
    workdir = Path(args.data_dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(workdir, client_port=args.client_port, peer_port=args.peer_port)

    def stop(signum: int, _frame: object) -> None:
        # Once: a second Ctrl-C (or run-cluster.sh's SIGTERM) must not cut the shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        cluster.start()
        leader = cluster.leader()
        print(
            f"etcd: 3 members healthy ({', '.join(m.client_url for m in cluster.members)}), "
            f"leader {leader.name}; data and logs in {workdir}",
            flush=True,
        )
        reported: set[str] = set()
        while True:
            time.sleep(1)
            for member in cluster.members:
                if not member.running and member.name not in reported:
                    reported.add(member.name)
                    print(f"etcd: {member.name} exited; its log: {member.log_path}", file=sys.stderr, flush=True)
    except HarnessError as e:
        print(f"etcd: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the 3-member cluster until SIGINT / SIGTERM")
    run.add_argument("--data-dir", required=True, help="the members' data directories and logs")
    run.add_argument("--client-port", type=int, default=CLIENT_PORT)
    run.add_argument("--peer-port", type=int, default=PEER_PORT)
    args = parser.parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
