# Shared helpers for the scripts in this directory. Source it; do not run it.
# shellcheck shell=bash

# Messages go to stderr, prefixed with the script's name, so CI logs say who spoke.
log() {
    printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# The Docker socket this project talks to: DOCKER_HOST when it is unix://, else the default.
docker_socket() {
    local host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    case "$host" in
        unix://*) printf '%s\n' "${host#unix://}" ;;
        *) die "DOCKER_HOST=$host is not a unix:// socket; only unix sockets are supported" ;;
    esac
}

# True when an engine answers GET /_ping on the socket within 5 s.
docker_answers() {
    local sock="$1"
    [ -S "$sock" ] || return 1
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -fsS --max-time 5 --unix-socket "$sock" http://docker/_ping 2>/dev/null)" = "OK" ]
    elif command -v docker >/dev/null 2>&1; then
        timeout 5 docker -H "unix://$sock" version >/dev/null 2>&1
    else
        return 1
    fi
}

# True when the Debian package is installed (not merely known or half-removed).
package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Install Debian packages, running `apt-get update` first (only called when something is missing).
apt_install() {
    [ "$(id -u)" = 0 ] || die "installing $* needs root"
    log "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a dpkg lock held by someone else (unattended-upgrades on a fresh machine).
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}
