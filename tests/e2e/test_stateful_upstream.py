"""Behaviour 9: an upstream with its own sessions (the SDK's stateful mode).

The client sees only the filter's ID; every request reaches the upstream with the upstream's
ID; the upstream's 404 for a mapped session ends the filter's session too.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import httpx
import pytest

from conftest import MAIN_CONFIG
from harness import (
    INITIALIZED,
    PROTOCOL_VERSION,
    SESSION_ID_RE,
    TAG_HEADER,
    HandlerServer,
    QuietHandler,
    assert_rejection,
    describe,
    expect_stats,
    first_message,
    initialize,
    new_tag,
    post,
    request,
    rpc,
    render_bootstrap,
    tool_call,
)

UPSTREAM_ID_RE = re.compile(r"^[0-9a-f]{32}$")  # the Python SDK's uuid4().hex


def _open_mapped(envoy, server, tag):
    """initialize through the filter: (filter's ID, upstream's ID)."""
    response = initialize(envoy.url(), headers={TAG_HEADER: tag})
    assert response.status_code == 200, describe(response)
    ours = response.headers.get("mcp-session-id", "")
    assert SESSION_ID_RE.match(ours), describe(response)
    (seen,) = server.requests(tag)
    theirs = seen["response_headers"]["mcp-session-id"]
    assert UPSTREAM_ID_RE.match(theirs)
    assert theirs not in str(response.headers) and theirs not in response.text, "the upstream's ID leaked"
    return ours, theirs


def _no_leak(response: httpx.Response, ours: str, theirs: str) -> None:
    assert theirs not in str(response.headers.raw) and theirs not in response.text, describe(response)
    if "mcp-session-id" in response.headers:
        assert response.headers.get_list("mcp-session-id") == [ours], describe(response)


@pytest.mark.parametrize("kind", ["stateful-json", "stateful-sse"])
def test_client_sees_only_the_filter_id_and_requests_are_mapped(envoy_for, upstreams, kind: str) -> None:
    envoy = envoy_for(kind)
    server = upstreams.get(kind)
    tag = new_tag()
    with expect_stats(envoy, {"created": 1, "live": 1}):
        ours, theirs = _open_mapped(envoy, server, tag)

    ack = post(envoy.url(), INITIALIZED, session=ours, protocol_version=PROTOCOL_VERSION, headers={TAG_HEADER: tag})
    assert ack.status_code == 202, describe(ack)
    _no_leak(ack, ours, theirs)

    call = post(envoy.url(), tool_call("add", {"a": 5, "b": 6}, request_id=3), session=ours, headers={TAG_HEADER: tag})
    assert call.status_code == 200, describe(call)
    assert first_message(call)["result"]["structuredContent"] == {"result": 11}
    _no_leak(call, ours, theirs)

    seen = server.requests(tag)
    assert [r["headers"].get("mcp-session-id") for r in seen] == [None, theirs, theirs]
    assert [r["status"] for r in seen] == [200, 202, 200]
    log = envoy.log_text()
    assert ours not in log and theirs not in log, "a full session ID is in the Envoy log"


def test_get_stream_is_mapped(envoy_for, upstreams) -> None:
    envoy = envoy_for("stateful-sse")
    server = upstreams.get("stateful-sse")
    tag = new_tag()
    ours, theirs = _open_mapped(envoy, server, tag)
    assert post(envoy.url(), INITIALIZED, session=ours, protocol_version=PROTOCOL_VERSION).status_code == 202

    headers = {"accept": "text/event-stream", "mcp-session-id": ours, TAG_HEADER: tag}
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        with client.stream("GET", envoy.url(), headers=headers) as response:
            assert response.status_code == 200
            assert response.headers.get_list("mcp-session-id") == [ours]
            assert theirs not in str(response.headers.raw)
    get = [r for r in server.requests(tag) if r["method"] == "GET"]
    assert [r["headers"].get("mcp-session-id") for r in get] == [theirs]


def test_delete_is_forwarded_with_the_upstream_id(envoy_for, upstreams) -> None:
    envoy = envoy_for("stateful-sse")
    server = upstreams.get("stateful-sse")
    tag = new_tag()
    ours, theirs = _open_mapped(envoy, server, tag)
    assert post(envoy.url(), INITIALIZED, session=ours, protocol_version=PROTOCOL_VERSION).status_code == 202

    with expect_stats(envoy, {"terminated": 1, "live": -1}):
        response = request("DELETE", envoy.url(), session=ours, headers={TAG_HEADER: tag})
    assert 200 <= response.status_code < 300, describe(response)
    _no_leak(response, ours, theirs)
    deletes = [r for r in server.requests(tag) if r["method"] == "DELETE"]
    assert [(r["headers"].get("mcp-session-id"), r["status"]) for r in deletes] == [(theirs, 200)]

    after = post(envoy.url(), rpc("tools/list", 4), session=ours, protocol_version=PROTOCOL_VERSION)
    assert_rejection(after, 404, -32001, "Session not found")


def test_upstream_404_ends_the_filter_session(envoy_for, upstreams) -> None:
    """Restart the stateful upstream: it forgets its sessions and answers 404; the filter then
    ends its own session, so the next request is the filter's 404, not the upstream's."""
    server = upstreams.new("stateful-json")
    envoy = envoy_for(server, fresh=True)
    tag = new_tag()
    ours, theirs = _open_mapped(envoy, server, tag)
    assert post(envoy.url(), INITIALIZED, session=ours, protocol_version=PROTOCOL_VERSION).status_code == 202
    ok = post(envoy.url(), tool_call("echo", {"text": "before"}), session=ours)
    assert ok.status_code == 200, describe(ok)

    server.restart()

    with expect_stats(envoy, {"terminated": 1, "live": -1}):
        gone = post(envoy.url(), rpc("tools/list", 5), session=ours, protocol_version=PROTOCOL_VERSION, headers={TAG_HEADER: tag})
    assert gone.status_code == 404, describe(gone)
    _no_leak(gone, ours, theirs)
    (seen,) = server.requests(tag)  # the new process's record
    assert seen["headers"].get("mcp-session-id") == theirs and seen["status"] == 404

    with expect_stats(envoy, {"rejected.unknown": 1}):
        again = post(envoy.url(), rpc("tools/list", 6), session=ours, protocol_version=PROTOCOL_VERSION, headers={TAG_HEADER: tag})
    assert_rejection(again, 404, -32001, "Session not found")
    assert len(server.requests(tag)) == 1, "the ended session must not reach the upstream"
    envoy.stop()


class RefusingUpstream(HandlerServer):
    """A stateful MCP server (standard library) that mints its own session IDs and answers a
    DELETE of one with `delete_status`: 405 is how the spec lets a server keep clients from
    ending sessions."""

    def __init__(self) -> None:
        self.delete_status = 405
        self.sessions: set[str] = set()
        upstream = self
        minted = itertools.count(1)

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                message = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if message.get("method") == "initialize":
                    sid = f"up-{next(minted)}"
                    upstream.sessions.add(sid)
                    result = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "serverInfo": {"name": "refusing", "version": "1"}}
                    self._send(200, {"jsonrpc": "2.0", "id": message["id"], "result": result}, sid)
                elif self.headers.get("mcp-session-id") not in upstream.sessions:
                    self._send(404, {"jsonrpc": "2.0", "error": {"code": -32001, "message": "Session not found"}, "id": None})
                elif "id" not in message:
                    self._send(202, None)
                else:
                    self._send(200, {"jsonrpc": "2.0", "id": message["id"], "result": {"tools": []}})

            def do_DELETE(self) -> None:  # noqa: N802
                sid = self.headers.get("mcp-session-id")
                if sid not in upstream.sessions:
                    self._send(404, None)
                    return
                if upstream.delete_status == 200:
                    upstream.sessions.discard(sid)
                self._send(upstream.delete_status, None)

            def _send(self, status: int, body: Any, sid: str | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if sid:
                    self.send_header("mcp-session-id", sid)
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


def test_a_delete_the_upstream_refuses_ends_neither_session(envoys) -> None:
    """The upstream's answer to a DELETE decides: refused (405), both sessions go on, and the
    client, told so, keeps using its ID; accepted, both end. Regression: the filter ended its
    own session before the upstream answered, and the client's next request got 404."""
    upstream = RefusingUpstream()
    envoy = envoys.start(render_bootstrap(upstream_port=upstream.port, filter_config=MAIN_CONFIG), "refusing")
    try:
        with expect_stats(envoy, {"created": 1, "live": 1}):
            response = initialize(envoy.url())
            ours = response.headers["mcp-session-id"]
            assert post(envoy.url(), INITIALIZED, session=ours, protocol_version=PROTOCOL_VERSION).status_code == 202
        with expect_stats(envoy, {}):
            refused = request("DELETE", envoy.url(), session=ours)
            assert refused.status_code == 405, describe(refused)
            assert refused.headers.get("mcp-session-id") in (None, ours), describe(refused)
            listed = post(envoy.url(), rpc("tools/list", 2), session=ours, protocol_version=PROTOCOL_VERSION)
            assert listed.status_code == 200, describe(listed)
        upstream.delete_status = 200
        with expect_stats(envoy, {"terminated": 1, "live": -1}):
            ended = request("DELETE", envoy.url(), session=ours)
            assert ended.status_code == 200, describe(ended)
        after = post(envoy.url(), rpc("tools/list", 3), session=ours, protocol_version=PROTOCOL_VERSION)
        assert_rejection(after, 404, -32001, "Session not found")
        assert upstream.sessions == set()
    finally:
        envoy.stop()
        upstream.close()
