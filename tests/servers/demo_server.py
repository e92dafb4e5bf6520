"""Demo MCP server on the official Python SDK 2.x, for `make run` and the end-to-end tests.

    python tests/servers/demo_server.py --port 8000 --stateless --json

Modes (the two axes a proxy in front of an MCP server has to cope with):

  --stateless  the SDK mints no session ID; the filter's sessions are the only ones (default)
  --stateful   the SDK mints its own `mcp-session-id` (uuid4 hex) and checks it on every request
  --json       answers POSTs with `application/json` (default)
  --sse        answers POSTs with a `text/event-stream` response

Tools: `echo(text)`, `add(a, b)`, and `sleep(seconds)`, which sends a progress notification
about every 0.1 s (over SSE) before it answers, for long-stream tests.

Besides `/mcp` it serves two plain HTTP routes:

  GET /healthz           200 `ok` once the MCP session manager runs (readiness)
  GET /debug/requests    with --record: every request seen (method, path, query, headers, body,
                         response status and headers), oldest first, as JSON
  DELETE /debug/requests forget them

The tests use the record to see what Envoy actually forwarded: which session header the
upstream got, whether a request reached it at all.

Listening: `--port N` binds 127.0.0.1:N; `--fd N` serves an already listening socket inherited
from the parent (the test harness binds port 0 itself, so there is no free-port race, and keeps
the socket across a restart of this server). Logs only warnings and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from collections import deque
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MCP_PATH = "/mcp"
RECORD_LIMIT = 2000
RECORD_BODY_LIMIT = 64 * 1024


def build_mcp(name: str) -> MCPServer:
    mcp = MCPServer(name, version="1.0.0", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    async def sleep(seconds: float, ctx: Context) -> str:
        """Wait `seconds` (at most 600), reporting progress about every 0.1 s."""
        seconds = max(0.0, min(float(seconds), 600.0))
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (elapsed := loop.time() - start) < seconds:
            await ctx.report_progress(progress=elapsed, total=seconds, message="sleeping")
            await asyncio.sleep(min(0.1, seconds - elapsed))
        return f"slept {seconds:g}s"

    return mcp


class Recorder:
    """ASGI middleware: remembers each HTTP request and the response status and headers."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled
        self.entries: deque[dict[str, Any]] = deque(maxlen=RECORD_LIMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/healthz":
            await _plain(send, 200, b"ok\n")
            return
        if path == "/debug/requests":
            await self._debug(scope, send)
            return
        if not self.enabled:
            await self.app(scope, receive, send)
            return

        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": _headers(scope["headers"]),
            "body": "",
            "status": None,
            "response_headers": {},
        }
        self.entries.append(entry)
        body = bytearray()

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < RECORD_BODY_LIMIT:
                body.extend(message.get("body", b"")[: RECORD_BODY_LIMIT - len(body)])
                entry["body"] = body.decode("utf-8", errors="replace")
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                entry["response_headers"] = _headers(message.get("headers", []))
            await send(message)

        await self.app(scope, recording_receive, recording_send)

    async def _debug(self, scope: Scope, send: Send) -> None:
        if scope["method"] == "DELETE":
            self.entries.clear()
            await _plain(send, 204, b"")
        elif scope["method"] == "GET":
            data = json.dumps(list(self.entries)).encode()
            await _plain(send, 200, data, b"application/json")
        else:
            await _plain(send, 405, b"method not allowed\n")


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased header names; repeated headers joined with ', '."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


async def _plain(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=8000, help="listen on 127.0.0.1:PORT (default 8000)")
    where.add_argument("--fd", type=int, help="serve this inherited, already listening socket")
    sessions = parser.add_mutually_exclusive_group()
    sessions.add_argument("--stateless", dest="stateful", action="store_false", help="no SDK sessions (default)")
    sessions.add_argument("--stateful", dest="stateful", action="store_true", help="the SDK mints its own session IDs")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--json", dest="json_response", action="store_true", help="JSON responses (default)")
    body.add_argument("--sse", dest="json_response", action="store_false", help="SSE responses")
    parser.set_defaults(stateful=False, json_response=True)
    parser.add_argument("--record", action="store_true", help="record requests for GET /debug/requests")
    parser.add_argument("--name", default="demo", help="server name in the initialize result")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    mcp = build_mcp(args.name)
    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=args.json_response,
        stateless_http=not args.stateful,
    )
    config = uvicorn.Config(
        Recorder(app, enabled=args.record),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # Open SSE streams must not hold a restart (tests restart the stateful upstream).
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    sockets = None
    if args.fd is not None:
        sockets = [socket.socket(fileno=args.fd)]
    logging.getLogger("mcp").setLevel(logging.WARNING)
    asyncio.run(server.serve(sockets=sockets))


if __name__ == "__main__":
    main(sys.argv[1:])
