"""The official Python SDK 2.x client, as the end-to-end tests drive it."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from harness import TAG_HEADER


def sdk_client(url: str, tag: str, mode: str, headers: Mapping[str, str] | None = None) -> Client:
    """A client whose every request carries the test's tag (and `headers`), on a fresh
    connection per request, like every other test: spreads over both workers."""
    http = httpx2.AsyncClient(
        headers={TAG_HEADER: tag, **(headers or {})},
        timeout=httpx2.Timeout(15, read=30),
        limits=httpx2.Limits(max_keepalive_connections=0),
    )
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=15)


def run_sdk_session(url: str, tag: str, mode: str, headers: Mapping[str, str] | None = None) -> str:
    """A whole session: connect, list the tools, call `add`, close. Returns the protocol
    version the client settled on."""
    version = ""

    async def main() -> None:
        nonlocal version
        with anyio.fail_after(60):
            async with sdk_client(url, tag, mode, headers) as client:
                version = client.protocol_version
                tools = await client.list_tools()
                assert {t.name for t in tools.tools} >= {"echo", "add"}
                added = await client.call_tool("add", {"a": 19, "b": 23})
                assert added.structured_content == {"result": 42}

    anyio.run(main)
    return version
