"""The plugin configuration: good ones load; an unknown key or a bad value makes Envoy refuse
the configuration (on_configure returns false) with a log line naming the key."""

from __future__ import annotations

import json

import pytest

from harness import FILTER_PATH, LOG_COMPONENT, Envoy, HarnessError, render_bootstrap, validate_bootstrap

FULL = {
    "paths": ["/mcp", "/other"],
    "idle_timeout_seconds": 600,
    "max_lifetime_seconds": 0,
    "max_sessions": 100,
    "max_body_bytes": 65536,
    "identity_header": "authorization",
    "allow_delete": False,
    "enforce_initialized": False,
    "stateless": False,
}

# (configuration, what the refusal must name)
BAD = [
    pytest.param({"bogus_key": 1}, "bogus_key", id="unknown key"),
    pytest.param({"idle_timeout_seconds": "ten"}, "idle_timeout_seconds", id="string for a number"),
    pytest.param({"max_sessions": -1}, "max_sessions", id="negative max_sessions"),
    pytest.param({"paths": "/mcp"}, "paths", id="paths not a list"),
    pytest.param({"allow_delete": "no"}, "allow_delete", id="string for a bool"),
    pytest.param({"store": {"etcd": {"cluster": 7}}}, "`store.etcd.cluster`", id="nested: named by its path"),
    pytest.param({"paths": ["/mcp", 7]}, "`paths[1]`", id="list item: named by its index"),
    pytest.param('{"paths": ["/mcp"]', None, id="not JSON"),
]


@pytest.fixture(autouse=True)
def _wasm_built() -> None:
    if not FILTER_PATH.exists():
        pytest.fail(f"the filter is not built: {FILTER_PATH} is missing (run `make build`)", pytrace=False)


@pytest.mark.parametrize("config", [None, {}, FULL], ids=["reference", "empty", "every key"])
def test_good_configuration_validates(workdir, config) -> None:
    bootstrap = render_bootstrap(upstream_port=8000, filter_config=config, listener_port=10000, admin_port=9901)
    result = validate_bootstrap(bootstrap, workdir)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("config", "names"), BAD)
def test_bad_configuration_is_refused_at_startup(workdir, upstream, config, names) -> None:
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config=config)
    envoy = Envoy(bootstrap, workdir, name=f"bad-config-{abs(hash(json.dumps(config))) % 10**8}")
    with pytest.raises(HarnessError, match="the process exited"):
        envoy.start()
    log = envoy.log_text()
    refusal = [line for line in log.splitlines() if LOG_COMPONENT in line and ("[error]" in line or "[critical]" in line)]
    assert refusal, log[-3000:]
    if names is not None:
        assert any(names in line for line in refusal), "\n".join(refusal)


@pytest.mark.parametrize(("config", "names"), BAD[:2])
def test_bad_configuration_fails_validation(workdir, config, names) -> None:
    bootstrap = render_bootstrap(upstream_port=8000, filter_config=config)
    result = validate_bootstrap(bootstrap, workdir)
    assert result.returncode != 0, result.stdout[-3000:]
    assert names in result.stdout + result.stderr
