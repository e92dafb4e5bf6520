"""Sessions live in shared data of the vm_id: they survive an update of the filter's
configuration that keeps the vm_id (the listener is replaced through LDS while Envoy runs)."""

from __future__ import annotations

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
