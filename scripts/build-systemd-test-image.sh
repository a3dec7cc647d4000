#!/usr/bin/env bash
# Build the image the systemd test stage boots (tests/test_systemd_deb.py): a Debian 12 rootfs
# from debootstrap with systemd as /sbin/init, made an image with `docker import`. Prints the
# image's name on stdout.
#
# Cached: the tag is a hash of this script, so an edit here builds a new image and an unchanged
# script reuses the one already in the engine (`docker image inspect`); nothing else is assumed.
# A cold build takes about a minute (debootstrap downloads ~70 MB from deb.debian.org).
#
# What the rootfs holds besides a minimal systemd system:
#   - what fractal-hostd's package depends on (python3 >= 3.11, rclone, fuse3), so that
#     `apt install ./fractal-hostd_*.deb` inside needs no network;
#   - a stand-in Docker engine package ("docker-engine", Provides the engine the .deb depends
#     on): its docker.service is socat relaying /run/docker.sock to the real engine's socket,
#     bind-mounted by the test at /run/host-docker.sock. Stopping or killing that unit is then
#     "the engine went away" as the service sees it, without touching the shared real engine.
#
# Environment: FHD_SYSTEMD_IMAGE_REPO (default fractal-hostd-systemd-test),
#              FHD_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"

repo="${FHD_SYSTEMD_IMAGE_REPO:-fractal-hostd-systemd-test}"
mirror="${FHD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
key="$(sha256sum "$0" | cut -c1-12)"
image="$repo:$key"

if docker image inspect "$image" >/dev/null 2>&1; then
    log "image $image already present (cache key: this script's content)"
    printf '%s\n' "$image"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
include=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,rclone,fuse3,socat
log "debootstrap bookworm into $root ($include)"
debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# The stand-in Docker engine package.
pkg="$work/docker-engine"
mkdir -p "$pkg/DEBIAN" "$pkg/lib/systemd/system"
cat >"$pkg/DEBIAN/control" <<'EOF'
Package: docker-engine
Version: 0.0~fhd-test
Architecture: all
Maintainer: fractal-hostd tests <root@localhost>
Depends: socat
Description: test stand-in for a Docker engine (relays to the real engine's socket)
EOF
cat >"$pkg/lib/systemd/system/docker.service" <<'EOF'
[Unit]
Description=Docker engine stand-in (socat to the engine's socket bind-mounted at /run/host-docker.sock)

[Service]
ExecStart=/usr/bin/socat UNIX-LISTEN:/run/docker.sock,fork,unlink-early,mode=660 UNIX-CONNECT:/run/host-docker.sock
ExecStartPost=/bin/sh -c 'until [ -S /run/docker.sock ]; do sleep 0.1; done'
Restart=no

[Install]
WantedBy=multi-user.target
EOF
dpkg-deb --root-owner-group -b "$pkg" "$root/tmp/docker-engine.deb" >/dev/null
chroot "$root" dpkg -i /tmp/docker-engine.deb >/dev/null
chroot "$root" systemctl enable docker.service >/dev/null 2>&1
rm -f "$root/tmp/docker-engine.deb"

# Units that have nothing to do in a container (no consoles, no udev, no kernel audit).
for unit in getty@tty1.service console-getty.service systemd-journald-audit.socket \
    systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    systemd-remount-fs.service systemd-firstboot.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
: >"$root/etc/machine-id"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*

tar -C "$root" --numeric-owner -c . \
    | docker import --change 'CMD ["/sbin/init"]' \
        --message "fractal-hostd systemd test rootfs" - "$image" >/dev/null
log "built $image"
printf '%s\n' "$image"
