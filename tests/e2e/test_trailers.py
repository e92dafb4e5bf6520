"""Request bodies that end with HTTP/2 trailers, through real Envoy and the filter.

Over HTTP/2 a request may end with a trailers frame instead of a DATA frame with END_STREAM.
Then no body hook says the body is over, and the trailers hook is where it ends. The filter
once let trailers pass untouched, and with them a body it had never read: a sessionless call
reached the upstream, and an `initialize` went through with no session minted. These cases
speak h2c (prior knowledge, the listener's `codec_type: AUTO`) with the `h2` library, which
sends trailers where HTTP client libraries do not.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events

from conftest import MAIN_CONFIG, Envoys
from harness import (
    PROTOCOL_VERSION,
    SESSION_ID_RE,
    Envoy,
    expect_stats,
    initialize_body,
    open_session,
    render_bootstrap,
    rpc,
)

MISSING = "Bad Request: Mcp-Session-Id header is required"


@dataclass
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def h2_post(
    envoy: Envoy,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    chunks: int = 1,
    trailers: Sequence[tuple[str, str]] = (("x-checksum", "0"),),
) -> H2Response:
    """POSTs `body` (JSON) on one h2c stream in `chunks` DATA frames, none of which ends the
    stream, then `trailers`, which do."""
    data = json.dumps(body).encode()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{envoy.port}"),
                (":path", "/mcp"),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                *(headers or {}).items(),
            ],
        )
        size = -(-len(data) // chunks)
        for at in range(0, len(data), size):
            conn.send_data(stream, data[at : at + size])
        conn.send_headers(stream, list(trailers), end_stream=True)
        sock.sendall(conn.data_to_send())
        response = H2Response(status=0, headers={})
        while True:
            received = sock.recv(65536)
            assert received, "Envoy closed the connection before the response ended"
            for event in conn.receive_data(received):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    response.headers = dict(event.headers)
                    response.status = int(response.headers[":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    response.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                    response.trailers = dict(event.headers)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == stream:
                    return response
            sock.sendall(conn.data_to_send())


def test_a_sessionless_call_whose_body_ends_with_trailers_is_refused(envoy: Envoy) -> None:
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = h2_post(envoy, rpc("tools/list", 7), headers={"mcp-protocol-version": PROTOCOL_VERSION})
    assert response.status == 400, response
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == MISSING


def test_an_initialize_whose_body_ends_with_trailers_gets_a_session(envoy: Envoy) -> None:
    with expect_stats(envoy, {"created": 1, "live": 1}):
        response = h2_post(envoy, initialize_body(), chunks=5)
    assert response.status == 200, response
    assert SESSION_ID_RE.fullmatch(response.headers["mcp-session-id"]), response.headers
    assert b'"serverInfo"' in response.body


def test_a_call_on_a_session_whose_body_ends_with_trailers_goes_through(envoy: Envoy) -> None:
    sid = open_session(envoy.url())
    headers = {"mcp-session-id": sid, "mcp-protocol-version": PROTOCOL_VERSION}
    with expect_stats(envoy, {}):
        response = h2_post(envoy, rpc("tools/list", 3), headers=headers, chunks=3)
    assert response.status == 200, response
    assert b'"tools"' in response.body
    unknown = {"mcp-session-id": "0" * 40, "mcp-protocol-version": PROTOCOL_VERSION}
    with expect_stats(envoy, {"rejected.unknown": 1}):
        assert h2_post(envoy, rpc("tools/list", 4), headers=unknown).status == 404


class TrailersUpstream:
    """An h2c MCP upstream (prior knowledge) whose every answer ends with a trailers frame:
    the JSON body goes in DATA frames, none of which ends the stream. The demo servers cannot
    send trailers; a gRPC-style upstream, or any HTTP/2 server that reports a checksum, does."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[dict[str, str]] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        bodies: dict[int, bytes] = {}
        heads: dict[int, dict[str, str]] = {}
        with client:
            client.sendall(conn.data_to_send())
            while received := client.recv(65536):
                for event in conn.receive_data(received):
                    if isinstance(event, h2.events.RequestReceived):
                        heads[event.stream_id] = dict(event.headers)
                        bodies[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._answer(conn, event.stream_id, heads.pop(event.stream_id), bodies.pop(event.stream_id))
                client.sendall(conn.data_to_send())

    def _answer(self, conn: h2.connection.H2Connection, stream: int, head: dict[str, str], body: bytes) -> None:
        self.requests.append(head)
        message = json.loads(body) if body else {}
        result = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "serverInfo": {"name": "trailers", "version": "1"}}
        answer = json.dumps({"jsonrpc": "2.0", "id": message.get("id"), "result": result}).encode()
        conn.send_headers(stream, [(":status", "200"), ("content-type", "application/json")])
        half = len(answer) // 2
        conn.send_data(stream, answer[:half])
        conn.send_data(stream, answer[half:])
        conn.send_headers(stream, [("x-checksum", str(len(answer)))], end_stream=True)

    def close(self) -> None:
        self.sock.close()


def test_an_initialize_whose_answer_ends_with_trailers_gets_a_session(envoys: Envoys) -> None:
    """The filter judges an initialize by its answer's body, and an answer that ends with
    trailers never says so in a body hook: the trailers hook ends it, and the session the
    header named goes live (without the hook it stayed a reservation: `created` 0, and the
    session answered 404)."""
    upstream = TrailersUpstream()
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config=MAIN_CONFIG)
    (cluster,) = bootstrap["static_resources"]["clusters"]
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    envoy = envoys.start(bootstrap, "trailers-upstream")
    try:
        with expect_stats(envoy, {"created": 1, "live": 1}):
            response = h2_post(envoy, initialize_body(), trailers=(("x-checksum", "0"),))
        assert response.status == 200, response
        sid = response.headers.get("mcp-session-id", "")
        assert SESSION_ID_RE.fullmatch(sid), response.headers
        assert response.json()["result"]["serverInfo"]["name"] == "trailers"
        assert response.trailers.get("x-checksum"), response.trailers
        headers = {"mcp-session-id": sid, "mcp-protocol-version": PROTOCOL_VERSION}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        with expect_stats(envoy, {}):
            assert h2_post(envoy, initialized, headers=headers).status == 200
            assert h2_post(envoy, rpc("tools/list", 2), headers=headers).status == 200
        assert [r.get(":path") for r in upstream.requests] == ["/mcp"] * 3
    finally:
        envoy.stop()
        upstream.close()
