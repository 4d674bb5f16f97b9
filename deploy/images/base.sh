#!/usr/bin/env bash
# Build (once) a Debian bookworm base image with Python 3.11 for one architecture, from Debian packages only
# (Docker Hub is not needed): debootstrap a minimal root into the cache, then `FROM scratch` + `ADD rootfs.tar`
# built with --platform, so the image carries the right architecture (`docker import` would label it amd64).
#   deploy/images/base.sh amd64|arm64|armhf      prints the image tag, e.g. cassava-base:bookworm-arm64
# Python 3.11 is what python:3.11-slim-bookworm and Raspberry Pi OS bookworm have.
set -euo pipefail
. "$(dirname "$0")/common.sh"
arch="${1:?usage: base.sh amd64|arm64|armhf}"
case "$arch" in
  amd64) platform=linux/amd64 ;;
  arm64) platform=linux/arm64 ;;
  armhf) platform=linux/arm/v7 ;;
  *) die "unknown architecture $arch" ;;
esac
packages=python3,python3-venv
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The tag names what is inside, so a change of package list builds a new base instead of reusing an old one.
version=$(printf '%s' "$packages" | sha256sum | cut -c1-8)
tag="cassava-base:bookworm-$arch-$version"
if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi

dir="$CASSAVA_BUILD_CACHE/base/$arch-$version"
if [ ! -f "$dir/rootfs.tar" ]; then
  [ "$(id -u)" = 0 ] || die "building the $arch base needs root (debootstrap)"
  command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
  rm -rf "$dir/root"; mkdir -p "$dir"
  say "debootstrap bookworm $arch (a few minutes; under qemu for foreign architectures)"
  debootstrap --arch="$arch" --variant=minbase --include="$packages" bookworm "$dir/root" "$mirror" \
    >"$dir/debootstrap.log" 2>&1 || die "debootstrap failed, see $dir/debootstrap.log"
  # What an image does not need: package lists, caches, docs.
  rm -rf "$dir/root"/var/lib/apt/lists/* "$dir/root"/var/cache/apt/*.bin "$dir/root"/var/cache/apt/archives/*.deb \
    "$dir/root"/usr/share/doc/* "$dir/root"/usr/share/man/* "$dir/root"/usr/share/info/* "$dir/root"/var/log/*.log
  tar -C "$dir/root" --numeric-owner -cf "$dir/rootfs.tar.tmp" . && mv "$dir/rootfs.tar.tmp" "$dir/rootfs.tar"
  rm -rf "$dir/root"
fi
printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["/bin/bash"]\n' > "$dir/Dockerfile"
say "importing $tag ($platform)"
"$DOCKER" build -q --platform "$platform" -t "$tag" "$dir" >/dev/null
echo "$tag"
