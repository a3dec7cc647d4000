#!/usr/bin/env bash
# Build dist/fractal-hostd_<version>_<arch>.deb with plain dpkg-deb (`make deb`), from whatever
# is in the working tree. Prints the path of the .deb on stdout.
#
# The package holds the service in a self-contained virtualenv, /opt/fractal-hostd/venv, with
# every Python dependency installed at build time (installing needs no network). The virtualenv
# is made with Debian's own interpreter, /usr/bin/python3: a venv links its python to the
# interpreter that made it, and the `python3` first on PATH on build machines may be a separate
# build that hosts do not have (the unit then fails with 203/EXEC). The venv is built in a
# staging directory, then the staging path is rewritten to /opt/fractal-hostd/venv in the
# scripts' #! lines; byte code is compiled by postinst, in place.
#
# Environment:
#   FHD_DEB_VERSION  the package version (default: pyproject's version + "+<commits>.g<commit>"
#                    from git, so a later commit is a newer package)
#   FHD_DEB_OUT      output directory (default dist/)
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"

cd "$(dirname "$0")/.."
src="$PWD"
python=/usr/bin/python3
prefix=/opt/fractal-hostd/venv
out="${FHD_DEB_OUT:-$src/dist}"

[ -x "$python" ] || die "$python not found: the package is built on Debian's python3 (apt-get install python3)"
"$python" -c 'import sys; assert sys.version_info >= (3, 11)' \
    || die "$python is $("$python" --version 2>&1); the service needs Python >= 3.11"
"$python" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
command -v dpkg-deb >/dev/null || apt_install dpkg-dev
pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
pyver_next="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')"

upstream="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
commit="$(git rev-parse HEAD 2>/dev/null || true)"
if [ -n "${FHD_DEB_VERSION:-}" ]; then
    version="$FHD_DEB_VERSION"
elif [ -n "$commit" ]; then
    version="$upstream+$(git rev-list --count HEAD).g${commit:0:10}"
else
    version="$upstream"
fi
arch="$(dpkg --print-architecture)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pkg="$work/pkg"
venv="$pkg$prefix"

# The tree as it is (committed or not), without the build's own leftovers, so pip's in-tree
# build writes nothing into the checkout.
mkdir -p "$work/src"
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.mypy_cache \
    --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=./.hypothesis -c . \
    | tar -C "$work/src" -x

log "virtualenv on $python ($("$python" --version 2>&1)) in $prefix"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$work/src" \
    >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; die "pip install of the project failed"; }
# pip and setuptools only installed the above; the service does not need them at run time.
"$venv/bin/python" -m pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1

# Paths: the staging directory must not survive anywhere.
sed -i "s|$pkg||g" "$venv/pyvenv.cfg"  # "command = ... -m venv <path>", informational
for script in "$venv"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ] && head -c 2 "$script" | grep -q '#!'; then
        sed -i "1s|^#!.*/bin/python[0-9.]*|#!$prefix/bin/python3|" "$script"
    fi
done
# No byte code in the package (Debian policy: it is made at install time, in place). postinst
# compiles it, prerm removes it, and the unit keeps the service from writing any itself.
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
# The shared objects of the wheels (cryptography, cffi) carry their debug symbols.
find "$venv" -name '*.so*' -type f -exec strip --strip-unneeded {} +
if grep -rlF "$pkg" "$venv" >"$work/leaks" 2>/dev/null; then
    sed 's/^/  /' "$work/leaks" >&2
    die "the staging path $pkg is still in the files above"
fi
[ "$(readlink "$venv/bin/python3")" = "$python" ] \
    || die "$prefix/bin/python3 links to $(readlink "$venv/bin/python3"), not $python"

# The unit, with the packaged path and the commit for the Sentry release.
install -D -m 0644 systemd/fractal-hostd.service "$pkg/lib/systemd/system/fractal-hostd.service"
if [ -n "$commit" ]; then
    sed -i "s|^#Environment=FRACTAL_GIT_COMMIT=.*|Environment=FRACTAL_GIT_COMMIT=$commit|" \
        "$pkg/lib/systemd/system/fractal-hostd.service"
fi
install -D -m 0644 systemd/fractal-hostd.env.example "$pkg/usr/share/fractal-hostd/fractal-hostd.env.example"
mkdir -p "$pkg/usr/bin"
ln -s "$prefix/bin/fractal-hostd" "$pkg/usr/bin/fractal-hostd"
install -D -m 0644 packaging/debian/copyright "$pkg/usr/share/doc/fractal-hostd/copyright"
install -D -m 0644 packaging/debian/lintian-overrides "$pkg/usr/share/lintian/overrides/fractal-hostd"
install -D -m 0644 packaging/debian/fractal-hostd.8 "$pkg/usr/share/man/man8/fractal-hostd.8"
gzip -9n "$pkg/usr/share/man/man8/fractal-hostd.8"
{
    printf 'fractal-hostd (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Built from commit %s.\n  * Changes: CHANGELOG.md of the source.\n\n' "${commit:-unknown}"
    printf ' -- Fractal <hostd@fractal.co>  %s\n' "$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")"
} | gzip -9n >"$pkg/usr/share/doc/fractal-hostd/changelog.gz"

# The C libraries the wheels' shared objects link (libc6, libgcc-s1 for cryptography's Rust
# part), as Debian dependencies with versions: what dh_shlibdeps would add.
mkdir -p "$work/shlibs/debian"
printf 'Source: fractal-hostd\n\nPackage: fractal-hostd\nArchitecture: any\n' >"$work/shlibs/debian/control"
mapfile -t objects < <(find "$venv" -name '*.so*' -type f)
shlibs="$(cd "$work/shlibs" && dpkg-shlibdeps -O "${objects[@]}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no library dependencies for ${#objects[@]} shared objects"

mkdir -p "$pkg/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$pkg/DEBIAN/$script"
done
cat >"$pkg/DEBIAN/control" <<EOF
Package: fractal-hostd
Version: $version
Architecture: $arch
Maintainer: Fractal <hostd@fractal.co>
Section: admin
Priority: optional
Depends: python3 (>= $pyver), python3 (<< $pyver_next), $shlibs, docker.io | docker-engine | docker-ce, rclone, fuse3
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Description: Fractal host agent (container TTYs and resources, API, heartbeats)
 fractal-hostd runs as root under systemd on a Fractal cloud GPU host: it maps
 each Docker container's TTY and resources into files, serves an HTTPS API to
 the webserver, reads the EC2 instance metadata, sends heartbeats, starts the
 ECS agent and mounts cloud storage with rclone.
 .
 The service and every Python library it uses are in a virtualenv under
 /opt/fractal-hostd, built on Debian's python3 $pyver.
EOF

mkdir -p "$out"
deb="$out/fractal-hostd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz -b "$pkg" "$deb" >/dev/null
log "built $deb ($(du -h "$deb" | cut -f1))"
printf '%s\n' "$deb"
