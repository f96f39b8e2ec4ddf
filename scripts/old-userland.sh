#!/usr/bin/env bash
# Prints the path of a Debian root file system of SUITE (default bullseye,
# Debian 11: glibc 2.31, dpkg 1.20), made with `debootstrap --variant=minbase`
# once per machine and cached in ${LBD_ROOTFS_CACHE:-~/.cache/lbd-rootfs}/SUITE.
# tests/packaging.sh installs and runs the packaged binary in it: a userland
# older than the build host's.
#   scripts/old-userland.sh [SUITE]   # as root; debootstrap from install-deps.sh
#   LBD_ROOTFS_REFRESH=1 scripts/old-userland.sh   # make it again
# The first run takes about 2 minutes on a loaded 2-core machine (~215 MB,
# from the mirror the host's apt uses: scripts/debian-mirror.sh); then none.
# Nothing in it is started: it is only chrooted into.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-bullseye}
cache=${LBD_ROOTFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lbd-rootfs}
dir=$cache/$suite
mkdir -p "$cache"
exec 9>"$cache/.lock-$suite"   # one builder at a time per suite
flock 9
if [[ ! -e $dir/.lbd-complete || ${LBD_ROOTFS_REFRESH:-0} == 1 ]]; then
    if [[ $(id -u) != 0 ]]; then echo "old-userland: debootstrap needs root" >&2; exit 1; fi
    command -v debootstrap >/dev/null ||
        { echo "old-userland: debootstrap missing (scripts/install-deps.sh)" >&2; exit 1; }
    mirror=$("$here/debian-mirror.sh")
    log=$cache/debootstrap-$suite.log
    rm -rf "$dir" "$dir.tmp"
    start=$(date +%s)
    echo "old-userland: debootstrap --variant=minbase $suite from $mirror (once per machine)" >&2
    if ! debootstrap --variant=minbase "$suite" "$dir.tmp" "$mirror" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -rf "$dir.tmp"
        echo "old-userland: debootstrap failed (log: $log)" >&2
        exit 1
    fi
    # Made whole, then moved into place: an interrupted run leaves no
    # half-made root behind to be taken as done.
    mv "$dir.tmp" "$dir"
    echo "$suite made in $(( $(date +%s) - start ))s on $(date -u +%F)" >"$dir/.lbd-complete"
    echo "old-userland: $(cat "$dir/.lbd-complete")" >&2
fi
echo "$dir"
