#!/usr/bin/env bash
# Podman for the shipped compose files, with an engine configuration and an image store of the
# project's own (tests/e2e/test_compose.py runs the files in `make test`; README "Docker Compose").
#
#   scripts/containers.sh setup          podman, runc and debootstrap (Debian's, as root), and
#                                        podman-compose (PyPI, pinned in containers/requirements.txt)
#                                        in .containers/venv; writes the engine configuration
#   scripts/containers.sh check          says what is missing to run the compose files; exit 1 if any
#   scripts/containers.sh images         builds the stand-in images (containers/images.sh), unless
#                                        the store has them built from the same inputs
#   scripts/containers.sh compose ARGS   podman-compose ARGS on the project's engine and store
#   scripts/containers.sh podman ARGS    podman ARGS, the same
#   scripts/containers.sh clean          removes the store's containers, then .containers/
#
# Everything lives in .containers/ (git-ignored): containers.conf, storage.conf, the image store,
# the networks and the podman-compose venv. The images built here carry official names
# (envoyproxy/envoy:v1.40.0, python:3.11-slim) so the compose files run unmodified; kept out of
# the user's default store, they can never shadow the real images there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/debian.sh
source "$root/scripts/debian.sh"
state="$root/.containers"
venv="$state/venv"
requirements="$root/containers/requirements.txt"
packages=(podman runc debootstrap)

log() { printf 'containers: %s\n' "$*" >&2; }

# The engine configuration, for every podman this script starts (podman-compose's too).
export CONTAINERS_CONF="$state/containers.conf"
export CONTAINERS_STORAGE_CONF="$state/storage.conf"

missing_packages() {
    local p
    for p in "${packages[@]}"; do
        command -v "$p" >/dev/null 2>&1 || printf '%s\n' "$p"
    done
}

# The highest value both limits allow; "unlimited" counts as no limit.
lower() {
    if [[ "$1" == unlimited ]]; then echo "$2"
    elif [[ "$2" == unlimited ]]; then echo "$1"
    elif (("$1" < "$2")); then echo "$1"
    else echo "$2"
    fi
}

# Rewrite a file only when its content changes.
write_if_changed() {
    local path="$1" content="$2"
    if [[ ! -f "$path" || "$(cat "$path")" != "$content" ]]; then
        printf '%s\n' "$content" >"$path"
        log "wrote ${path#"$root/"}"
    fi
}

write_configs() {
    mkdir -p "$state"
    # Podman's default ulimits are refused here (no CAP_SYS_RESOURCE): ask for no more than this
    # shell may have. Podman lowers its own nproc limit to pid_max when it starts, so nproc may
    # not pass that either.
    local nofile nproc
    nofile="$(ulimit -Hn)"
    [[ "$nofile" == unlimited ]] && nofile=1048576
    nproc="$(lower "$(ulimit -Hu)" "$(cat /proc/sys/kernel/pid_max)")"
    write_if_changed "$CONTAINERS_CONF" "# Written by scripts/containers.sh setup for this machine; it is rewritten, do not edit.
[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]

[engine]
# crun, podman's default, fails here: \"cgroups in hybrid mode not supported\".
runtime = \"runc\"
tmp_dir = \"$state/tmp\"

[network]
network_config_dir = \"$state/networks\""
    write_if_changed "$CONTAINERS_STORAGE_CONF" "# Written by scripts/containers.sh setup: the project's own image store.
[storage]
driver = \"overlay\"
graphroot = \"$state/storage\"
runroot = \"$state/run\""
}

setup() {
    local missing
    missing="$(missing_packages | tr '\n' ' ')"
    if [[ -n "$missing" ]]; then
        if can_install_debian; then
            log "installing $missing(Debian)"
            debian_install "${packages[@]}"
        else
            log "WARNING: $missing missing and not installed (needs root and apt-get): the compose files cannot run here"
            [[ "${CI:-}" == true ]] && exit 1
        fi
    fi
    write_configs

    local want stamp="$venv/.requirements.sha256"
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [[ ! -x "$venv/bin/podman-compose" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        log "installing podman-compose into ${venv#"$root/"}"
        [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        printf '%s\n' "$want" >"$stamp"
    fi
}

# Everything missing to run the compose files, one line each; nothing when all is there.
problems() {
    local p
    [[ "$(id -u)" == 0 ]] || echo "not root: the project's engine is rootful podman (uid $(id -u) here)"
    for p in $(missing_packages); do
        echo "$p is not installed (scripts/containers.sh setup installs it, as root, with apt-get)"
    done
    [[ -x "$venv/bin/podman-compose" ]] || echo "podman-compose is not installed in ${venv#"$root/"} (scripts/containers.sh setup)"
    [[ -f "$CONTAINERS_CONF" && -f "$CONTAINERS_STORAGE_CONF" ]] ||
        echo "${CONTAINERS_CONF#"$root/"} or ${CONTAINERS_STORAGE_CONF#"$root/"} is missing (scripts/containers.sh setup)"
}

check() {
    local found out
    found="$(problems)"
    if [[ -z "$found" ]] && ! out="$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>&1)"; then
        found="podman does not run here: $(tail -n 3 <<<"$out")"
    fi
    if [[ -n "$found" ]]; then
        printf '%s\n' "$found"
        return 1
    fi
}

clean() {
    [[ -d "$state" ]] || return 0
    if command -v podman >/dev/null 2>&1 && [[ -f "$CONTAINERS_STORAGE_CONF" ]]; then
        # Only this store's containers: nothing mounted is left under it.
        podman rm --all --force >/dev/null
    fi
    rm -rf --one-file-system "$state"
    log "removed ${state#"$root/"}"
}

command="${1:-}"
shift || true
case "$command" in
    setup) setup ;;
    check) check ;;
    images) bash "$root/containers/images.sh" ;;
    compose) exec "$venv/bin/podman-compose" "$@" ;;
    podman) exec podman "$@" ;;
    clean) clean ;;
    *)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
