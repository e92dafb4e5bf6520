#!/usr/bin/env bash
# Which of the filter's Wasm functions the instructions of a hot-path request go to.
#
# Envoy's release binary has no symbols, and V8's generated code is anonymous to callgrind:
# bench/profile.py can say how many instructions a request costs in "v8 code", not where. This
# runs the same module in Node's V8 (TurboFan only, as Envoy's V8 is set up: --no-liftoff)
# under a small proxy-wasm host (host.js), under callgrind, with V8's map of its code, and
# prints the instructions per request of each function (jit_cost.py). V8's versions differ,
# so the figures are a guide to where the cost is, not Envoy's own numbers.
#
#   bash bench/wasm-code/run.sh [FILTER.wasm] [REQUESTS]
#
# FILTER.wasm defaults to a build of the filter with its function names kept. Needs valgrind
# (bash bench/run.sh installs it) and Node (installed with the tests' TypeScript SDK).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
requests="${2:-5000}"
wasm="${1:-}"
if [[ -z "$wasm" ]]; then
  # The release build, but with the name section that `strip = true` removes.
  CARGO_PROFILE_RELEASE_STRIP=none cargo build --offline --locked --quiet --release \
    --target wasm32-wasip1 -p mcp-session-filter --target-dir "$root/target/wasm-code" \
    --manifest-path "$root/Cargo.toml"
  wasm="$root/target/wasm-code/wasm32-wasip1/release/mcp_session_filter.wasm"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
(cd "$out" && WARM=3000 valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out/callgrind.out" \
  node --no-liftoff --perf-basic-prof --perf-basic-prof-only-functions "$here/host.js" "$wasm" "$requests" \
  >"$out/node.log" 2>&1) || { cat "$out/node.log"; exit 1; }
pid="$(sed -n 's/^==\([0-9]*\)==.*/\1/p' "$out/node.log" | head -1)"
# The map counts the warm-up and the setup too: the warm-up's requests are counted in.
python3 "$here/jit_cost.py" "$out/callgrind.out" "/tmp/perf-$pid.map" "$((requests + 3000))" --wasm-only
rm -f "/tmp/perf-$pid.map"
