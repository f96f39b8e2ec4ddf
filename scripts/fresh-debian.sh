#!/usr/bin/env bash
# Runs the README's first command (`scripts/install-deps.sh &&
# scripts/demo.sh`) as root in a fresh Debian 12 (bookworm) minbase root
# file system, the closest this machine gets to a newcomer's fresh Debian:
# no compiler, no git, no curl, no sudo. Only the Rust toolchain comes from
# the host (the README assumes it installed): ~/.rustup and ~/.cargo are
# bind-mounted. The checkout is a fresh `git clone` of this repository's
# HEAD. Not part of scripts/test.sh (it downloads ~1 GB of packages and
# builds lbd from nothing: 15-25 min on two cores).
#   scripts/fresh-debian.sh            # as root; debootstrap from install-deps.sh
#   KEEP=1 scripts/fresh-debian.sh     # keep the root file system afterwards
# Exit status: the demo's (0 when the failover happened), 2 when the root
# file system could not be made.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "fresh-debian: run as root" >&2; exit 2; }
base=$("$here/old-userland.sh" bookworm) || exit 2
root=$(mktemp -d /var/tmp/lbd-fresh-debian.XXXXXX)
mounts=()
cleanup() {
    local m
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        m=${mounts[i]}
        umount -l "$m" 2>/dev/null || true
    done
    [[ ${KEEP:-0} == 1 ]] && { echo "fresh-debian: kept $root" >&2; return; }
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT
bind() { mkdir -p "$root$2"; mount --bind "$1" "$root$2"; mounts+=("$root$2"); }

echo "fresh-debian: copying bookworm minbase to $root" >&2
cp -a "$base/." "$root/"
# The root a mount point of its own, as on a real host: `ip netns exec`
# makes / a slave mount (EINVAL on a plain directory).
mount --bind "$root" "$root"; mounts+=("$root")
rm -f "$root/.lbd-complete"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A chroot has no init: services that packages would start must not start
# here (they would listen in the host's network namespace). On a real host
# they start, and install-deps.sh stops the ones that matter.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /sys /sys
bind /dev /dev
mount -t devpts devpts "$root/dev/pts" -o newinstance 2>/dev/null && mounts+=("$root/dev/pts") || true
mount -t tmpfs tmpfs "$root/run"; mounts+=("$root/run")
mount -t tmpfs tmpfs "$root/tmp"; mounts+=("$root/tmp")
bind "$HOME/.rustup" /root/.rustup
bind "$HOME/.cargo" /root/.cargo
git clone -q "$repo" "$root/root/lbd"

echo "fresh-debian: in the chroot: scripts/install-deps.sh && scripts/demo.sh" >&2
start=$(date +%s)
rc=0
chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd /root/lbd && scripts/install-deps.sh && scripts/demo.sh' || rc=$?
echo "fresh-debian: exit $rc after $(( $(date +%s) - start ))s" >&2
exit "$rc"
