"""Behaviour 2: initialize mints a session on a 2xx result; a failed initialize leaves none."""

from __future__ import annotations

import pytest

from conftest import MAIN_CONFIG
from harness import (
    INITIALIZED,
    PROTOCOL_VERSION,
    SESSION_ID_RE,
    TAG_HEADER,
    WASM_FILTER_NAME,
    Envoy,
    HandlerServer,
    QuietHandler,
    assert_rejection,
    describe,
    expect_stats,
    first_message,
    initialize,
    initialize_body,
    new_tag,
    post,
    render_bootstrap,
    rpc,
)


@pytest.mark.parametrize("kind", ["json", "sse"])
def test_initialize_mints_a_session(envoy_for, upstreams, kind: str) -> None:
    envoy = envoy_for(kind)
    tag = new_tag()
    with expect_stats(envoy, {"created": 1, "live": 1}):
        # From a browser's page (an origin the SDK server allows): `origin` asks for the CORS
        # expose list.
        response = initialize(envoy.url(), headers={TAG_HEADER: tag, "origin": "http://127.0.0.1:3000"})
    info = describe(response)
    assert response.status_code == 200, info
    expected_type = "text/event-stream" if kind == "sse" else "application/json"
    assert response.headers["content-type"].startswith(expected_type), info
    assert first_message(response)["result"]["protocolVersion"] == PROTOCOL_VERSION, info
    session = response.headers.get("mcp-session-id")
    assert session is not None and SESSION_ID_RE.match(session), info
    exposed = [h.strip().lower() for h in response.headers.get("access-control-expose-headers", "").split(",")]
    assert "mcp-session-id" in exposed, info
    # Added where the answer lacks them, set where it has them: one copy of each either way.
    assert response.headers.get_list("mcp-session-id") == [session], info
    assert len(response.headers.get_list("access-control-expose-headers")) == 1, info

    (seen,) = upstreams.get(kind).requests(tag)
    assert "mcp-session-id" not in seen["headers"]

    # The session works.
    ack = post(envoy.url(), INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
    assert ack.status_code == 202, describe(ack)
    listed = post(envoy.url(), rpc("tools/list", 2), session=session, protocol_version=PROTOCOL_VERSION)
    assert listed.status_code == 200, describe(listed)
    assert {t["name"] for t in first_message(listed)["result"]["tools"]} >= {"echo", "add", "sleep"}


def test_initialize_without_origin_gets_no_expose_list(envoy) -> None:
    """No browser reads the expose list of an answer to a request without `origin` (Fetch's
    CORS check applies only to requests that carry it), so none is added there."""
    response = initialize(envoy.url())
    info = describe(response)
    assert response.status_code == 200, info
    assert SESSION_ID_RE.match(response.headers.get("mcp-session-id", "")), info
    assert "access-control-expose-headers" not in response.headers, info


@pytest.mark.parametrize("kind", ["json", "sse"])
def test_initialize_answered_with_a_jsonrpc_error_leaves_no_usable_session(envoy_for, kind: str) -> None:
    """The real SDK answers an initialize with bad params 200 + a JSON-RPC error (-32602)."""
    envoy = envoy_for(kind)
    with expect_stats(envoy, {}):  # nothing created, nothing live
        response = initialize(envoy.url(), body=rpc("initialize", 1, {"bogus": True}))
    info = describe(response)
    assert response.status_code == 200, info
    assert first_message(response)["error"]["code"] == -32602, info
    # The ID may already have gone out with the 2xx headers (they leave before the body is
    # seen), but it must not be usable.

    session = response.headers.get("mcp-session-id")
    if session is not None:
        reply = post(envoy.url(), rpc("tools/list", 2), session=session, protocol_version=PROTOCOL_VERSION)
        assert_rejection(reply, 404, -32001, "Session not found")


def test_initialize_answered_non_2xx_leaves_no_session(envoy_for) -> None:
    """The real SDK (SSE mode) answers 406 when the client does not accept text/event-stream."""
    envoy = envoy_for("sse")
    with expect_stats(envoy, {}):
        response = initialize(envoy.url(), accept="application/json")
    assert response.status_code == 406, describe(response)
    assert "mcp-session-id" not in response.headers, describe(response)


def test_initialize_with_a_string_id_and_extra_params(envoy) -> None:
    body = initialize_body(request_id="init-1")
    body["params"]["_meta"] = {"progressToken": "x"}
    response = initialize(envoy.url(), body=body)
    assert response.status_code == 200, describe(response)
    assert first_message(response)["id"] == "init-1"
    assert SESSION_ID_RE.match(response.headers.get("mcp-session-id", "")), describe(response)


def test_initialize_behind_a_filter_that_buffered_the_body_mints_a_session(workdir, upstream) -> None:
    """A filter before ours that buffers the whole request (Envoy's `buffer`) hands the body on
    in one piece: the filter reads it once. (The native build read it twice, as buffered and as
    received, and refused every initialize as unparseable JSON; behind Envoy's `mcp` filter it
    did not, test_mcp_filters.py passed with it.)"""
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config={})
    (listener,) = bootstrap["static_resources"]["listeners"]
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    at = next(i for i, f in enumerate(filters) if f["name"] == WASM_FILTER_NAME)
    filters.insert(at, {
        "name": "read_body",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 1048576,
        },
    })  # fmt: skip
    with Envoy(bootstrap, workdir, name="envoy-behind-buffer") as envoy:
        with expect_stats(envoy, {"created": 1, "live": 1}):
            response = initialize(envoy.url())
        assert response.status_code == 200, describe(response)
        session = response.headers.get("mcp-session-id")
        assert session is not None and SESSION_ID_RE.match(session), describe(response)
        ack = post(envoy.url(), INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
        assert ack.status_code == 202, describe(ack)
        listed = post(envoy.url(), rpc("tools/list", 2), session=session, protocol_version=PROTOCOL_VERSION)
        assert listed.status_code == 200, describe(listed)


STREAMS = {
    # A result in an event of another type, which both SDK clients pass over, then the error
    # they read.
    "other-then-error": (
        b'event: other\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
        b'event: message\ndata: {"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"no"}}\n\n'
    ),
    "message": b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"canned","version":"1"}}}\n\n',
}


class CannedSse(QuietHandler):
    """Answers every POST with 200 and the SSE stream of STREAMS its `x-canned` header names:
    what no SDK server sends, for the filter's reading of it."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = STREAMS.get(self.headers.get("x-canned", ""), b"")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_result_in_an_sse_event_of_another_type_is_not_the_answer(envoys) -> None:
    """Review: a result inside `event: other` was taken as the initialize's result, though the
    SDK clients read JSON-RPC only from unnamed and `message` events: the client saw the
    error that followed, and the filter had minted a session for it."""
    upstream = HandlerServer(CannedSse)
    envoy = envoys.start(render_bootstrap(upstream_port=upstream.port, filter_config=MAIN_CONFIG), "canned-sse")
    try:
        with expect_stats(envoy, {"rejected.unknown": 1}):
            refused = initialize(envoy.url(), headers={"x-canned": "other-then-error"})
            assert refused.status_code == 200, describe(refused)
            # The ID went out with the headers; the error freed its slot.
            session = refused.headers["mcp-session-id"]
            gone = post(envoy.url(), INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION)
            assert gone.status_code == 404, describe(gone)
        with expect_stats(envoy, {"created": 1, "live": 1}):
            minted = initialize(envoy.url(), headers={"x-canned": "message"})
            assert SESSION_ID_RE.match(minted.headers.get("mcp-session-id", "")), describe(minted)
    finally:
        envoy.stop()
        upstream.close()
