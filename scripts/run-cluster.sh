#!/usr/bin/env bash
# `make run-cluster`: two filtering Envoys sharing their sessions through a 3-member etcd cluster.
#   etcd     127.0.0.11:2379, 127.0.0.12:2379, 127.0.0.13:2379 (peers on :2380)
#   Envoy A  listener 127.0.0.1:10000 (path /mcp)  admin 127.0.0.1:9901   envoy/envoy.cluster.yaml
#   Envoy B  listener 127.0.0.1:10001 (path /mcp)  admin 127.0.0.1:9902   the same file, other ports
#   demo MCP server 127.0.0.1:8000 (stateless, JSON responses; DEMO_FLAGS overrides)
# A session minted on one Envoy is served by the other; a DELETE on one ends it on both.
# etcd's data and logs, and Envoy B's rendered configuration, live in .run/cluster/ (git-ignored),
# emptied at every start. Ctrl-C stops everything this script started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

wasm="target/wasm32-wasip1/release/mcp_session_filter.wasm"
tool="target/release/mcp-sessions"
config="envoy/envoy.cluster.yaml"
state=".run/cluster"
demo_flags="${DEMO_FLAGS:---stateless --json}"

bash scripts/setup.sh
if [[ ! -f "$wasm" ]]; then
    echo "run-cluster: $wasm is missing: build it first (make build)" >&2
    exit 1
fi
if [[ ! -x "$tool" ]]; then
    echo "run-cluster: $tool is missing: build it first (make tools)" >&2
    exit 1
fi
if ! command -v etcd >/dev/null 2>&1; then
    echo "run-cluster: etcd is missing (scripts/setup.sh installs Debian's etcd-server as root)" >&2
    exit 1
fi

pids=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local i pid
    # Envoys and the demo server first, etcd last (its members stop with it).
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[i]}"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/wait_ready.sh
source "$root/scripts/wait_ready.sh"

# Every port this script serves must be free: the readiness checks below would take another
# process's answer (make run, or the compose files, use some of the same ports) for ours.
.venv/bin/python - <<'PY'
import socket, sys
wanted = [("127.0.0.1", p) for p in (8000, 10000, 10001, 9901, 9902)]
wanted += [(f"127.0.0.1{i}", p) for i in (1, 2, 3) for p in (2379, 2380)]
busy = []
for host, port in wanted:
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            busy.append(f"{host}:{port}")
if busy:
    sys.exit(f"run-cluster: already in use: {', '.join(busy)} (make run? a compose file? another run-cluster?)")
PY

rm -rf "$state"
mkdir -p "$state"

# etcd: the members are children of this Python process (tests/e2e/etcd_cluster.py, the same
# flags as the tests), which stops them on SIGTERM or SIGINT; they also stop if it dies.
.venv/bin/python tests/e2e/etcd_cluster.py serve --data-dir "$state/etcd" &
pids+=($!)
wait_ready http://127.0.0.11:2379/health "${pids[-1]}" "etcd (127.0.0.11-13:2379)" run-cluster

# shellcheck disable=SC2086 # DEMO_FLAGS is a list of flags
.venv/bin/python tests/servers/demo_server.py --port 8000 $demo_flags &
pids+=($!)
wait_ready http://127.0.0.1:8000/healthz "${pids[-1]}" "the demo server (port 8000)" run-cluster

# Envoy B: the same file with the listener on 10001 and the admin on 9902 (Envoy has no
# variables in its configuration: render a copy, as the tests do).
.venv/bin/python - "$config" "$state/envoy-b.yaml" <<'PY'
import sys
import yaml
source, target = sys.argv[1], sys.argv[2]
bootstrap = yaml.safe_load(open(source))
bootstrap["admin"]["address"]["socket_address"]["port_value"] = 9902
(listener,) = bootstrap["static_resources"]["listeners"]
listener["address"]["socket_address"]["port_value"] = 10001
with open(target, "w") as f:
    f.write(f"# Rendered by scripts/run-cluster.sh from {source}: listener 10001, admin 9902.\n")
    yaml.safe_dump(bootstrap, f, sort_keys=False)
PY

envoy_args=(--concurrency 2 --disable-hot-restart -l warning --component-log-level wasm:info)
.venv/bin/envoy -c "$config" "${envoy_args[@]}" &
pids+=($!)
wait_ready http://127.0.0.1:9901/ready "${pids[-1]}" "Envoy A (ports 10000, 9901)" run-cluster
.venv/bin/envoy -c "$state/envoy-b.yaml" "${envoy_args[@]}" &
pids+=($!)
wait_ready http://127.0.0.1:9902/ready "${pids[-1]}" "Envoy B (ports 10001, 9902)" run-cluster

cat <<'USAGE'

run-cluster: two Envoys with the session filter, their sessions in etcd:
  Envoy A  http://127.0.0.1:10000/mcp  (admin 127.0.0.1:9901)
  Envoy B  http://127.0.0.1:10001/mcp  (admin 127.0.0.1:9902)
  etcd     127.0.0.11:2379, 127.0.0.12:2379, 127.0.0.13:2379 (data and logs in .run/cluster/etcd)
  demo MCP server 127.0.0.1:8000
In a second terminal: initialize on A, then use the session on B (README.md has the rest of
the walk-through):

A=http://127.0.0.1:10000/mcp B=http://127.0.0.1:10001/mcp
J='content-type: application/json'
H='accept: application/json, text/event-stream'
curl -si $A -H "$J" -H "$H" -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1.0"}}}'
SID=...   # the mcp-session-id above
curl -s -o /dev/null -w "%{http_code}\n" $B -H "$J" -H "$H" -H "mcp-session-id: $SID" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
curl -s $B -H "$J" -H "$H" -H "mcp-session-id: $SID" -H "mcp-protocol-version: 2025-11-25" -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}'
curl -si -X DELETE $B -H "mcp-session-id: $SID"     # 204; then A answers 404 for it too
ETCDCTL_API=3 etcdctl --endpoints=127.0.0.11:2379 get mcp-sessions/ --prefix --keys-only

The sessions in etcd, and ending one from outside (every Envoy answers 404 for it at once):
export ETCDCTL_ENDPOINTS=127.0.0.11:2379,127.0.0.12:2379,127.0.0.13:2379
target/release/mcp-sessions list
target/release/mcp-sessions count
target/release/mcp-sessions revoke --handle HANDLE   # a handle from the list

Ctrl-C stops both Envoys, the demo server and the etcd members.
USAGE

# Until Ctrl-C, or until one of them exits (then the rest are stopped too). On Ctrl-C the
# Envoys exit 0 on their own SIGINT, which ends this wait too.
status=0
wait -n "${pids[@]}" || status=$?
if ((status != 0)); then
    echo "run-cluster: a process exited (status $status); stopping the others" >&2
fi
exit "$status"
