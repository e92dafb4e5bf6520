#!/usr/bin/env bash
# `make bench`: every benchmark run, then the tables of BENCHMARKS.md from what they stored.
#   1. bench/bench.py    both builds' cost (the Wasm filter, the native module) against Envoy
#                        without a filter, their floors and Envoy's own mcp filter, and each
#                        build's memory (bench/results.json; 11 to 15 minutes on 2 cores)
#   2. bench/cluster.py  the etcd store against the local store, with a 3-member etcd cluster,
#                        once per build with the same flags: the Wasm filter (bench/cluster.json),
#                        then the native module, MCP_ARTIFACT=native (bench/cluster.native.json);
#                        about 2.5 minutes each
#   3. bench/profile.py  where the time goes: instructions per request of every listener, and
#                        per hostcall, under callgrind (bench/profile.json; 6 to 14 minutes)
#   4. bench/report.py   BENCHMARKS.md's generated blocks and bench/results.svg, from the stored
#                        outputs (also after a run that failed: its output, if written, lists
#                        what failed)
# Each output records its provenance (bench/provenance.py): the commit, whether the tree was
# clean, the SHA-256 of the Wasm modules and native modules measured, the machine and the settings.
#
#   bash bench/run.sh [flags]            all of it; flags it does not know go to bench.py
#     --quick                            short settings for every run: proves the machinery
#                                        in a few minutes; the outputs say "short" in their
#                                        provenance, and BENCHMARKS.md says so
#     --skip-cluster, --skip-profile     leave a run out (BENCH_SKIP_CLUSTER=1 too)
#     --cluster-only [cluster.py flags]  only the cluster runs (both builds), then the report
#     --profile-only [profile.py flags]  only the profile run, then the report (also: `profile`)
#     --no-write                         passed to every run; also skips the report
#     --help                             this text
#   python3 bench/report.py [--check]    only the tables, from the stored outputs
#
# Installs what it needs and is missing: wrk and h2load (nghttp2-client) from Debian, valgrind
# for the profile (apt-get, as root or through sudo); builds the benchmark's own filters (the
# empty Wasm filter, the hostcall probe, the empty native module). Expects the venv (make setup)
# and both builds of the filter (make build): `make bench` depends on both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'bench: %s\n' "$*" >&2; }

matrix=1
cluster=1
profile=1
quick=0
write=1
if [[ "${BENCH_SKIP_CLUSTER:-0}" != 0 ]]; then
    cluster=0
fi
if [[ "${1:-}" == "profile" ]]; then
    shift
    set -- --profile-only "$@"
fi
args=()
common=()
for arg in "$@"; do
    case "$arg" in
        --skip-cluster) cluster=0 ;;
        --skip-profile) profile=0 ;;
        --cluster-only) matrix=0 profile=0 ;;
        --profile-only) matrix=0 cluster=0 ;;
        --quick) quick=1 ;;
        --no-write) write=0 common+=("$arg") ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            log "each run's own flags: .venv/bin/python bench/{bench,cluster,profile}.py --help"
            exit 0
            ;;
        *) args+=("$arg") ;;
    esac
done
if ((!matrix && !cluster && !profile)); then
    log "nothing to run (an --*-only flag with the matching --skip-* flag or BENCH_SKIP_CLUSTER)"
    exit 2
fi
# Flags this script does not know go to the one run that is asked for alone, else to bench.py.
bench_args=() cluster_args=() profile_args=()
if ((matrix)); then
    bench_args=("${args[@]}")
elif ((cluster)); then
    cluster_args=("${args[@]}")
else
    profile_args=("${args[@]}")
fi
if ((quick)); then
    bench_args=(--rounds 1 --duration 1 --warmup 1 --churn 200000 --command "bash bench/run.sh --quick" "${bench_args[@]}")
    cluster_args=(--rounds 2 --upstream-rounds 1 --sessions 50 --bytes-sessions 500 --steady-sessions 50
        --steady-seconds 20 --command "bash bench/run.sh --quick" "${cluster_args[@]}")
    profile_args=(--passes 1 --requests 100 --warmup 20 --command "bash bench/run.sh --quick" "${profile_args[@]}")
fi
bench_args+=("${common[@]}") cluster_args+=("${common[@]}") profile_args+=("${common[@]}")

# Debian packages, installed only when their command is missing.
packages=()
command -v wrk >/dev/null 2>&1 || packages+=(wrk)
command -v h2load >/dev/null 2>&1 || packages+=(nghttp2-client)
if ((profile)); then
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

if [[ ! -x .venv/bin/python || ! -f target/wasm32-wasip1/release/mcp_session_filter.wasm ||
    ! -f target/release/libmcp_session_native.so ]]; then
    log "the venv or a build of the filter (Wasm, native) is missing: run 'make setup build' (make bench does)"
    exit 1
fi
if ((cluster)) && ! command -v etcd >/dev/null 2>&1; then
    log "etcd is missing for the cluster figures: run 'make setup' (installs Debian's etcd-server), or pass --skip-cluster"
    exit 1
fi

# The floors: a proxy-wasm filter that overrides no callback, and a dynamic module whose every
# hook returns Continue, and the same module as the session floor (its `session-floor` feature);
# the probe making N hostcalls of a kind (each its own crate and lock file).
if ((matrix || profile)); then
    cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/empty-filter/Cargo.toml
    cargo build --locked --release --manifest-path bench/empty-native/Cargo.toml
    cargo build --locked --release --manifest-path bench/empty-native/Cargo.toml --features session-floor \
        --target-dir bench/empty-native/target/session-floor
fi
if ((profile)); then
    cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/hostcall-probe/Cargo.toml
fi

status=0
# run NAME COMMAND...: runs COMMAND, logs it and its exit status; the first failure is the exit
# status of the script, and the runs after it still run.
run() {
    local name="$1" rc=0
    shift
    log "$name: $*"
    "$@" || rc=$?
    log "$name done (exit $rc)"
    ((status == 0)) && status=$rc
    return 0
}
if ((matrix)); then
    # bench.py and profile.py render each build themselves: a shell's MCP_ARTIFACT must not
    # turn their Wasm listeners into the native module (the harness reads it).
    run bench.py env MCP_ARTIFACT=wasm .venv/bin/python bench/bench.py "${bench_args[@]}"
fi
if ((cluster)); then
    # One run per build, the same flags; the harness renders the build MCP_ARTIFACT names.
    run "cluster.py (Wasm)" env MCP_ARTIFACT=wasm .venv/bin/python bench/cluster.py "${cluster_args[@]}"
    run "cluster.py (native)" env MCP_ARTIFACT=native .venv/bin/python bench/cluster.py "${cluster_args[@]}"
fi
if ((profile)); then
    run profile.py env MCP_ARTIFACT=wasm .venv/bin/python bench/profile.py "${profile_args[@]}"
fi
if ((write)); then
    run report.py .venv/bin/python bench/report.py
fi
exit "$status"
