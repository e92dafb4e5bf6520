"""The session filter behind Envoy's own MCP filter and an RBAC rule on its metadata, as shipped in
`envoy/envoy.mcp-filters.yaml` (only ports, upstream and wasm path changed).

- The handshake era through both filters: initialize, session, initialized, tools/call, DELETE,
  then 404; a tool call larger than Envoy's MCP filter's default body limit (8 KiB).
- Envoy's MCP filter in VERIFY mode: a 2026-07-28 request whose headers disagree with its body
  gets that filter's 400 and reaches neither the session filter nor the upstream; one that agrees
  passes through both.
- The RBAC rule on the MCP filter's metadata denies `tools/call` of `forbidden`, on a session
  and without one, and nothing else.
- The official Python SDK client (handshake and auto mode) and the MCP conformance suite (both
  upstreams) behave through both filters as through the session filter alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sdk_client import run_sdk_session

from harness import (
    INITIALIZED,
    MODERN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    REPO,
    SESSION_ID_RE,
    TAG_HEADER,
    Envoy,
    assert_rejection,
    describe,
    expect_stats,
    first_message,
    initialize,
    new_tag,
    post,
    render_bootstrap,
    request,
    stats_changes,
    tool_call,
)
from peers import ConformanceServer, node_peers  # noqa: F401 (fixture)

MCP_FILTERS_CONFIG = REPO / "envoy" / "envoy.mcp-filters.yaml"
# Envoy 1.40's MCP filter writes its metadata here (PLATFORM.md's older `mcp_proxy` is not it).
MCP_METADATA_NAMESPACE = "envoy.filters.http.mcp"
RBAC_DENIED = b"RBAC: access denied"
# What the MCP filter answers when 2026-07-28 headers disagree with the body.
HEADER_MISMATCH_CODE = -32020


@pytest.fixture(scope="module")
def mcp_envoy(envoys, upstreams) -> Iterator[Envoy]:
    """The shipped config (its own plugin configuration) in front of the stateless JSON server."""
    bootstrap = render_bootstrap(upstream_port=upstreams.get("json").port, reference=MCP_FILTERS_CONFIG)
    envoy = envoys.start(bootstrap, "mcp-filters")
    yield envoy
    envoy.stop()


def _modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"mcp-protocol-version": MODERN_PROTOCOL_VERSION, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


def _modern_call(name: str, request_id: int = 1, **arguments: Any) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return tool_call(name, arguments, request_id, **meta)


def test_the_shipped_file_has_the_mcp_filter_and_rbac_before_the_session_filter() -> None:
    (listener,) = render_bootstrap(upstream_port=8000, reference=MCP_FILTERS_CONFIG)["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    names = [f["name"] for f in chain["filters"][0]["typed_config"]["http_filters"]]
    assert names == ["envoy.filters.http.mcp", "envoy.filters.http.rbac", "mcp_session", "envoy.filters.http.router"]
    text = MCP_FILTERS_CONFIG.read_text()
    assert f"filter: {MCP_METADATA_NAMESPACE}" in text


def test_handshake_flow_through_both_filters(mcp_envoy, upstreams) -> None:
    url = mcp_envoy.url()
    with expect_stats(mcp_envoy, {"created": 1, "terminated": 1, "rejected.unknown": 1}):
        response = initialize(url)
        assert response.status_code == 200, describe(response)
        session = response.headers.get("mcp-session-id")
        assert session is not None and SESSION_ID_RE.match(session), describe(response)
        ack = post(url, INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
        assert ack.status_code == 202, describe(ack)
        called = post(url, tool_call("echo", {"text": "through two filters"}, 2), session=session,
                      protocol_version=PROTOCOL_VERSION)
        assert called.status_code == 200, describe(called)
        assert first_message(called)["result"]["structuredContent"] == {"result": "through two filters"}
        # DELETE is no MCP message: the route's McpOverride lets it through to the session filter.
        deleted = request("DELETE", url, session=session)
        assert deleted.status_code == 204, describe(deleted)
        gone = post(url, tool_call("echo", {"text": "again"}, 3), session=session, protocol_version=PROTOCOL_VERSION)
        assert_rejection(gone, 404, -32001, "Session not found")


def test_a_large_tool_call_passes_both_filters(mcp_envoy) -> None:
    """Envoy's MCP filter would refuse a body over 8 KiB by default; the shipped file raises it."""
    url = mcp_envoy.url()
    response = initialize(url)
    session = response.headers["mcp-session-id"]
    assert post(url, INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION).status_code == 202
    text = "x" * 65536
    called = post(url, tool_call("echo", {"text": text}, 2), session=session, protocol_version=PROTOCOL_VERSION)
    assert called.status_code == 200, describe(called)
    assert first_message(called)["result"]["structuredContent"] == {"result": text}


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("method", _modern_headers("tools/list")),
        ("name", _modern_headers("tools/call", "add")),
    ],
)
def test_mismatched_modern_headers_are_refused_by_the_mcp_filter(mcp_envoy, upstream, case, headers) -> None:
    tag = new_tag()
    with expect_stats(mcp_envoy, {}):
        response = post(mcp_envoy.url(), _modern_call("echo", 7, text="hi"), headers={**headers, TAG_HEADER: tag})
    info = describe(response)
    assert response.status_code == 400, info
    body = response.json()
    assert body["error"]["code"] == HEADER_MISMATCH_CODE and body["id"] == 7, info
    assert upstream.requests(tag) == []


