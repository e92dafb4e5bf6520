"""Behaviour 8: MCP-Protocol-Version on handshake-era requests: known revisions or nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from harness import assert_rejection, describe, expect_stats, initialize, open_session, post, rpc

UNSUPPORTED = (
    "Bad Request: Unsupported protocol version (supported versions: 2025-03-26, 2025-06-18, 2025-11-25)"
)


@pytest.mark.parametrize("version", [None, "2025-03-26", "2025-06-18", "2025-11-25"])
def test_known_or_missing_version_is_accepted(envoy, version) -> None:
    session = open_session(envoy.url())
    with expect_stats(envoy, {}):
        response = post(envoy.url(), rpc("tools/list", 1), session=session, protocol_version=version)
    assert response.status_code == 200, describe(response)


@pytest.mark.parametrize("version", ["2024-11-05", "2025-12-01", "2026-07-27", "bogus", "2025-11-25x"])
def test_unknown_version_on_a_session_gets_400(envoy, version: str) -> None:
    session = open_session(envoy.url())
    with expect_stats(envoy, {"rejected.version": 1}):
        response = post(envoy.url(), rpc("tools/list", 1), session=session, protocol_version=version)
    assert_rejection(response, 400, -32000, UNSUPPORTED)


def test_unknown_version_on_initialize_gets_400(envoy) -> None:
    with expect_stats(envoy, {"rejected.version": 1}):
        response = initialize(envoy.url(), protocol_version="2024-11-05")
    assert_rejection(response, 400, -32000, UNSUPPORTED)
    assert "mcp-session-id" not in response.headers


@pytest.mark.parametrize("with_session", [False, True])
def test_a_repeated_version_is_refused_in_either_era(envoy, with_session: bool) -> None:
    """The era was read from the first of several `MCP-Protocol-Version` headers: `2026-07-28`
    then `2025-11-25` passed untouched as sessionless, to an upstream that may read the other
    one and serve a handshake-era call with no session."""
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-protocol-version", "2025-11-25"),
    ]
    if with_session:
        headers.append(("mcp-session-id", open_session(envoy.url())))
    with expect_stats(envoy, {"rejected.header": 1}):
        response = httpx.post(envoy.url(), content=json.dumps(rpc("tools/list", 1)), headers=headers, timeout=15)
    assert_rejection(response, 400, -32000, "Bad Request: MCP-Protocol-Version header must be a single value")
