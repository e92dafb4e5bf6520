#!/usr/bin/env bash
# `make bench`: what the filter costs against Envoy without it (issue 4); results in
# BENCHMARKS.md, bench/results.json and bench/results.svg. 6 to 9 minutes on 2 cores. Then the
# cluster figures (bench/cluster.py, about 2.5 minutes more): the etcd store against the local
# store, with a 3-member etcd cluster; results in BENCHMARKS.md and bench/cluster.json.
#
#   bash bench/run.sh [bench.py flags]   the benchmark, e.g. --rounds 1 --duration 1 --skip-memory,
#                                        then the cluster figures (--no-write, --render, --help: both)
#     --skip-cluster                     ... without the cluster figures (or BENCH_SKIP_CLUSTER=1)
#     --cluster-only [cluster.py flags]  only the cluster figures (see bench/cluster.py --help)
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

if [[ "$mode" == profile ]]; then
    # The floor: a proxy-wasm filter that overrides no callback (its own crate and lock file).
    cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/empty-filter/Cargo.toml
    cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/hostcall-probe/Cargo.toml
    exec .venv/bin/python bench/profile.py "$@"
fi

# bench mode: bench.py, then bench/cluster.py. The two flags below are this script's; the rest
# go to bench.py (to cluster.py with --cluster-only; --no-write, --render and --help go to both).
matrix=1
cluster=1
if [[ "${BENCH_SKIP_CLUSTER:-0}" != 0 ]]; then
    cluster=0
fi
args=()
cluster_args=()
for arg in "$@"; do
    case "$arg" in
        --skip-cluster) cluster=0 ;;
        --cluster-only) matrix=0 ;;
        *) args+=("$arg") ;;
    esac
done
if ((!matrix && !cluster)); then
    log "--cluster-only with --skip-cluster (or BENCH_SKIP_CLUSTER): nothing to run"
    exit 2
fi
if ((matrix)); then
    for arg in "${args[@]}"; do
        case "$arg" in
            --no-write | --render | -h | --help) cluster_args+=("$arg") ;;
        esac
    done
else
    cluster_args=("${args[@]}")
fi
if ((cluster)) && ! command -v etcd >/dev/null 2>&1; then
    log "etcd is missing for the cluster figures: run 'make setup' (installs Debian's etcd-server), or pass --skip-cluster"
    exit 1
fi

status=0
if ((matrix)); then
    # The floor: a proxy-wasm filter that overrides no callback (its own crate and lock file).
    cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/empty-filter/Cargo.toml
    .venv/bin/python bench/bench.py "${args[@]}" || status=$?
fi
if ((cluster)); then
    if ((matrix)); then
        log "bench.py done (exit $status); now the cluster figures (bench/cluster.py)"
    fi
    cluster_status=0
    .venv/bin/python bench/cluster.py "${cluster_args[@]}" || cluster_status=$?
    if ((status == 0)); then
        status=$cluster_status
    fi
fi
exit "$status"
