#!/usr/bin/env bash
# `make run`: the filter in Envoy (2 workers) in front of the demo MCP server.
#   listener 127.0.0.1:10000 (path /mcp)  admin 127.0.0.1:9901  demo server 127.0.0.1:8000
# The demo server runs in the background (stateless, JSON responses; DEMO_FLAGS overrides,
# e.g. DEMO_FLAGS="--stateful --sse"), Envoy in the foreground; Ctrl-C stops both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

wasm="target/wasm32-wasip1/release/mcp_session_filter.wasm"
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

# shellcheck disable=SC2086 # DEMO_FLAGS is a list of flags
.venv/bin/python tests/servers/demo_server.py --port 8000 $demo_flags &
demo_pid=$!

# Wait for the demo server to answer (or to die, e.g. port 8000 taken).
.venv/bin/python - "$demo_pid" <<'PY'
import os, sys, time
import httpx
pid, deadline = int(sys.argv[1]), time.monotonic() + 30
while True:
    try:
        if httpx.get("http://127.0.0.1:8000/healthz", timeout=1).status_code == 200:
            break
    except httpx.TransportError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("run: the demo server exited (is port 8000 in use?)")
    if time.monotonic() > deadline:
        sys.exit("run: the demo server did not become ready in 30s")
    time.sleep(0.1)
PY

cat <<'USAGE'
run: demo MCP server on 127.0.0.1:8000, Envoy with the session filter on 127.0.0.1:10000.
Try it (in another terminal):

  H='-H content-type:application/json -H accept:application/json,text/event-stream'
  # 1. initialize: the filter mints the session (mcp-session-id header)
  curl -si $H http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
  SID=<the mcp-session-id value from above>
  # 2. finish the handshake, then call a tool
  curl -si $H -H "mcp-session-id: $SID" http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
  curl -s  $H -H "mcp-session-id: $SID" http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}'
  # 3. without a session, or with a made-up one: 400, 404
  curl -si $H http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","id":3,"method":"tools/list"}'
  curl -si $H -H "mcp-session-id: 0000000000000000000000000000000000000000" http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","id":4,"method":"tools/list"}'
  # 4. end the session (204), then it is gone (404)
  curl -si -X DELETE -H "mcp-session-id: $SID" http://127.0.0.1:10000/mcp
  # the filter's stats
  curl -s 'http://127.0.0.1:9901/stats?filter=mcp_session'

Ctrl-C stops Envoy and the demo server.
USAGE

.venv/bin/envoy -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart \
    -l warning --component-log-level wasm:info &
envoy_pid=$!
trap 'kill -INT "$envoy_pid" 2>/dev/null || true' INT TERM
wait "$envoy_pid" || true
# A signal interrupts `wait`; wait again for Envoy to finish shutting down.
wait "$envoy_pid" 2>/dev/null || true
