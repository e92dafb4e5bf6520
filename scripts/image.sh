#!/usr/bin/env bash
# The filter as an OCI image, for Istio (WasmPlugin, `url: oci://...`) and Envoy Gateway
# (EnvoyExtensionPolicy, `code.type: Image`), and the native module as one, for a Kubernetes
# image volume; README "OCI image". Podman runs on the project's engine and image store
# (.containers/, scripts/containers.sh).
#
#   scripts/image.sh build IMAGE        builds IMAGE (NAME:TAG) from the built wasm: `make image`
#   scripts/image.sh build-native IMAGE builds IMAGE from the built native module:
#                                       `make image-native`
#   scripts/image.sh save IMAGE FILE    saves IMAGE as an OCI archive (oci-layout, index.json,
#                                       blobs/) at FILE: `make image-archive`,
#                                       `make image-native-archive`
#
# The Wasm image is the "compat" variant of the Wasm image specification (solo-io/wasm, spec/),
# the one plain podman builds: FROM scratch, one layer (application/vnd.oci.image.layer.v1.tar+gzip)
# holding one file, plugin.wasm, and the manifest annotation module.wasm.image/variant=compat.
# The native image is the same with one file, libmcp_session_native.so, and no annotation.
# The build's timestamp is fixed, so the same module always gives the same manifest digest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
containers() { bash "$root/scripts/containers.sh" "$@"; }

# What `build` puts in the image: the built module, the name it has there, the Containerfile,
# and the manifest's annotations.
module="$root/target/wasm32-wasip1/release/mcp_session_filter.wasm"
name=plugin.wasm
containerfile="$root/containers/wasm/Containerfile"
annotations=(--annotation module.wasm.image/variant=compat)
native() {
    module="$root/target/release/libmcp_session_native.so"
    name=libmcp_session_native.so
    containerfile="$root/containers/native/Containerfile"
    annotations=()
}

preflight() {
    local problems
    if ! problems="$(containers check)"; then
        die "podman cannot run here (scripts/containers.sh setup, as root on Debian, sets it up):
$problems"
    fi
}

build() {
    local image="$1" digest context="$root/.containers/build/image"
    [[ -f "$module" ]] || die "no ${module#"$root/"}: run make build"
    preflight
    rm -rf "$context"
    mkdir -p "$context"
    install -m 0644 "$module" "$context/$name"
    # --format oci: an OCI manifest, which carries the annotation (a Docker one would drop it).
    # --timestamp 0: the created times and the file's mtime are fixed, so the digest is the
    # module's.
    containers podman build --quiet --format oci --layers=false --timestamp 0 --identity-label=false \
        "${annotations[@]}" --tag "$image" --file "$containerfile" "$context" >/dev/null
    rm -rf "$context"
    # The image this tag named before, if the module changed: nothing else is untagged here.
    containers podman image prune --force >/dev/null
    digest="$(sha256sum "$module" | cut -d' ' -f1)"
    log "built $image: $name, sha256 $digest"
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
    build-native) [[ $# == 2 ]] || die "usage: $0 build-native IMAGE"; native; build "$2" ;;
    save) [[ $# == 3 ]] || die "usage: $0 save IMAGE FILE"; save "$2" "$3" ;;
    *)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
