"""The official Python SDK 2.x client through the filter.

- `mode="legacy"`: the 2025-11-25 handshake; the filter's session carries initialize, tools,
  the GET stream, and the DELETE the client sends when it closes.
- default `mode="auto"`: the client probes `server/discover` on 2026-07-28 and, through the
  filter, stays there: no session header anywhere, every request counted as a passthrough.
"""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from sdk_client import sdk_client

from harness import MODERN_PROTOCOL_VERSION, PROTOCOL_VERSION, SESSION_ID_RE, new_tag, stats_changes


def _client(url: str, tag: str, mode: str) -> Client:
    return sdk_client(url, tag, mode)


async def _exercise(client: Client) -> None:
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} >= {"echo", "add", "sleep"}
    added = await client.call_tool("add", {"a": 19, "b": 23})
    assert added.structured_content == {"result": 42}
    echoed = await client.call_tool("echo", {"text": "through the filter"})
    assert echoed.structured_content == {"result": "through the filter"}


@pytest.mark.parametrize("kind", ["json", "sse", "stateful-sse"])
def test_legacy_client_uses_a_filter_session_and_deletes_it(envoy_for, upstreams, kind: str) -> None:
    envoy = envoy_for(kind)
    server = upstreams.get(kind)
    tag = new_tag()
    before = envoy.stats()

    async def main() -> None:
        with anyio.fail_after(60):
            async with _client(envoy.url(), tag, "legacy") as client:
                assert client.protocol_version == PROTOCOL_VERSION
                await _exercise(client)

    anyio.run(main)

    changes = stats_changes(before, envoy.stats())
    rejected = {k: v for k, v in changes.items() if k.startswith("rejected.")}
    # After the DELETE, the client's GET stream may try once more and meet the 404 it should.
    assert set(rejected) <= {"rejected.unknown"}, changes
    assert {k: v for k, v in changes.items() if k not in rejected} == {"created": 1, "terminated": 1}, changes

    seen = server.requests(tag)
    posts = [r for r in seen if r["method"] == "POST"]
    assert "mcp-session-id" not in posts[0]["headers"]  # the initialize
    later = {r["headers"].get("mcp-session-id") for r in posts[1:]}
    assert len(later) == 1 and None not in later, later
    (forwarded,) = later
    if kind.startswith("stateful"):
        assert not SESSION_ID_RE.match(forwarded), "the upstream must get its own ID"
        deletes = [r for r in seen if r["method"] == "DELETE"]
        assert [r["headers"].get("mcp-session-id") for r in deletes] == [forwarded]
    else:
        assert [r for r in seen if r["method"] == "DELETE"] == []  # the filter answered it


def test_auto_client_stays_on_the_sessionless_era(envoy, upstream) -> None:
    tag = new_tag()
    before = envoy.stats()

    async def main() -> None:
        with anyio.fail_after(60):
            async with _client(envoy.url(), tag, "auto") as client:
                assert client.protocol_version == MODERN_PROTOCOL_VERSION
                await _exercise(client)

    anyio.run(main)

    seen = upstream.requests(tag)
    assert seen, "nothing reached the upstream"
    assert all("mcp-session-id" not in r["headers"] for r in seen), seen
    assert all(r["headers"].get("mcp-protocol-version") == MODERN_PROTOCOL_VERSION for r in seen), seen
    assert seen[0]["headers"].get("mcp-method") == "server/discover"
    assert all(r["status"] == 200 for r in seen), seen
    changes = stats_changes(before, envoy.stats())
    assert changes == {"passthrough.sessionless": len(seen)}, changes
