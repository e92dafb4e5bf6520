"""Behaviour 11 (OPTIONS and unguarded paths pass untouched) and `stateless: true`."""

from __future__ import annotations

import secrets

import pytest

from harness import (
    TAG_HEADER,
    describe,
    expect_stats,
    first_message,
    initialize,
    new_tag,
    post,
    request,
    rpc,
    tool_call,
)


def test_cors_preflight_passes_untouched(envoy, upstream) -> None:
    tag = new_tag()
    headers = {
        "origin": "http://127.0.0.1:3000",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, mcp-session-id",
        TAG_HEADER: tag,
    }
    with expect_stats(envoy, {}):
        response = request("OPTIONS", envoy.url(), headers=headers, accept=None)
    (seen,) = upstream.requests(tag)
    assert seen["method"] == "OPTIONS"
    assert response.status_code == seen["status"], describe(response)


@pytest.mark.parametrize("session", [None, "not-a-session"])
def test_unguarded_path_passes_untouched(envoy, upstream, session) -> None:
    tag = new_tag()
    with expect_stats(envoy, {}):
        response = post(envoy.url("/other"), rpc("tools/list", 1), session=session, headers={TAG_HEADER: tag})
    (seen,) = upstream.requests(tag)
    assert seen["path"] == "/other"
    assert seen["headers"].get("mcp-session-id") == session
    assert response.status_code == seen["status"] == 404, describe(response)  # the upstream's own 404
    assert "jsonrpc" not in response.text


def test_other_methods_pass_untouched(envoy, upstream) -> None:
    tag = new_tag()
    with expect_stats(envoy, {}):
        response = request("PUT", envoy.url(), body={"x": 1}, headers={TAG_HEADER: tag})
    (seen,) = upstream.requests(tag)
    assert seen["method"] == "PUT"
    assert response.status_code == seen["status"], describe(response)


STATELESS = {"paths": ["/mcp"], "stateless": True}


def test_stateless_mode_mints_nothing(envoy_for) -> None:
    envoy = envoy_for("json", STATELESS)
    with expect_stats(envoy, {}):
        response = initialize(envoy.url())
    assert response.status_code == 200, describe(response)
    assert "mcp-session-id" not in response.headers


def test_stateless_mode_validates_nothing(envoy_for, upstreams) -> None:
    envoy = envoy_for("json", STATELESS)
    tag = new_tag()
    bogus = secrets.token_hex(20)
    with expect_stats(envoy, {}):
        without = post(envoy.url(), tool_call("add", {"a": 1, "b": 1}), headers={TAG_HEADER: tag})
        with_bogus = post(envoy.url(), tool_call("add", {"a": 2, "b": 2}), session=bogus, headers={TAG_HEADER: tag})
    assert first_message(without)["result"]["structuredContent"] == {"result": 2}, describe(without)
    assert first_message(with_bogus)["result"]["structuredContent"] == {"result": 4}, describe(with_bogus)
    seen = upstreams.get("json").requests(tag)
    assert [r["headers"].get("mcp-session-id") for r in seen] == [None, bogus]
