"""Behaviour 1: sessionless-era requests (MCP-Protocol-Version 2026-07-28 or later) pass
untouched: nothing minted, nothing validated, the session header ignored."""

from __future__ import annotations

import secrets

import pytest

from harness import MODERN_PROTOCOL_VERSION, TAG_HEADER, describe, expect_stats, first_message, new_tag, post, request


def modern_request(method: str, request_id: int, version: str, **params):
    meta = {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1.0.0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": meta}}


def modern_headers(method: str, version: str = MODERN_PROTOCOL_VERSION, **extra: str) -> dict[str, str]:
    return {"mcp-protocol-version": version, "mcp-method": method, **extra}


def test_server_discover_passes_untouched(envoy, upstream) -> None:
    tag = new_tag()
    body = modern_request("server/discover", 1, MODERN_PROTOCOL_VERSION)
    with expect_stats(envoy, {"passthrough.sessionless": 1}):
        response = post(envoy.url(), body, headers=modern_headers("server/discover", **{TAG_HEADER: tag}))
    assert response.status_code == 200, describe(response)
    assert "result" in first_message(response)
    assert "mcp-session-id" not in response.headers
    (seen,) = upstream.requests(tag)
    assert "mcp-session-id" not in seen["headers"]
    assert seen["headers"]["mcp-protocol-version"] == MODERN_PROTOCOL_VERSION


def test_tool_call_passes_and_its_session_header_is_ignored(envoy, upstream) -> None:
    tag = new_tag()
    bogus = secrets.token_hex(20)
    body = modern_request("tools/call", 2, MODERN_PROTOCOL_VERSION, name="add", arguments={"a": 20, "b": 22})
    headers = modern_headers("tools/call", **{"mcp-name": "add", "mcp-session-id": bogus, TAG_HEADER: tag})
    with expect_stats(envoy, {"passthrough.sessionless": 1}):
        response = post(envoy.url(), body, headers=headers)
    assert response.status_code == 200, describe(response)
    assert first_message(response)["result"]["structuredContent"] == {"result": 42}
    (seen,) = upstream.requests(tag)
    assert seen["headers"].get("mcp-session-id") == bogus, "the header must pass untouched"


def test_later_revision_also_passes(envoy, upstream) -> None:
    """A revision after 2026-07-28 is sessionless too: the filter does not judge it, the upstream does."""
    tag = new_tag()
    with expect_stats(envoy, {"passthrough.sessionless": 1}):
        response = post(
            envoy.url(),
            modern_request("server/discover", 1, "2027-01-15"),
            headers=modern_headers("server/discover", "2027-01-15", **{TAG_HEADER: tag}),
        )
    assert response.status_code not in (404, 413, 415), describe(response)
    assert len(upstream.requests(tag)) == 1


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_pass_to_the_upstream(envoy, upstream, method: str) -> None:
    tag = new_tag()
    with expect_stats(envoy, {"passthrough.sessionless": 1}):
        response = request(
            method,
            envoy.url(),
            protocol_version=MODERN_PROTOCOL_VERSION,
            accept="text/event-stream",
            headers={TAG_HEADER: tag},
        )
    (seen,) = upstream.requests(tag)
    assert seen["method"] == method
    assert response.status_code == seen["status"], describe(response)
