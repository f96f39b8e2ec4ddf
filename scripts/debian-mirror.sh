#!/usr/bin/env bash
# Prints the Debian archive URI this machine's apt uses, for the scripts
# that fetch from Debian outside the host's apt (tests/vm/run-in-vm.sh's
# kernels, scripts/old-userland.sh's debootstrap):
#   scripts/debian-mirror.sh                   # e.g. http://deb.debian.org/debian
#   scripts/debian-mirror.sh debian-security   # e.g. http://deb.debian.org/debian-security
# The first URI in /etc/apt/sources.list{,.d/*.list,.d/*.sources} whose
# path ends in /debian (or /ARG); else deb.debian.org's.
set -euo pipefail
name=${1:-debian}
uri=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
             /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
       grep -oE "(https?|file)://[^ ]*/$name/?( |\$)" | head -n1 | tr -d ' ' | sed 's#/$##' || true)
echo "${uri:-http://deb.debian.org/$name}"
