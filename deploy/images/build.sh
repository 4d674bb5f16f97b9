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
image="cassava-$tier"
say "building $image:$tag ($platform) from $base"
cd "$REPO_ROOT"
# --network none: the proof that nothing is fetched while building.
"$DOCKER" build --network none --platform "$platform" --build-arg BASE_IMAGE="$base" \
  --build-arg WHEELHOUSE="$wheelhouse" -f "$tier/Dockerfile" -t "$image:$tag" -t "$image:latest" . >&2
echo "$image:$tag"
