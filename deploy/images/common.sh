# Sourced by the scripts in deploy/images/: where the build cache lives and which docker to use.
# The cache (Debian roots, base images' tarballs, wheelhouses) lives outside the checkout so a fresh clone
# reuses it: /var/cache/cassava-build as root, else $XDG_CACHE_HOME/cassava-build. Override: CASSAVA_BUILD_CACHE.
if [ -z "${CASSAVA_BUILD_CACHE:-}" ]; then
  if [ "$(id -u)" = 0 ]; then CASSAVA_BUILD_CACHE=/var/cache/cassava-build
  else CASSAVA_BUILD_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cassava-build"; fi
fi
export CASSAVA_BUILD_CACHE
# Debian's docker CLI (20.10) has BuildKit built in; a newer CLI without the buildx plugin refuses BuildKit.
DOCKER="${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || command -v docker )}"
export DOCKER DOCKER_BUILDKIT=1
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { echo "[cassava-images] $*" >&2; }
die() { echo "[cassava-images] error: $*" >&2; exit 2; }
