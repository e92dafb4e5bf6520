#!/usr/bin/env bash
# Builds every cargo-fuzz target under fuzz/ and runs each for SECONDS (libFuzzer, ASan,
# debug assertions on), one after the other. Prints the executions and findings per target;
# exits non-zero when any target crashed, leaked, timed out or failed to run.
#
#   bash scripts/fuzz.sh 3      # the quick form, `make fuzz-quick` (in `make test`)
#   bash scripts/fuzz.sh 120    # the long form, `make fuzz`
#
# The corpus of each target (fuzz/corpus/<target>, not committed) starts from the hand-written
# seeds in fuzz/seeds/ and keeps growing across runs on the same machine. A crash is
# saved under fuzz/artifacts/<target>/; replay it with
#   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>)
# and turn it into a unit test (or a seed under fuzz/seeds/<target>/) once it is fixed.
set -euo pipefail

usage="usage: bash scripts/fuzz.sh SECONDS_PER_TARGET [TARGET...]"
seconds=${1:?$usage}
shift
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo/fuzz"

# cargo fuzz drives rustc with -Z flags (sanitizers, coverage passes); the machine has only a
# stable toolchain, which accepts them under RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# The lock file is committed: refuse to run with anything it does not name.
cargo fetch --locked --quiet
echo "fuzz: building the targets"
cargo fuzz build

# The JSON-RPC body targets share their seeds (fuzz/seeds/jsonrpc); the JSON and SSE targets
# get the JSON-RPC dictionary.
declare -A shared_seeds=(
    [parse_body]=jsonrpc [sessionless_body]=jsonrpc [uninitialized_body]=jsonrpc [json_outcome]=jsonrpc
)
declare -A dict=(
    [parse_body]=json.dict [sessionless_body]=json.dict [uninitialized_body]=json.dict
    [json_outcome]=json.dict [sse_scanner]=json.dict [config]=json.dict
)

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

failed=()
total=0
printf '%-20s %12s %8s %s\n' target executions corpus findings
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus" "artifacts/$target"
    for seeds in "seeds/$target" "seeds/${shared_seeds[$target]:-none}"; do
        [[ -d $seeds ]] || continue
        for seed in "$seeds"/*; do
            [[ -e $corpus/${seed##*/} ]] || cp "$seed" "$corpus/"
        done
    done
    touch "$logs/$target.start"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [[ -n ${dict[$target]:-} ]]; then
        args+=(-dict="${dict[$target]}")
    fi
    status=0
    cargo fuzz run "$target" "$corpus" -- "${args[@]}" >"$logs/$target.log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)
    runs=${runs:-0}
    total=$((total + runs))
    size=$(find "$corpus" -type f | wc -l)
    found=$(find "artifacts/$target" -type f -newer "$logs/$target.start" | sort)
    if [[ $status -ne 0 || -n $found ]]; then
        failed+=("$target")
        printf '%-20s %12s %8s %s\n' "$target" "$runs" "$size" "FAILED (exit $status) ${found//$'\n'/ }"
        echo "---- $target: the libFuzzer log from the first error"
        awk '/panicked|ERROR:|error\[|error:/ { on = 1 } on' "$logs/$target.log" | grep -v '^stat::' | head -60
        echo "----"
    else
        printf '%-20s %12s %8s %s\n' "$target" "$runs" "$size" "none"
    fi
done

echo "fuzz: ${#targets[@]} targets, ${seconds} s each, $total executions in all"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: findings in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
