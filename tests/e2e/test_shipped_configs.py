"""Every configuration the project ships, checked without the platforms they are for.

No Docker engine or Kubernetes cluster runs here, so:

- every Envoy configuration shipped in `envoy/` or `deploy/` (found by its shape, so a new one is
  picked up) passes `envoy --mode validate` with its wasm path pointed at the built module;
  validation loads the module and runs the filter's configuration (a missing module fails it);
- the compose files (`envoy/docker-compose.yaml`, `envoy/docker-compose.cluster.yaml` and their
  `.native.yaml` variants) parse, give each Envoy a shipped Envoy config and the built wasm or
  native module (read-only) where that config loads it, and pin the Envoy and MCP SDK versions
  the tests run;
- the Istio `WasmPlugin` and the Envoy Gateway `EnvoyExtensionPolicy` parse, and the plugin
  configuration each embeds is accepted by the filter: `envoy --mode validate`, then a real
  Envoy (2 workers) with it serves a session.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from harness import (
    NATIVE,
    ENVOY_BIN,
    REPO,
    WASM,
    assert_rejection,
    log_problems,
    open_session,
    post,
    render_bootstrap,
    request,
    rpc,
    stats_changes,
    validate_bootstrap,
)

ENVOY_DIR = REPO / "envoy"
DEPLOY_DIR = REPO / "deploy"
# The compose files, by build: each runs the demo server behind its Envoys with one build, the
# single-Envoy file one, the cluster file two (sharing sessions through etcd).
COMPOSE_FILES = {
    "wasm": [ENVOY_DIR / "docker-compose.yaml", ENVOY_DIR / "docker-compose.cluster.yaml"],
    "native": [ENVOY_DIR / "docker-compose.native.yaml", ENVOY_DIR / "docker-compose.cluster.native.yaml"],
}
ENVOY_IMAGE = "envoyproxy/envoy:"
CONFIGURED_RE = re.compile(r"mcp-session-filter: configured \((.*)\)")


def shipped_yaml_files() -> list[Path]:
    files = [*ENVOY_DIR.glob("*.y*ml"), *DEPLOY_DIR.rglob("*.y*ml")]
    return sorted(f for f in files if f.suffix in (".yaml", ".yml"))


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML (and Envoy's
    loader) would keep the last silently, hiding whatever the first one meant."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: keys given here override the merged ones, as meant
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kind_of(doc: Any) -> str:
    """envoy (a bootstrap), compose, k8s (a manifest), or unknown."""
    if not isinstance(doc, dict):
        return "unknown"
    if "apiVersion" in doc and "kind" in doc:
        return "k8s"
    if "services" in doc:
        return "compose"
    if "static_resources" in doc or "dynamic_resources" in doc:
        return "envoy"
    return "unknown"


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def envoy_configs() -> list[Path]:
    return [f for f in shipped_yaml_files() if any(kind_of(d) == "envoy" for d in documents(f))]


def manifests(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(f, d) for f in shipped_yaml_files() for d in documents(f) if kind_of(d) == "k8s" and d["kind"] == kind]


def found(node: Any, pick) -> Iterator[dict[str, Any]]:
    """Every object `pick(key, value)` returns for a key of a bootstrap, searched depth first
    (not below what it returned)."""
    if isinstance(node, dict):
        for key, value in node.items():
            hit = pick(key, value)
            if hit is not None:
                yield hit
            else:
                yield from found(value, pick)
    elif isinstance(node, list):
        for value in node:
            yield from found(value, pick)


def wasm_files(node: Any) -> Iterator[dict[str, Any]]:
    """Every `vm_config.code.local` (the object holding `filename`) in a bootstrap."""

    def pick(key: str, value: Any) -> dict[str, Any] | None:
        local = value.get("code", {}).get("local") if key == "vm_config" and isinstance(value, dict) else None
        return local if isinstance(local, dict) and "filename" in local else None

    return found(node, pick)


def module_configs(node: Any) -> Iterator[dict[str, Any]]:
    """Every `dynamic_module_config` (the native module) in a bootstrap."""
    return found(node, lambda key, value: value if key == "dynamic_module_config" and isinstance(value, dict) else None)


def with_wasm(bootstrap: dict[str, Any], path: Path) -> dict[str, Any]:
    """The bootstrap with its module at `path`: a Wasm config's `.wasm`, or a native config's
    module by file path (`path` with the suffix `.so`)."""
    locals_ = list(wasm_files(bootstrap))
    modules = list(module_configs(bootstrap))
    assert locals_ or modules, "no wasm or native module in this Envoy config"
    for local in locals_:
        local["filename"] = str(path)
    for module in modules:
        module.pop("name", None)
        target = NATIVE if path == WASM else path.with_suffix(".so")
        module["module"] = {"local": {"filename": str(target)}}
    return bootstrap


def configured_lines(output: str) -> list[str]:
    return [m.group(1) for m in CONFIGURED_RE.finditer(output)]


@pytest.fixture(autouse=True)
def _wasm_built() -> None:
    if not WASM.exists():
        pytest.fail(f"the filter is not built: {WASM} is missing (run `make build`)", pytrace=False)


# --------------------------------------------------------------------------- what is shipped


def test_the_shipped_files_are_found() -> None:
    names = {rel(f) for f in shipped_yaml_files()}
    assert {
        "envoy/envoy.yaml",
        "envoy/envoy.compose.yaml",
        "envoy/envoy.compose.native.yaml",
        "envoy/envoy.compose-cluster.yaml",
        "envoy/envoy.compose-cluster.native.yaml",
        "envoy/envoy.mcp-filters.yaml",
        "envoy/docker-compose.yaml",
        "envoy/docker-compose.native.yaml",
        "envoy/docker-compose.cluster.yaml",
        "envoy/docker-compose.cluster.native.yaml",
        "deploy/istio/wasmplugin.yaml",
        "deploy/envoy-gateway/extension-policy.yaml",
    } <= names, names
    assert {rel(f) for f in envoy_configs()} >= {
        "envoy/envoy.yaml",
        "envoy/envoy.compose.yaml",
        "envoy/envoy.compose.native.yaml",
        "envoy/envoy.compose-cluster.yaml",
        "envoy/envoy.compose-cluster.native.yaml",
        "envoy/envoy.mcp-filters.yaml",
    }
    # Every compose file shipped is one checked below.
    composes = {rel(f) for f in shipped_yaml_files() if any(kind_of(d) == "compose" for d in documents(f))}
    assert composes == {rel(f) for files in COMPOSE_FILES.values() for f in files}, composes


@pytest.mark.parametrize("path", shipped_yaml_files(), ids=rel)
def test_every_shipped_yaml_parses_and_is_known(path: Path) -> None:
    """Each document is an Envoy bootstrap, a compose file or a Kubernetes manifest: a new kind
    of file needs a check here. No mapping gives a key twice."""
    try:
        docs = [d for d in yaml.load_all(path.read_text(), Loader=UniqueKeyLoader) if d is not None]
    except yaml.constructor.ConstructorError as e:
        pytest.fail(f"{rel(path)}: {e}", pytrace=False)
    assert docs, f"{rel(path)} is empty"
    for doc in docs:
        assert kind_of(doc) != "unknown", f"{rel(path)}: a document of unknown kind: {list(doc)[:10]}"
        if kind_of(doc) == "k8s":
            assert isinstance(doc.get("metadata", {}).get("name"), str), doc
            assert isinstance(doc.get("spec"), dict), doc


# --------------------------------------------------------------------------- Envoy configs


@pytest.mark.parametrize("path", envoy_configs(), ids=rel)
def test_shipped_envoy_config_validates(workdir, path: Path) -> None:
    (bootstrap,) = [d for d in documents(path) if kind_of(d) == "envoy"]
    result = validate_bootstrap(with_wasm(bootstrap, WASM), workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"configuration '.*' OK", output), output[-4000:]
    # The module was loaded and accepted its plugin configuration (on_configure ran).
    assert configured_lines(output), output[-4000:]
    assert log_problems(output) == [], output[-4000:]


@pytest.mark.parametrize("path", envoy_configs(), ids=rel)
def test_shipped_envoy_config_with_a_missing_wasm_fails_validation(workdir, path: Path) -> None:
    """The control for the test above: validation really looks at the module."""
    (bootstrap,) = [d for d in documents(path) if kind_of(d) == "envoy"]
    missing = workdir / "no-such-module.wasm"
    result = validate_bootstrap(with_wasm(bootstrap, missing), workdir)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert str(missing) in output or str(missing.with_suffix(".so")) in output, output[-4000:]


# --------------------------------------------------------------------------- Docker Compose


def envoy_version() -> str:
    out = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    assert m, out
    return m.group(1)


def mounts(service: dict[str, Any], *, read_only: bool = False) -> dict[str, Path]:
    """Container path -> host path (resolved against the compose files' folder, envoy/);
    `read_only`: only the volumes mounted `:ro`."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if not read_only or "ro" in options:
            out[target] = (ENVOY_DIR / source).resolve()
    return out


def native_module_files(bootstrap: Any) -> set[str]:
    """The file paths a bootstrap loads native modules from (`module.local.filename`)."""
    return {m["module"]["local"]["filename"] for m in module_configs(bootstrap) if "module" in m}


@pytest.mark.parametrize(
    ("build", "path"),
    [(build, path) for build, files in sorted(COMPOSE_FILES.items()) for path in files],
    ids=lambda value: rel(value) if isinstance(value, Path) else value,
)
def test_docker_compose_runs_the_tested_envoy_with_the_built_module(build: str, path: Path) -> None:
    """Each compose file's Envoys load its build, the one `make build` makes, mounted read-only
    where their Envoy config loads it from (and nothing of the other build)."""
    (compose,) = documents(path)
    services = compose["services"]
    assert "mcp-server" in services, services
    envoys = {name: spec for name, spec in services.items() if str(spec.get("image", "")).startswith(ENVOY_IMAGE)}
    assert len(envoys) == (2 if "cluster" in path.name else 1), services
    for name, envoy in envoys.items():
        assert envoy["image"] == f"envoyproxy/envoy:v{envoy_version()}", (name, envoy["image"])

        # The command's -c names a mounted file, which is a shipped Envoy config (validated above).
        command = envoy["command"]
        config_target = command[command.index("-c") + 1]
        mounted = mounts(envoy)
        assert config_target in mounted, (name, command, mounted)
        config_source = mounted[config_target]
        assert config_source.exists() and config_source in envoy_configs(), (name, config_source)
        # Every module that config loads is the built one of this build, mounted read-only; by
        # file path (a native module found by name would need the search path in the container).
        (bootstrap,) = [d for d in documents(config_source) if kind_of(d) == "envoy"]
        wasm_targets = {local["filename"] for local in wasm_files(bootstrap)}
        native_targets = native_module_files(bootstrap)
        assert len(list(module_configs(bootstrap))) == len(native_targets), bootstrap
        targets, built, other = (
            (wasm_targets, WASM, native_targets) if build == "wasm" else (native_targets, NATIVE, wasm_targets)
        )
        assert targets and not other, (name, bootstrap)
        read_only = mounts(envoy, read_only=True)
        for target in targets:
            assert read_only.get(target) == built.resolve(), (name, target, envoy["volumes"])

    # The demo server installs the MCP SDK the tests run.
    server = services["mcp-server"]
    pinned = dict(re.findall(r"\b(mcp|uvicorn)==(\S+)", json.dumps(server["command"])))
    required = dict(re.findall(r"^(mcp|uvicorn)==(\S+)", (REPO / "tests" / "requirements.txt").read_text(), re.M))
    assert pinned and pinned == required, (pinned, required)
    assert mounts(server).get("/app") == (REPO / "tests" / "servers").resolve(), mounts(server)


# --------------------------------------------------------------------------- Istio, Envoy Gateway


def embedded_plugin_configs() -> list[tuple[str, dict[str, Any]]]:
    """(where, configuration) for each plugin configuration in the Kubernetes manifests."""
    out = []
    for path, doc in manifests("WasmPlugin"):
        out.append((f"{rel(path)} WasmPlugin/{doc['metadata']['name']}", doc["spec"]["pluginConfig"]))
    for path, doc in manifests("EnvoyExtensionPolicy"):
        for wasm in doc["spec"].get("wasm", []) + doc["spec"].get("dynamicModule", []):
            out.append((f"{rel(path)} EnvoyExtensionPolicy/{doc['metadata']['name']} {wasm['name']}", wasm["config"]))
    return out


def test_the_manifests_embed_plugin_configurations() -> None:
    where = [w for w, _ in embedded_plugin_configs()]
    assert any(w.startswith("deploy/istio/") for w in where), where
    assert any(w.startswith("deploy/envoy-gateway/") for w in where), where


def test_envoy_gateway_loads_the_native_module_from_the_image_volume_it_mounts() -> None:
    """The EnvoyProxy of deploy/envoy-gateway/dynamic-module.yaml loads the module from a folder
    its Envoy container mounts from an image volume, under the name the native image gives it
    (containers/native/Containerfile; test_image.py loads it from such a mount)."""
    copied = re.findall(r"^COPY (\S+) \./$", (REPO / "containers" / "native" / "Containerfile").read_text(), re.M)
    assert copied == ["libmcp_session_native.so"], copied
    proxies = [doc for _, doc in manifests("EnvoyProxy") if doc["spec"].get("dynamicModules")]
    assert proxies, "no EnvoyProxy declares a dynamic module"
    for proxy in proxies:
        deployment = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]
        images = {v["name"] for v in deployment["pod"]["volumes"] if "image" in v}
        mounted = {m["mountPath"]: m for m in deployment["container"]["volumeMounts"] if m["name"] in images}
        for module in proxy["spec"]["dynamicModules"]:
            path = PurePosixPath(module["source"]["local"]["path"])
            assert path.name == copied[0], module
            assert str(path.parent) in mounted, (module, mounted)
            assert mounted[str(path.parent)].get("readOnly") is True, mounted


