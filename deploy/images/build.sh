#!/usr/bin/env bash
# Build one tier's image on this machine, offline except for the one-time downloads into the cache:
#   deploy/images/build.sh cloud|edge [TAG]       (default tag 0.1.0; the image is also tagged :latest)
# 1. docker + qemu ready (host-setup.sh), 2. the Debian bookworm base for the tier's architecture (base.sh),
# 3. the tier's wheelhouse (wheels.sh), 4. `docker build --platform` with BuildKit, no network in the build.
# BASE_IMAGE=... uses another base instead of the Debian one (e.g. python:3.11-slim-bookworm where Docker Hub works).
set -euo pipefail
here="$(dirname "$0")"
. "$here/common.sh"
tier="${1:?usage: build.sh cloud|edge [TAG]}"; tag="${2:-${CASSAVA_IMAGE_TAG:-0.1.0}}"
case "$tier" in
  cloud) platform=linux/amd64; arch=amd64 ;;
  edge) platform=linux/arm64; arch=arm64 ;;
  *) die "unknown tier $tier (cloud or edge)" ;;
esac
"$here/host-setup.sh"
base="${BASE_IMAGE:-$("$here/base.sh" "$arch")}"
wheelhouse="$("$here/wheels.sh" "$tier" "$platform")"
# The Dockerfiles' build stage runs on this machine's architecture (no emulation): a multi-arch BASE_IMAGE serves
# both, the Debian base is built once more for this machine when the target differs.
case "$(uname -m)" in x86_64) host_arch=amd64 ;; aarch64) host_arch=arm64 ;; *) host_arch=$arch ;; esac
build_args=(--build-arg BASE_IMAGE="$base" --build-arg WHEELHOUSE="$wheelhouse")
if [ -z "${BASE_IMAGE:-}" ] && [ "$host_arch" != "$arch" ]; then
  build_args+=(--build-arg BUILD_BASE_IMAGE="$("$here/base.sh" "$host_arch")")
fi
image="cassava-$tier"
say "building $image:$tag ($platform) from $base"
cd "$REPO_ROOT"
# --network none: the proof that nothing is fetched while building.
"$DOCKER" build --network none --platform "$platform" "${build_args[@]}" -f "$tier/Dockerfile" \
  -t "$image:$tag" -t "$image:latest" . >&2
echo "$image:$tag"
