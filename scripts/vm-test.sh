#!/usr/bin/env bash
# Build the VM test binaries and run each inside a throw-away qemu VM with a
# stock Debian kernel (IPVS, dummy, veth, nlmon), one boot per binary.
# Exit status: the tests'.  Extra arguments go to the test binaries, e.g.
#   scripts/vm-test.sh                 # all VM tests
#   scripts/vm-test.sh -- --nocapture  # show their output
#   VM_TESTS="ipvs_vm" scripts/vm-test.sh   # default: every tests/*_vm.rs
#   VM_TIMEOUT=600 scripts/vm-test.sh  # seconds per VM boot (default 300)
# Needs: qemu-system-x86 busybox-static ipvsadm nftables iproute2 (see
# scripts/install-deps.sh); the kernel .deb is fetched once into
# ${LBD_VM_CACHE:-~/.cache/lbd-vm} with apt-get download.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tests=${VM_TESTS:-$(cd tests && ls *_vm.rs | sed 's/\.rs$//' | tr '\n' ' ')}
targs=()
for t in $tests; do targs+=(--test "$t"); done
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$root/tests/vm/cargo-vm-runner.sh"
start=$(date +%s)
set +e
# --no-fail-fast: one failing (or hung, VM_TIMEOUT) binary must not hide
# the others' results.
cargo test --no-fail-fast "${targs[@]}" "$@"
rc=$?
set -e
echo "vm-test: ${tests} finished in $(( $(date +%s) - start ))s (rc=$rc)" >&2
exit $rc
