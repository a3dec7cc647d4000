#!/usr/bin/env bash
# Install the system packages development and CI need, only those missing:
#   docker.io       the Docker engine and CLI (skipped when some dockerd is already installed)
#   busybox-static  the static busybox baked into the test image (scripts/build-test-image.sh)
#   rclone, fuse3   cloud-storage mounts and their tests
#   make, curl      `make test`; curl pings the engine
#   wrk             HTTP load for `make bench`
#   python3-venv    when python3 cannot create a venv (and for Debian's /usr/bin/python3: the
#                   package's virtualenv, scripts/build-deb.sh)
#   dpkg-dev, binutils, debootstrap   `make deb` and the systemd test image
#                   (scripts/build-systemd-test-image.sh)
# `apt-get update` runs only when something is missing. Idempotent; says what it did.
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"

missing=()
command -v dockerd >/dev/null 2>&1 || package_installed docker.io || missing+=(docker.io)
package_installed busybox-static || missing+=(busybox-static)
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    log "system packages: all present, nothing installed"
else
    apt_install "${missing[@]}"
    log "system packages: installed ${missing[*]}"
fi
