#!/usr/bin/env bash
# Build the test image fractal-hostd-test-busybox:latest with `docker import` (no registry is
# reachable on these machines): a static busybox at /bin/busybox, applet symlinks and an empty
# /tmp. Skipped when the image is already present. Needs a running engine (ensure-docker.sh)
# and busybox-static (install-system-deps.sh).
#
# Environment: FHD_TEST_IMAGE (default fractal-hostd-test-busybox:latest),
#              FHD_BUSYBOX (default /bin/busybox, must be statically linked).
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"

image="${FHD_TEST_IMAGE:-fractal-hostd-test-busybox:latest}"
busybox="${FHD_BUSYBOX:-/bin/busybox}"
applets=(sh sleep echo cat ls mkdir touch rm env)

if docker image inspect "$image" >/dev/null 2>&1; then
    log "test image $image already present; not rebuilt"
    exit 0
fi
[ -x "$busybox" ] || die "$busybox not found: install busybox-static (scripts/install-system-deps.sh)"

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in "${applets[@]}"; do
    ln -s busybox "$root/bin/$applet"
done
tar -C "$root" --numeric-owner --owner=0 --group=0 -c . \
    | docker import --message "fractal_hostd test image" - "$image" >/dev/null

# A dynamically linked busybox would import fine and fail only in the tests: check here.
out="$(docker run --rm --network none "$image" sh -c 'echo ok')" \
    || die "the imported image does not run; is $busybox statically linked?"
[ "$out" = ok ] || die "the imported image printed '$out' instead of 'ok'"
log "built test image $image (busybox + ${applets[*]})"