@pytest.mark.parametrize(("where", "config"), embedded_plugin_configs(), ids=[w for w, _ in embedded_plugin_configs()])
def test_embedded_plugin_configuration_is_accepted_by_the_filter(workdir, envoy_for, where: str, config) -> None:
    # Istio and Envoy Gateway hand the filter this mapping as a JSON string.
    assert isinstance(config, dict) and config, config
    bootstrap = render_bootstrap(upstream_port=8000, filter_config=config, listener_port=10000, admin_port=9901)
    result = validate_bootstrap(bootstrap, workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    lines = configured_lines(output)
    assert lines, output[-4000:]
    if "max_sessions" in config:
        assert all(f"max {config['max_sessions']} sessions" in line for line in lines), lines

    # And a running Envoy with it serves a session on the configured path.
    envoy = envoy_for("json", config)
    path = config.get("paths", ["/mcp"])[0]
    before = envoy.stats()
    session = open_session(envoy.url(path))
    listed = post(envoy.url(path), rpc("tools/list", 2), session=session, protocol_version="2025-11-25")
    assert listed.status_code == 200, listed.text
    assert request("DELETE", envoy.url(path), session=session).status_code == 204
    gone = post(envoy.url(path), rpc("tools/list", 3), session=session, protocol_version="2025-11-25")
    assert_rejection(gone, 404, -32001, "Session not found")
    changes = stats_changes(before, envoy.stats())
    assert changes == {"created": 1, "terminated": 1, "rejected.unknown": 1}, changes
