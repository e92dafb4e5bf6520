# shellcheck shell=bash
# Sourced by scripts/setup.sh and scripts/containers.sh: Debian packages, installed only where
# that is possible (root, apt-get), and the package lists refreshed only when the install fails
# without it.

# can_install_debian: whether debian_install can run here.
can_install_debian() {
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1
}

# debian_install PACKAGE...: installs the packages (fails the calling script if it cannot).
debian_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
}
