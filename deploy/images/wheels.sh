#!/usr/bin/env bash
# Download (once) every wheel the TIER image needs for PLATFORM into the cache, then link them into
# build/wheelhouse/TIER-ARCH in the checkout (git-ignored), which the Dockerfile installs from with
# `pip install --no-index`: no network inside the build.
#   deploy/images/wheels.sh cloud linux/amd64 | edge linux/arm64      prints the wheelhouse path (repo-relative)
# Keyed by the requirements read from pyproject.toml: a change of dependencies downloads a new wheelhouse.
set -euo pipefail
. "$(dirname "$0")/common.sh"
tier="${1:?usage: wheels.sh cloud|edge PLATFORM}"; platform="${2:?usage: wheels.sh TIER linux/amd64|linux/arm64}"
case "$platform" in
  linux/amd64) arch=amd64; machine=x86_64 ;;
  linux/arm64) arch=arm64; machine=aarch64 ;;
  *) die "no wheelhouse for $platform (PyPI has no armv7 wheels for numpy: see edge/README.md)" ;;
esac
pip=("${PYTHON:-python3}" -m pip)
reqs="$("${PYTHON:-python3}" "$(dirname "$0")/requirements.py" "$tier")"
constraints="$(dirname "$0")/constraints-$machine.txt"
[ -f "$constraints" ] || constraints=/dev/null
# The target's wheel tags: Python 3.11 (bookworm's), CPython ABI, wheels only. pip does not widen --platform to older
# glibc versions by itself, so every manylinux_2_X up to bookworm's glibc 2.36 is listed.
target_tags="--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
$(for v in $(seq 17 36); do printf -- '--platform manylinux_2_%s_%s ' "$v" "$machine"; done)\
--platform manylinux2014_$machine --platform any"
key=$( (printf '%s\n%s\n' "$platform" "$reqs"; cat "$constraints") | sha256sum | cut -c1-12)
cache="$CASSAVA_BUILD_CACHE/wheels/$tier-$arch-$key"
if [ ! -f "$cache/requirements.txt" ]; then
  say "downloading $tier wheels for $platform into $cache"
  rm -rf "$cache.tmp"; mkdir -p "$cache.tmp"
  printf '%s\n' "$reqs" > "$cache.tmp/in.txt"
  "${pip[@]}" download -q --dest "$cache.tmp" $target_tags -r "$cache.tmp/in.txt" -c "$constraints"
  # The exact set downloaded, pinned: the image installs it with --no-index; the build backend stays out.
  ls "$cache.tmp" | grep '\.whl$' | cut -d- -f1-2 | sed 's/-/==/' | tr _ - \
    | grep -viE '^(setuptools|wheel|pip)==' | sort > "$cache.tmp/requirements.txt"
  mv "$cache.tmp" "$cache"
fi
out="build/wheelhouse/$tier-$arch"
rm -rf "$REPO_ROOT/$out"; mkdir -p "$REPO_ROOT/build/wheelhouse"
# Hard links: instant and no extra space; a copy when the cache is on another filesystem.
cp -al "$cache" "$REPO_ROOT/$out" 2>/dev/null || cp -a "$cache" "$REPO_ROOT/$out"
# The same tags for the Dockerfile, whose build stage installs these wheels without running the target's CPU.
printf '%s\n' "$target_tags" > "$REPO_ROOT/$out/target-tags.txt"
echo "$out"
