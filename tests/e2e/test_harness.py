"""The harness itself, without the filter: Envoy alone in front of the demo MCP servers.

These say the plumbing works (config shape, readiness, ports, the upstream record, SSE through
Envoy), so a failure elsewhere is about the filter.
"""

from __future__ import annotations

import pytest

from harness import (
    MCP_PATH,
    PROTOCOL_VERSION,
    REFERENCE_CONFIG,
    TAG_HEADER,
    first_message,
    initialize,
    new_tag,
    plugin_configuration,
    post,
    render_bootstrap,
    rpc,
)


@pytest.mark.wasm_only("checks envoy/envoy.yaml's Wasm filter; test_shipped_configs.py checks envoy.native.yaml")
def test_reference_config_has_the_documented_shape() -> None:
    text = REFERENCE_CONFIG.read_text()
    assert "allow_on_headers_stop_iteration" not in text
    bootstrap = render_bootstrap(upstream_port=8000, filter_config=None, listener_port=10000, admin_port=9901)
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10000}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["stream_idle_timeout"] == "3600s"
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    assert vhost["routes"][0]["route"]["timeout"] == "0s"
    wasm, router = hcm["http_filters"]
    assert router["name"] == "envoy.filters.http.router"
    plugin = wasm["typed_config"]["config"]
    assert plugin["failure_policy"] == "FAIL_RELOAD"
    assert plugin["vm_config"]["vm_id"] == "mcp_session"
    assert plugin["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    assert plugin["configuration"]["@type"] == "type.googleapis.com/google.protobuf.StringValue"
    assert '"/mcp"' in plugin_configuration(bootstrap)
    (cluster,) = bootstrap["static_resources"]["clusters"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 8000}


@pytest.mark.parametrize("kind", ["json", "sse", "stateful-json", "stateful-sse"])
def test_envoy_without_filter_proxies_the_demo_server(envoy_for, upstreams, kind: str) -> None:
    envoy = envoy_for(kind, {}, with_filter=False)
    server = upstreams.get(kind)
    tag = new_tag()
    response = initialize(envoy.url(), headers={TAG_HEADER: tag})
    assert response.status_code == 200, response.text
    assert first_message(response)["result"]["protocolVersion"] == PROTOCOL_VERSION
    expected_type = "text/event-stream" if kind.endswith("sse") else "application/json"
    assert response.headers["content-type"].startswith(expected_type)
    upstream_session = response.headers.get("mcp-session-id")
    assert (upstream_session is not None) == kind.startswith("stateful")

    (seen,) = server.requests(tag)
    assert seen["method"] == "POST" and seen["path"] == MCP_PATH and seen["status"] == 200

    call = post(
        envoy.url(),
        rpc("tools/call", 2, {"name": "add", "arguments": {"a": 2, "b": 3}}),
        session=upstream_session,
        protocol_version=PROTOCOL_VERSION,
    )
    assert call.status_code == 200, call.text
    assert first_message(call)["result"]["structuredContent"] == {"result": 5}


def test_fresh_connections_reach_both_workers(envoy_for) -> None:
    envoy = envoy_for("json", {}, with_filter=False)
    before = envoy.worker_connections()
    assert sorted(before) == ["worker_0", "worker_1"]
    for _ in range(30):
        assert post(envoy.url(), rpc("ping", 1)).status_code == 200
    after = envoy.worker_connections()
    assert all(after[w] > before[w] for w in after), (before, after)
