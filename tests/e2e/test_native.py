"""What only the native build (the Envoy dynamic module) has: its ABI against the Envoy that
runs it, and a panic that never crosses into Envoy. Runs in the native pass of `make e2e`
(MCP_ARTIFACT=native); every other test runs against both builds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import (
    ARTIFACT,
    ENVOY_BINARY,
    NATIVE,
    REPO,
    Envoy,
    HarnessError,
    initialize,
    open_session,
    post,
    render_bootstrap,
    rpc,
)

pytestmark = pytest.mark.skipif(ARTIFACT != "native", reason="native build only (MCP_ARTIFACT=native)")

# Hooks Envoy 1.40 requires of an HTTP filter module: without any one of them it refuses the
# configuration ("Failed to resolve symbol").
REQUIRED_HOOKS = [
    "on_program_init",
    "on_http_filter_config_new",
    "on_http_filter_config_destroy",
    "on_http_filter_new",
    "on_http_filter_request_headers",
    "on_http_filter_request_body",
    "on_http_filter_request_trailers",
    "on_http_filter_response_headers",
    "on_http_filter_response_body",
    "on_http_filter_response_trailers",
    "on_http_filter_stream_complete",
    "on_http_filter_destroy",
    "on_http_filter_http_callout_done",
    "on_http_filter_http_stream_headers",
    "on_http_filter_http_stream_data",
    "on_http_filter_http_stream_trailers",
    "on_http_filter_http_stream_complete",
    "on_http_filter_http_stream_reset",
    "on_http_filter_scheduled",
    "on_http_filter_downstream_above_write_buffer_high_watermark",
    "on_http_filter_downstream_below_write_buffer_low_watermark",
]

# Optional hooks Envoy resolves when present and silently does without otherwise: the timer and
# the etcd store's calls and watch streams would then never be answered.
CONFIG_HOOKS = [
    "on_http_filter_config_scheduled",
    "on_http_filter_config_http_callout_done",
    "on_http_filter_config_http_stream_headers",
    "on_http_filter_config_http_stream_data",
    "on_http_filter_config_http_stream_trailers",
    "on_http_filter_config_http_stream_complete",
    "on_http_filter_config_http_stream_reset",
]

FAULT_TARGET_DIR = REPO / "target" / "fault-injection"
FAULT_MODULE = FAULT_TARGET_DIR / "native" / "libmcp_session_native.so"
PANIC_HEADER = "x-mcp-session-filter-panic"
BUILD_TIMEOUT = 900
# What a caught panic leaves in Envoy's log: Rust's panic message (on stderr), nothing else.
PANIC_LOG_RE = re.compile(r"panicked at native/src/lib\.rs|injected by x-mcp-session-filter-panic")


def dynamic_symbols(path: Path, *, defined: bool) -> set[str]:
    nm = shutil.which("nm")
    assert nm, "nm (binutils) is needed to read the module's symbols"
    flag = "--defined-only" if defined else "--undefined-only"
    out = subprocess.run([nm, "-D", flag, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_the_module_imports_only_callbacks_this_envoy_exports() -> None:
    assert NATIVE.exists(), f"{NATIVE} is missing (run `make build`)"
    envoy_binary = ENVOY_BINARY
    wanted = {s for s in dynamic_symbols(NATIVE, defined=False) if s.startswith("envoy_dynamic_module_")}
    assert wanted, "the module calls no Envoy callback?"
    exported = dynamic_symbols(envoy_binary, defined=True)
    assert wanted <= exported, f"callbacks this Envoy does not export: {sorted(wanted - exported)}"


def test_the_module_defines_every_hook_envoy_requires() -> None:
    defined = dynamic_symbols(NATIVE, defined=True)
    missing = [h for h in REQUIRED_HOOKS if f"envoy_dynamic_module_{h}" not in defined]
    assert not missing, missing


@pytest.fixture(scope="module")
def fault_injection_module() -> Path:
    """The test-only module (`--features fault-injection`: a request header panics inside it),
    in its own target directory so the released module is never replaced by it."""
    command = [
        "cargo", "build", "--locked", "--profile", "native", "-p", "mcp-session-native",
        "--features", "fault-injection", "--target-dir", str(FAULT_TARGET_DIR),
    ]  # fmt: skip
    built = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if built.returncode != 0 or not FAULT_MODULE.exists():
        pytest.fail(f"building the fault-injection module failed:\n{built.stderr[-4000:]}", pytrace=False)
    return FAULT_MODULE


def fault_bootstrap(upstream, module_path: Path) -> dict:
    """The reference bootstrap with the fault-injection module in place of the released one."""
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config={"paths": ["/mcp"]})
    (listener,) = bootstrap["static_resources"]["listeners"]
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    (module,) = [f for f in filters if f["name"] == "mcp_session"]
    module["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"] = str(module_path)
    return bootstrap


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_a_panic_fails_its_request_closed_and_envoy_serves_on(workdir, upstream, fault_injection_module) -> None:
    bootstrap = fault_bootstrap(upstream, fault_injection_module)
    # One worker: the request that panics and the ones after it meet the same Worker (whose
    # lock the panic held).
    with Envoy(bootstrap, workdir, name="envoy-native-panic", concurrency=1) as envoy:
        url = envoy.url()
        session = open_session(url)
        before = envoy.stats()

        failed = post(url, rpc("tools/list", 7), headers={"mcp-session-id": session, PANIC_HEADER: "1"})
        assert failed.status_code == 500, failed.text
        assert failed.headers["content-type"] == "application/json"
        body = json.loads(failed.text)
        assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32603 and body["id"] is None, body

        # The process, the worker and the session are all still there.
        again = post(url, rpc("tools/list", 8), headers={"mcp-session-id": session})
        assert again.status_code == 200, again.text
        assert initialize(url).status_code == 200
        after = envoy.stats()
        assert after.get("panics", 0) - before.get("panics", 0) == 1, (before, after)
        assert after.get("live", 0) == before.get("live", 0) + 1

        problems = envoy.log_problems()
        unexpected = [line for line in problems if not PANIC_LOG_RE.search(line)]
        assert not unexpected, "\n".join(unexpected)
        assert any(PANIC_LOG_RE.search(line) for line in problems), "the panic left no line in the log"


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_a_panic_in_the_last_hook_sends_nothing_on_the_finished_stream(workdir, upstream, fault_injection_module) -> None:
    """The stream-complete hook runs after the response went out: a panic caught there is
    counted, and no 500 is sent on a stream that is over (Envoy does not expect a local reply
    then)."""
    bootstrap = fault_bootstrap(upstream, fault_injection_module)
    with Envoy(bootstrap, workdir, name="envoy-native-panic-done", concurrency=1) as envoy:
        url = envoy.url()
        session = open_session(url)
        before = envoy.stats()
        for i in range(3):
            answered = post(url, rpc("tools/list", i), headers={"mcp-session-id": session, PANIC_HEADER: "done"})
            assert answered.status_code == 200, answered.text
        again = post(url, rpc("tools/list", 9), headers={"mcp-session-id": session})
        assert again.status_code == 200, again.text
        after = envoy.stats()
        assert after.get("panics", 0) - before.get("panics", 0) == 3, (before, after)
        problems = envoy.log_problems() + [line for line in envoy.log_text().splitlines() if "envoy bug" in line.lower()]
        unexpected = [line for line in problems if not PANIC_LOG_RE.search(line)]
        assert not unexpected, "\n".join(unexpected)


def test_the_module_defines_the_configuration_hooks_its_timer_and_etcd_need() -> None:
    defined = dynamic_symbols(NATIVE, defined=True)
    missing = [h for h in CONFIG_HOOKS if f"envoy_dynamic_module_{h}" not in defined]
    assert not missing, missing


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_a_rebuild_never_writes_over_the_module_a_running_envoy_loaded(workdir, upstream) -> None:
    """`make` puts the new module in place by a rename, so an Envoy that loaded the old file keeps
    its pages. Written over in place (`cp`), the file changed under a running Envoy and crashed
    it, in the middle of the e2e suite, when a build ran beside it."""
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config={"paths": ["/mcp"]})
    with Envoy(bootstrap, workdir, name="envoy-native-rebuild") as envoy:
        session = open_session(envoy.url())
        before = NATIVE.stat().st_ino
        target = str(NATIVE.relative_to(REPO))
        made = subprocess.run(["make", target], cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
        assert made.returncode == 0, made.stderr[-4000:]
        assert NATIVE.stat().st_ino != before, "the module was written over in place"
        again = post(envoy.url(), rpc("tools/list", 2), headers={"mcp-session-id": session})
        assert again.status_code == 200, again.text
        assert envoy.log_problems() == []


@pytest.mark.parametrize(
    ("config", "key"),
    [({"identity_jwt": {"metadata_key": "jwt", "claims": ["sub"]}}, "identity_jwt")],
    ids=["identity_jwt"],
)
def test_what_the_module_lacks_is_refused_naming_the_key(workdir, upstream, config, key) -> None:
    """`identity_jwt` reads the claims jwt_authn writes as a struct below a metadata key; the
    1.40 ABI reads metadata one level deep, scalars only (README, "Native module")."""
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config=config)
    envoy = Envoy(bootstrap, workdir, name=f"envoy-native-refuses-{key}")
    with pytest.raises(HarnessError, match="the process exited"):
        envoy.start()
    refusal = [line for line in envoy.log_text().splitlines() if "configuration refused" in line]
    assert any(f"`{key}` is not supported by this build yet" in line for line in refusal), refusal


def test_a_configuration_is_read_and_logged_once_for_all_its_workers(workdir, upstream) -> None:
    """The module runs one configuration on a worker per Envoy thread and one on the main
    thread; it reads, checks and logs the configuration once for them all (it once did so for
    each: three "configured" lines per configuration with `--concurrency 2`)."""
    bootstrap = render_bootstrap(upstream_port=upstream.port, filter_config={"paths": ["/mcp"]})
    with Envoy(bootstrap, workdir, name="envoy-native-configured-once", concurrency=2) as envoy:
        assert open_session(envoy.url())
        configured = [line for line in envoy.log_text().splitlines() if "mcp-session-filter: configured (" in line]
    assert len(configured) == 1, configured
