#!/usr/bin/env bash
# The filter as an OCI image, for Istio (WasmPlugin, `url: oci://...`) and Envoy Gateway
# (EnvoyExtensionPolicy, `code.type: Image`); README "OCI image". Podman runs on the project's
# engine and image store (.containers/, scripts/containers.sh).
#
#   scripts/image.sh build IMAGE        builds IMAGE (NAME:TAG) from the built wasm: `make image`
#   scripts/image.sh save IMAGE FILE    saves IMAGE as an OCI archive (oci-layout, index.json,
#                                       blobs/) at FILE: `make image-archive`
#
# The image is the "compat" variant of the Wasm image specification (solo-io/wasm, spec/), the
# one plain podman builds: FROM scratch, one layer (application/vnd.oci.image.layer.v1.tar+gzip)
# holding one file, plugin.wasm, and the manifest annotation module.wasm.image/variant=compat.
# The build's timestamp is fixed, so the same wasm always gives the same manifest digest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wasm="$root/target/wasm32-wasip1/release/mcp_session_filter.wasm"
containerfile="$root/containers/wasm/Containerfile"
context="$root/.containers/build/wasm-image"

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
containers() { bash "$root/scripts/containers.sh" "$@"; }

preflight() {
    [[ -f "$wasm" ]] || die "no ${wasm#"$root/"}: run make build"
    local problems
    if ! problems="$(containers check)"; then
        die "podman cannot run here (scripts/containers.sh setup, as root on Debian, sets it up):
$problems"
    fi
}

build() {
    local image="$1" digest
    preflight
    rm -rf "$context"
    mkdir -p "$context"
    install -m 0644 "$wasm" "$context/plugin.wasm"
    # --format oci: an OCI manifest, which carries the annotation (a Docker one would drop it).
    # --timestamp 0: the created times and the file's mtime are fixed, so the digest is the wasm's.
    containers podman build --quiet --format oci --layers=false --timestamp 0 --identity-label=false \
        --annotation module.wasm.image/variant=compat \
        --tag "$image" --file "$containerfile" "$context" >/dev/null
    rm -rf "$context"
    # The image this tag named before, if the wasm changed: nothing else is untagged here.
    containers podman image prune --force >/dev/null
    digest="$(sha256sum "$wasm" | cut -d' ' -f1)"
    log "built $image: plugin.wasm, sha256 $digest"
}

save() {
    local image="$1" file="$2" manifest
    preflight
    mkdir -p "$(dirname "$file")"
    rm -f "$file" "$file.part"
    containers podman save --quiet --format oci-archive --output "$file.part" "$image"
    mv "$file.part" "$file"
    manifest="$(tar -xOf "$file" index.json | grep -oE 'sha256:[0-9a-f]{64}' | head -n 1)"
    log "saved $image to ${file#"$root/"}: manifest $manifest"
}

command="${1:-}"
case "$command" in
    build) [[ $# == 2 ]] || die "usage: $0 build IMAGE"; build "$2" ;;
    save) [[ $# == 3 ]] || die "usage: $0 save IMAGE FILE"; save "$2" "$3" ;;
    *)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
