#!/usr/bin/env bash
# Make this machine able to build and run both images: a running docker daemon and qemu registered in
# binfmt_misc for arm64 (and arm, for the armv7 attempt). Idempotent; needs root for what is missing.
set -euo pipefail
. "$(dirname "$0")/common.sh"
mkdir -p "$CASSAVA_BUILD_CACHE"

if ! "$DOCKER" info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "docker daemon not reachable and not root: start dockerd yourself"
  command -v dockerd >/dev/null || die "dockerd not installed (apt-get install docker.io)"
  say "starting dockerd (log: $CASSAVA_BUILD_CACHE/dockerd.log)"
  # setsid: the daemon outlives this script and the test session that called it.
  setsid dockerd >>"$CASSAVA_BUILD_CACHE/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
  "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not come up in 60 s, see $CASSAVA_BUILD_CACHE/dockerd.log"
fi

binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/register" ]; then
  [ "$(id -u)" = 0 ] || die "binfmt_misc not mounted and not root"
  mount -t binfmt_misc binfmt_misc "$binfmt"
fi
for arch in aarch64 arm; do
  if [ ! -e "$binfmt/qemu-$arch" ]; then
    conf=/usr/lib/binfmt.d/qemu-$arch.conf
    [ -f "$conf" ] || die "$conf missing (apt-get install qemu-user-static)"
    [ "$(id -u)" = 0 ] || die "qemu-$arch not registered in binfmt_misc and not root"
    # The F flag (in Debian's line) opens the interpreter now, so it also works inside containers.
    grep -v '^#' "$conf" | head -n1 > "$binfmt/register"
    say "registered qemu-$arch in binfmt_misc"
  fi
done
say "docker and qemu ready (cache: $CASSAVA_BUILD_CACHE)"
