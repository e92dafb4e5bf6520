#!/usr/bin/env bash
# `make run`: the filter in Envoy (2 workers) in front of the demo MCP server.
#   listener 127.0.0.1:10000 (path /mcp)  admin 127.0.0.1:9901  demo server 127.0.0.1:8000
# The demo server runs in the background (stateless, JSON responses; DEMO_FLAGS overrides,
# e.g. DEMO_FLAGS="--stateful --sse"), Envoy in the foreground; Ctrl-C stops both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# NATIVE=1 (`make run-native`): the native module and envoy/envoy.native.yaml instead.
if [[ -n "${NATIVE:-}" ]]; then
    wasm="target/release/libmcp_session_native.so"
    envoy_config="envoy/envoy.native.yaml"
    export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=target/release
else
    wasm="target/wasm32-wasip1/release/mcp_session_filter.wasm"
    envoy_config="envoy/envoy.yaml"
fi
demo_flags="${DEMO_FLAGS:---stateless --json}"

bash scripts/setup.sh
if [[ ! -f "$wasm" ]]; then
    echo "run: $wasm is missing: build it first (make build)" >&2
    exit 1
fi

demo_pid=""
cleanup() {
    if [[ -n "$demo_pid" ]] && kill -0 "$demo_pid" 2>/dev/null; then
        kill "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/wait_ready.sh
source "$root/scripts/wait_ready.sh"

ports_free run 8000 9901 10000

# shellcheck disable=SC2086 # DEMO_FLAGS is a list of flags
.venv/bin/python tests/servers/demo_server.py --port 8000 $demo_flags &
demo_pid=$!
wait_ready http://127.0.0.1:8000/healthz "$demo_pid" "the demo server (port 8000)"

.venv/bin/envoy -c "$envoy_config" --concurrency 2 --disable-hot-restart \
    -l warning --component-log-level wasm:info,dynamic_modules:info &
envoy_pid=$!
trap 'kill -INT "$envoy_pid" 2>/dev/null || true' INT TERM
if ! wait_ready http://127.0.0.1:9901/ready "$envoy_pid" "Envoy (ports 10000, 9901)"; then
    kill "$envoy_pid" 2>/dev/null || true
    wait "$envoy_pid" 2>/dev/null || true
    exit 1
fi

# The first lines of the README's walk-through, once Envoy answers.
cat <<'USAGE'

run: Envoy with the session filter on http://127.0.0.1:10000/mcp (admin 127.0.0.1:9901),
in front of the demo MCP server on 127.0.0.1:8000. In a second terminal (the rest of the
walk-through is in README.md):

U=http://127.0.0.1:10000/mcp
J='content-type: application/json'
A='accept: application/json, text/event-stream'
curl -si $U -H "$J" -H "$A" -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1.0"}}}'

Ctrl-C stops Envoy and the demo server.
USAGE

wait "$envoy_pid" || true
# A signal interrupts `wait`; wait again for Envoy to finish shutting down.
wait "$envoy_pid" 2>/dev/null || true
