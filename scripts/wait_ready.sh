# shellcheck shell=bash
# Sourced by scripts/run.sh and scripts/run-cluster.sh.
# wait_ready URL PID WHAT [NAME]: waits until URL answers 200; fails, naming WHAT (and NAME, the
# script, in the message), when process PID exits or 30 s pass.
# ports_free NAME PORT...: fails, saying which, when another process listens on 127.0.0.1:PORT
# (wait_ready would then take that process's answer for ours).
ports_free() {
    .venv/bin/python - "$@" <<'PY'
import socket, sys
name, ports = sys.argv[1], sys.argv[2:]
taken = []
for port in ports:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            taken.append(port)
if taken:
    sys.exit(f"{name}: port {', '.join(taken)} on 127.0.0.1 is in use (another `make run`?)")
PY
}

wait_ready() {
    .venv/bin/python - "$1" "$2" "$3" "${4:-run}" <<'PY'
import os, sys, time
import httpx
url, pid, what, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + 30
while True:
    try:
        if httpx.get(url, timeout=1).status_code == 200:
            break
    except httpx.TransportError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"{name}: {what} exited (is its port in use?)")
    if time.monotonic() > deadline:
        sys.exit(f"{name}: {what} did not become ready in 30s")
    time.sleep(0.1)
PY
}
