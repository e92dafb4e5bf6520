#!/usr/bin/env bash
# `make bench`: what the filter costs against Envoy without it (issue 4); results in
# BENCHMARKS.md, bench/results.json and bench/results.svg. 6 to 9 minutes on 2 cores.
#
#   bash bench/run.sh [bench.py flags]   the benchmark, e.g. --rounds 1 --duration 1 --skip-memory
#   bash bench/run.sh profile [flags]    where the time goes: instructions per request and per
#                                        hostcall under callgrind (bench/profile.py, 4-10 minutes)
#
# Installs what it needs and is missing: wrk and h2load (nghttp2-client) from Debian, valgrind
# for the profile; builds the benchmark's own Wasm filters. Expects the venv (make setup) and
# the filter (make build): `make bench` depends on both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'bench: %s\n' "$*" >&2; }

mode=bench
if [[ "${1:-}" == "profile" ]]; then
    mode=profile
    shift
fi

# Debian packages, installed only when their command is missing.
packages=()
command -v wrk >/dev/null 2>&1 || packages+=(wrk)
command -v h2load >/dev/null 2>&1 || packages+=(nghttp2-client)
if [[ "$mode" == profile ]]; then
    command -v valgrind >/dev/null 2>&1 || packages+=(valgrind)
fi
if ((${#packages[@]})); then
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to install: ${packages[*]}"; exit 1; }
        sudo=(sudo)
    fi
    log "installing ${packages[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python || ! -f target/wasm32-wasip1/release/mcp_session_filter.wasm ]]; then
    log "the venv or the filter is missing: run 'make setup build' (make bench does)"
    exit 1
fi

# The floor: a proxy-wasm filter that overrides no callback (its own crate and lock file).
cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/empty-filter/Cargo.toml
if [[ "$mode" == profile ]]; then
    cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/hostcall-probe/Cargo.toml
    exec .venv/bin/python bench/profile.py "$@"
fi
exec .venv/bin/python bench/bench.py "$@"