def test_matching_modern_headers_pass_both_filters(mcp_envoy, upstream) -> None:
    tag = new_tag()
    with expect_stats(mcp_envoy, {"passthrough.sessionless": 1}):
        response = post(
            mcp_envoy.url(), _modern_call("echo", 8, text="hi"),
            headers={**_modern_headers("tools/call", "echo"), TAG_HEADER: tag},
        )
    assert response.status_code == 200, describe(response)
    assert first_message(response)["result"]["structuredContent"] == {"result": "hi"}
    assert len(upstream.requests(tag)) == 1


def test_rbac_denies_the_forbidden_tool_on_a_session_and_without(mcp_envoy, upstream) -> None:
    url = mcp_envoy.url()
    response = initialize(url)
    session = response.headers["mcp-session-id"]
    assert post(url, INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION).status_code == 202
    tag = new_tag()
    # RBAC runs before the session filter: a denied request changes no session stat.
    with expect_stats(mcp_envoy, {}):
        denied = post(url, tool_call("forbidden", {}, 4), session=session, protocol_version=PROTOCOL_VERSION,
                      headers={TAG_HEADER: tag})
        modern = post(url, _modern_call("forbidden", 5),
                      headers={**_modern_headers("tools/call", "forbidden"), TAG_HEADER: tag})
    for r in (denied, modern):
        assert r.status_code == 403 and r.content == RBAC_DENIED, describe(r)
    assert upstream.requests(tag) == []
    # The session and every other tool are untouched.
    allowed = post(url, tool_call("add", {"a": 2, "b": 3}, 6), session=session, protocol_version=PROTOCOL_VERSION)
    assert allowed.status_code == 200, describe(allowed)
    assert first_message(allowed)["result"]["structuredContent"] == {"result": 5}
    listed = post(url, {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, session=session,
                  protocol_version=PROTOCOL_VERSION)
    assert listed.status_code == 200, describe(listed)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_client_through_both_filters(mcp_envoy, upstream, mode: str) -> None:
    tag = new_tag()
    before = mcp_envoy.stats()

    version = run_sdk_session(mcp_envoy.url(), tag, mode)
    assert version == (PROTOCOL_VERSION if mode == "legacy" else MODERN_PROTOCOL_VERSION)
    changes = stats_changes(before, mcp_envoy.stats())
    seen = upstream.requests(tag)
    if mode == "legacy":
        rejected = {k for k in changes if k.startswith("rejected.")}
        # After the DELETE, the client's GET stream may try once more and meet its 404.
        assert rejected <= {"rejected.unknown"}, changes
        assert {k: v for k, v in changes.items() if k not in rejected} == {"created": 1, "terminated": 1}, changes
    else:
        assert changes == {"passthrough.sessionless": len(seen)}, changes
        assert seen[0]["headers"].get("mcp-method") == "server/discover"


# --------------------------------------------------------------------------- conformance


@pytest.fixture(scope="module")
def conformance_through_both(workdir, envoys, node_peers) -> dict[str, tuple[dict, dict, dict]]:  # noqa: F811
    """mode -> (suite run directly, suite run through both filters, session filter stat changes)."""
    runs = {}
    for mode in ("stateful", "stateless"):
        server = ConformanceServer(workdir, node_peers.env, stateless=mode == "stateless", name=f"conf-mcpf-{mode}")
        server.start()
        envoy = None
        try:
            bootstrap = render_bootstrap(upstream_port=server.port, reference=MCP_FILTERS_CONFIG)
            envoy = envoys.start(bootstrap, f"mcp-filters-conformance-{mode}")
            direct, _ = node_peers.conformance(server.url)
            before = envoy.stats()
            through, _ = node_peers.conformance(envoy.url())
            runs[mode] = (direct, through, stats_changes(before, envoy.stats()))
        finally:
            if envoy is not None:
                envoy.stop()
            server.stop()
    return runs


@pytest.mark.parametrize("mode", ["stateful", "stateless"])
def test_conformance_through_both_filters(conformance_through_both, mode: str) -> None:
    direct, through, stats = conformance_through_both[mode]
    passing = {n for n, e in direct["scenarios"].items() if e["result"] == "pass"}
    lost = {n: through["scenarios"].get(n) for n in sorted(passing) if through["scenarios"].get(n, {}).get("result") != "pass"}
    assert not lost, f"pass directly, not through both filters: {json.dumps(lost, indent=1)[:4000]}"
    assert set(through["scenarios"]) == set(direct["scenarios"])
    assert stats.get("created") == len(through["scenarios"]), stats
    assert not {k: v for k, v in stats.items() if k.startswith("rejected.")}, stats
