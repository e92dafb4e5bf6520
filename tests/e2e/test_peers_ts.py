"""The official TypeScript SDK client (npm `@modelcontextprotocol/sdk` 1.x) through the filter.

`tests/peers/ts_client.mjs` connects with `StreamableHTTPClientTransport` (initialize,
notifications/initialized, the GET stream), lists the tools, calls `echo`, then ends the session
with `terminateSession()` (DELETE). Through Envoy (2 workers) and the filter in front of the demo
Python server, stateless (JSON, SSE) and stateful (SSE, its own session IDs): the session ID the
client holds is the filter's, never the upstream's, and after the DELETE the filter answers 404
for it.
"""

from __future__ import annotations

import json

import pytest

from harness import (
    PROTOCOL_VERSION,
    SESSION_ID_RE,
    TAG_HEADER,
    assert_rejection,
    new_tag,
    post,
    rpc,
    stats_changes,
)
from peers import node_peers  # noqa: F401 (fixture)


@pytest.mark.parametrize("kind", ["json", "sse", "stateful-sse"])
def test_ts_client_holds_the_filter_session_and_terminates_it(
    envoy_for,
    upstreams,
    node_peers,  # noqa: F811 (the fixture imported above)
    kind: str,
) -> None:
    envoy = envoy_for(kind)
    server = upstreams.get(kind)
    tag = new_tag()
    message = f"through the filter ({kind})"
    before = envoy.stats()

    out, stderr = node_peers.ts_client(envoy.url(), message=message, headers={TAG_HEADER: tag})
    report = f"{json.dumps(out, indent=1)}\n{stderr[-3000:]}"
    assert out["ok"] is True, report

    # What the client holds and sent.
    held = out["session_id"]
    assert isinstance(held, str) and SESSION_ID_RE.match(held), report
    assert out["protocol_version"] == PROTOCOL_VERSION, report
    assert {"echo", "add", "sleep"} <= set(out["tools"]), report
    assert out["echo"] == message, report
    assert out["session_id_after_terminate"] is None, report
    exchanges = out["http"]
    assert exchanges[0] == {"method": "POST", "rpc": "initialize", "status": 200, "session_id": None}, report
    deletes = [i for i, x in enumerate(exchanges) if x["method"] == "DELETE"]
    assert len(deletes) == 1, report
    until_delete = exchanges[1 : deletes[0] + 1]
    assert [x["rpc"] for x in until_delete if x["method"] == "POST"] == [
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ], report
    assert all(x["session_id"] == held for x in until_delete), report
    assert all(200 <= x["status"] < 300 for x in until_delete), report
    if not kind.startswith("stateful"):
        assert exchanges[deletes[0]]["status"] == 204, report  # the filter answered the DELETE
    # A GET stream the SDK reopened after the DELETE meets the filter's 404, and nothing else.
    after_delete = exchanges[deletes[0] + 1 :]
    assert all(x["method"] == "GET" and x["status"] == 404 for x in after_delete), report

    # What the upstream saw: never the filter's ID as its own, and (stateful) its own ID back.
    seen = server.requests(tag)
    assert seen and seen[0]["method"] == "POST" and "mcp-session-id" not in seen[0]["headers"], seen
    forwarded = {r["headers"].get("mcp-session-id") for r in seen[1:]}
    upstream_id = seen[0]["response_headers"].get("mcp-session-id")
    if kind.startswith("stateful"):
        assert upstream_id is not None and upstream_id != held and not SESSION_ID_RE.match(upstream_id), seen[0]
        assert forwarded == {upstream_id}, seen
        assert [r["headers"]["mcp-session-id"] for r in seen if r["method"] == "DELETE"] == [upstream_id], seen
    else:
        assert all("mcp-session-id" not in r["response_headers"] for r in seen), seen
        assert forwarded == {held}, seen
        assert [r for r in seen if r["method"] == "DELETE"] == [], seen

    # The filter has ended the session: the ID the client held is now unknown.
    gone = post(envoy.url(), rpc("tools/list", 9), session=held, protocol_version=PROTOCOL_VERSION)
    assert_rejection(gone, 404, -32001, "Session not found")

    changes = stats_changes(before, envoy.stats())
    assert changes == {"created": 1, "terminated": 1, "rejected.unknown": 1 + len(after_delete)}, changes
