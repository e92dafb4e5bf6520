"""Sessions live in shared data of the vm_id: they survive an update of the filter's
configuration that keeps the vm_id (the listener is replaced through LDS while Envoy runs)."""

from __future__ import annotations

import copy
import time

from harness import (
    PROTOCOL_VERSION,
    Envoy,
    assert_rejection,
    describe,
    make_listener_dynamic,
    open_session,
    post,
    render_bootstrap,
    request,
    rpc,
    set_plugin_configuration,
    write_lds,
)


def _wait_for_listener_update(envoy: Envoy, modified_before: int, timeout: float = 15.0) -> None:
    """Until Envoy has taken the new listener (LDS update accepted, nothing warming)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = envoy.server_stats("listener_manager")
        if (
            stats.get("listener_manager.listener_modified", 0) > modified_before
            and stats.get("listener_manager.total_listeners_warming", 1) == 0
        ):
            return
        assert stats.get("listener_manager.lds.update_rejected", 0) == 0, envoy.log_tail()
        assert time.monotonic() < deadline, f"the listener update was not applied\n{envoy.log_tail()}"
        time.sleep(0.05)


def test_sessions_survive_a_configuration_update_with_the_same_vm_id(workdir, upstream, envoys) -> None:
    lds = workdir / "lds-update" / "lds.yaml"
    lds.parent.mkdir()
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config={"paths": ["/mcp"]})
    listener = make_listener_dynamic(bootstrap, lds)
    envoy = Envoy(bootstrap, workdir, name="envoy-lds").start()
    envoys.all.append(envoy)  # its log is checked after the test like every other Envoy's
    try:
        session = open_session(envoy.url())
        modified = envoy.server_stats("listener_manager").get("listener_manager.listener_modified", 0)

        set_plugin_configuration(listener, {"paths": ["/mcp"], "allow_delete": False})
        write_lds(listener, lds)
        _wait_for_listener_update(envoy, modified)
        envoy.refresh_port()

        # The new configuration is in force (DELETE is now refused)...
        refused = request("DELETE", envoy.url(), session=session)
        assert_rejection(refused, 405, -32000, "Method Not Allowed: sessions cannot be ended by the client")
        # ...and the session minted under the old one is still valid, on every worker.
        for i in range(10):
            response = post(envoy.url(), rpc("tools/list", i), session=session, protocol_version=PROTOCOL_VERSION)
            assert response.status_code == 200, describe(response)
        assert envoy.stats()["live"] == 1
    finally:
        envoy.stop()


def test_a_rejected_update_leaves_the_store_swept(workdir, upstream, envoys) -> None:
    """Envoy builds an update's filters before it decides to reject the listener: the
    rejected configuration of this filter was recorded as the store's newest and never ticked
    again, while the one still serving took itself for an old one and did not sweep. Idle
    sessions then never expired. Now the configuration still serving takes the sweep over
    once the newest has not ticked for five seconds."""
    lds = workdir / "lds-rejected" / "lds.yaml"
    lds.parent.mkdir()
    idle = 2
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config={"paths": ["/mcp"], "idle_timeout_seconds": idle})
    listener = make_listener_dynamic(bootstrap, lds)
    envoy = Envoy(bootstrap, workdir, name="envoy-lds-rejected").start()
    envoys.all.append(envoy)
    try:
        open_session(envoy.url())
        # The same filter with another configuration (a new fingerprint), then a filter whose
        # configuration Envoy refuses (the buffer filter needs `max_request_bytes`).
        update = copy.deepcopy(listener)
        set_plugin_configuration(update, {"paths": ["/mcp"], "idle_timeout_seconds": idle + 1})
        filters = update["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        bad = {"name": "bad-buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"}}
        filters.insert(len(filters) - 1, bad)
        write_lds(update, lds)
        deadline = time.monotonic() + 15
        while envoy.server_stats("listener_manager").get("listener_manager.lds.update_rejected", 0) < 1:
            assert time.monotonic() < deadline, f"the update was not rejected\n{envoy.log_tail()}"
            time.sleep(0.05)
        deadline = time.monotonic() + idle + 5 + 8
        while envoy.stats().get("expired", 0) < 1:
            assert time.monotonic() < deadline, f"the idle session was never swept: {envoy.stats()}"
            time.sleep(0.2)
        assert envoy.stats()["live"] == 0
    finally:
        envoy.stop()
