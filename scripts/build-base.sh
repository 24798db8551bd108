#!/usr/bin/env bash
# A local stand-in for the public base image (python:3.11-slim-bookworm) where no image registry is
# reachable: a Debian bookworm root file system made by debootstrap from Debian's package mirror, with
# python3 (3.11), venv, pip (ensurepip) and ca-certificates, imported with `docker import`.
#
# usage: scripts/build-base.sh [TAG]        (default nextgpt/base:bookworm-py3.11)
# env:
#   DEBIAN_MIRROR  the mirror debootstrap reads (default http://deb.debian.org/debian)
#   BASE_REBUILD   1 rebuilds even when TAG exists
#
# Reproducible: the same script, suite, package list and mirror give the same file set; the tarball has
# sorted names, numeric owners and one fixed mtime (SOURCE_DATE_EPOCH), so an unchanged file system imports
# to the same layer. The Debian point release of the day decides package versions (no snapshot mirror here).
# Cached: the image carries this script's hash as a label; a second run with an unchanged script returns at
# once. Needs root (debootstrap, chroot) and a running dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-nextgpt/base:bookworm-py3.11}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,ca-certificates
epoch=${SOURCE_DATE_EPOCH:-1704067200} # 2024-01-01: fixed mtimes make the tarball byte-stable
recipe=$(cat "$0" | sha256sum | cut -c1-16)

step() { echo "[build-base] $*"; }

if [ "${BASE_REBUILD:-0}" != 1 ] &&
  [ "$(docker image inspect -f '{{index .Config.Labels "org.nextgpt.base-recipe"}}' "$tag" 2>/dev/null)" = "$recipe" ]; then
  step "$tag is up to date (recipe $recipe)"
  exit 0
fi
command -v debootstrap >/dev/null || {
  step "installing debootstrap (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

work=$(mktemp -d /tmp/nextgpt-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
start=$(date +%s)
step "debootstrap bookworm (minbase + $packages) from $mirror: a few minutes"
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log"
  exit 1
}
# The image's own apt reads the same mirror (and the security updates) when a build step needs a package.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
# What a slim image leaves out: package lists, caches, logs, docs, man pages (a rebuild would differ there).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/ldconfig/* "$root"/var/log/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/* "$root"/root/.cache
# The standard library's bytecode, made again as unchecked-hash .pyc: valid whatever the mtimes (the tarball
# clamps them) and byte-stable. Without it every `python` start (each healthcheck) compiles the standard
# library from source, since the images set PYTHONDONTWRITEBYTECODE: seconds on a busy machine.
find "$root" -name __pycache__ -prune -exec rm -rf {} +
chroot "$root" python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/lib/python3.11 >/dev/null || true
chroot "$root" python3 -c "import asyncio, json, ssl" # the bytecode loads
# Machine-specific files debootstrap copies from the host: the container runtime provides its own.
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"

step "importing as $tag"
tar --sort=name --numeric-owner --mtime="@$epoch" --clamp-mtime -C "$root" -cf "$work/rootfs.tar" .
docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL org.nextgpt.base-recipe=$recipe" \
  --change 'CMD ["python3"]' \
  "$work/rootfs.tar" "$tag" >/dev/null
docker run --rm "$tag" python3 -c "import ensurepip, ssl, venv, sys; print('[build-base] python', sys.version.split()[0])"
step "$tag built in $(($(date +%s) - start)) s, $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
