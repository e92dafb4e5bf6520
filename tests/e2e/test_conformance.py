"""The MCP conformance suite (npm `@modelcontextprotocol/conformance`) through the filter.

Its server scenarios (`--suite all`) run twice against the same upstream built for them
(`tests/peers/conformance_server.mjs`, TypeScript SDK): directly, then through Envoy (2 workers)
with the filter and the shipped plugin configuration. Once for the stateful upstream (its own
session IDs, behind the filter's) and once for the stateless one (the filter's are the only
session IDs). Every scenario that passes directly passes through the filter, and the scenarios
that want a session ID (`server-sse-multiple-streams`, `server-sse-polling`) get one through the
filter even from the stateless upstream.

Each suite run takes a few seconds; the module runs 4 of them plus one scenario alone.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from harness import Envoy, plugin_configuration, render_bootstrap, stats_changes
from peers import CONFORMANCE_CLI, REPO, ConformanceServer, NodePeers, node_peers  # noqa: F401 (fixture)

MODES = ["stateful", "stateless"]

# Tools that send the client a request (sampling, elicitation) and wait for its answer on
# another POST: a stateless server cannot do that, so these fail against it, directly or not.
SERVER_TO_CLIENT = {
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "elicitation-sep1330-enums",
}
# The suite's warning when a server gave no session ID, by scenario.
SESSION_WARNINGS = {
    "server-sse-multiple-streams": "server-sse-multiple-streams-session",
    "server-sse-polling": "server-sse-polling-session",
}
MULTIPLE_STREAMS = "server-sse-multiple-streams"


def shipped_plugin_config() -> dict[str, Any]:
    """The plugin configuration of envoy/envoy.yaml."""
    return json.loads(plugin_configuration(render_bootstrap(upstream_port=0)) or "{}")


@dataclass
class Runs:
    mode: str
    direct: dict[str, Any]
    through: dict[str, Any]
    stats: dict[str, int]  # the filter's stat changes during the suite run through it
    multiple_streams_checks: list[dict[str, Any]]  # that scenario alone, through the filter
    multiple_streams_stats: dict[str, int]


def listed_server_scenarios(peers: NodePeers) -> set[str]:
    out = subprocess.run(
        ["node", str(CONFORMANCE_CLI), "list", "--server"],
        cwd=REPO,
        env=peers.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(re.findall(r"^\s+- (\S+)", out, re.MULTILINE))


def result(run: dict[str, Any], scenario: str) -> str:
    entry = run["scenarios"].get(scenario)
    if entry is None:
        return "missing"
    if entry["result"] == "pass":
        return "pass"
    return "FAIL " + ",".join(entry["failures"])


def table(runs: dict[str, Runs]) -> str:
    """scenario x (stateful, stateless) x (direct, through) as text."""
    names = sorted({n for r in runs.values() for run in (r.direct, r.through) for n in run["scenarios"]})
    columns = [(mode, side) for mode in runs for side in ("direct", "through")]
    width = max(len(n) for n in names)
    cells = {
        (n, mode, side): result(getattr(runs[mode], side), n)
        for n in names
        for mode, side in columns
    }
    col_width = max(12, *(len(c) for c in cells.values()))
    lines = [f"{'scenario':<{width}}  " + "  ".join(f"{m + ' ' + s:<{col_width}}" for m, s in columns)]
    for n in names:
        lines.append(f"{n:<{width}}  " + "  ".join(f"{cells[(n, m, s)]:<{col_width}}" for m, s in columns))
    for mode, side in columns:
        run = getattr(runs[mode], side)
        passed = sum(1 for e in run["scenarios"].values() if e["result"] == "pass")
        warned = {n: e["warnings"] for n, e in run["scenarios"].items() if e["warnings"]}
        lines.append(f"{mode} {side}: {passed}/{len(run['scenarios'])} pass; warnings: {warned}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def conformance(workdir, envoys, node_peers) -> dict[str, Runs]:  # noqa: F811
    config = shipped_plugin_config()
    runs: dict[str, Runs] = {}
    for mode in MODES:
        server = ConformanceServer(workdir, node_peers.env, stateless=mode == "stateless", name=f"conformance-{mode}")
        server.start()
        envoy: Envoy | None = None
        try:
            # A fresh Envoy of its own: its stats are this suite's alone.
            envoy = envoys.get(server, config, fresh=True)
            direct, _ = node_peers.conformance(server.url)
            before = envoy.stats()
            through, _ = node_peers.conformance(envoy.url())
            after = envoy.stats()
            checks = node_peers.conformance_checks(envoy.url(), MULTIPLE_STREAMS, workdir / f"conformance-{mode}-ms")
            runs[mode] = Runs(
                mode=mode,
                direct=direct,
                through=through,
                stats=stats_changes(before, after),
                multiple_streams_checks=checks,
                multiple_streams_stats=stats_changes(after, envoy.stats()),
            )
        finally:
            if envoy is not None:
                envoy.stop()
            server.stop()
    print(f"\nconformance suite, server scenarios (--suite all):\n{table(runs)}")
    for mode, r in runs.items():
        print(f"filter stats, {mode}: suite run {r.stats}; {MULTIPLE_STREAMS} alone {r.multiple_streams_stats}")
    return runs


def test_the_suite_ran_every_server_scenario(conformance, node_peers) -> None:  # noqa: F811
    listed = listed_server_scenarios(node_peers)
    assert len(listed) >= 30, listed
    for runs in conformance.values():
        for run in (runs.direct, runs.through):
            assert set(run["scenarios"]) == listed, table(conformance)


@pytest.mark.parametrize("mode", MODES)
def test_the_upstream_passes_what_it_is_built_for_directly(conformance, mode: str) -> None:
    """The baseline: directly, the stateful upstream passes everything, the stateless one
    everything but the server-to-client requests."""
    direct = conformance[mode].direct["scenarios"]
    failing = {n for n, e in direct.items() if e["result"] != "pass"}
    assert failing == (SERVER_TO_CLIENT if mode == "stateless" else set()), table(conformance)


@pytest.mark.parametrize("mode", MODES)
def test_every_scenario_passing_directly_passes_through_the_filter(conformance, mode: str) -> None:
    runs = conformance[mode]
    passing_directly = {n for n, e in runs.direct["scenarios"].items() if e["result"] == "pass"}
    lost = {n: result(runs.through, n) for n in sorted(passing_directly) if result(runs.through, n) != "pass"}
    assert not lost, f"pass directly, not through the filter: {lost}\n{table(conformance)}"
    # The filter did its job for the whole run: each scenario connects once (one session, also
    # for the stateless upstream), and nothing was refused.
    assert runs.stats.get("created") == len(runs.through["scenarios"]), runs.stats
    assert not {k: v for k, v in runs.stats.items() if k.startswith("rejected.")}, runs.stats


@pytest.mark.parametrize("mode", MODES)
def test_scenarios_that_want_a_session_id_get_one_through_the_filter(conformance, mode: str) -> None:
    runs = conformance[mode]
    for scenario, warning in SESSION_WARNINGS.items():
        assert warning not in runs.through["scenarios"][scenario]["warnings"], table(conformance)
        if mode == "stateless":
            # Directly, the stateless upstream gives none: the session ID is the filter's.
            assert warning in runs.direct["scenarios"][scenario]["warnings"], table(conformance)


def test_multiple_streams_gets_a_filter_session_from_the_stateless_upstream(conformance) -> None:
    """`server-sse-multiple-streams` alone through the filter in front of the stateless
    upstream: one session created, and the scenario's concurrent POST streams on it (a check
    the suite runs only when it got a session ID) all accepted."""
    runs = conformance["stateless"]
    checks = {c["id"]: c for c in runs.multiple_streams_checks}
    report = json.dumps(runs.multiple_streams_checks, indent=1)[-4000:]
    assert SESSION_WARNINGS[MULTIPLE_STREAMS] not in checks, report
    assert checks["server-accepts-multiple-post-streams"]["status"] == "SUCCESS", report
    assert all(c["status"] != "FAILURE" for c in runs.multiple_streams_checks), report
    assert runs.multiple_streams_stats.get("created") == 1, runs.multiple_streams_stats
    assert not {k: v for k, v in runs.multiple_streams_stats.items() if k.startswith("rejected.")}, (
        runs.multiple_streams_stats
    )
