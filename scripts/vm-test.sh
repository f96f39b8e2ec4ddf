#!/usr/bin/env bash
# Build the VM test binaries and run each inside a throw-away qemu VM with a
# stock Debian cloud kernel (IPVS, dummy, veth, nlmon), one boot per binary
# and kernel. Exit status: 0 only if every kernel's tests passed.  Extra
# arguments go to the test binaries, e.g.
#   scripts/vm-test.sh                 # every kernel of VM_KERNELS, its list
#   scripts/vm-test.sh -- --nocapture  # show their output
#   VM_KERNELS=6.1 scripts/vm-test.sh  # one kernel only
#   VM_KERNELS=5.10 VM_TESTS_5_10=ipvs_vm scripts/vm-test.sh
#   VM_TIMEOUT=600 scripts/vm-test.sh  # seconds per VM boot (default 300)
# Kernels (LBD_VM_KERNEL inside, see tests/vm/README.md):
#   6.1   Debian 12 bookworm's cloud kernel; runs VM_TESTS_6_1, default
#         VM_TESTS, default every tests/*_vm.rs
#   5.10  Debian 11 bullseye's cloud kernel (no IFA_PROTO: lbd's address
#         ownership without kernel help); runs VM_TESTS_5_10, default
#         DEFAULT_5_10 below: the tests that matter on an older kernel, not
#         all of them, since every binary costs one more boot
# VM_KERNELS defaults to "6.1 5.10". Needs: qemu-system-x86 busybox-static
# ipvsadm nftables iproute2 (scripts/install-deps.sh); each kernel .deb is
# fetched once from Debian's archive into ${LBD_VM_CACHE:-~/.cache/lbd-vm}.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DEFAULT_5_10="guest_vm ipvs_vm"
all=$(cd tests && ls *_vm.rs | sed 's/\.rs$//' | tr '\n' ' ')
kernels=${VM_KERNELS:-6.1 5.10}
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$root/tests/vm/cargo-vm-runner.sh"
start=$(date +%s)
rc=0
summary=()
for k in $kernels; do
  var=VM_TESTS_${k//./_}
  case $k in
    6.1) tests=${!var:-${VM_TESTS:-$all}} ;;
    5.10) tests=${!var:-${VM_TESTS:-$DEFAULT_5_10}} ;;
    *) echo "vm-test: unknown kernel $k (6.1 or 5.10)" >&2; exit 2 ;;
  esac
  targs=()
  for t in $tests; do targs+=(--test "$t"); done
  echo "=== vm-test: kernel $k: $tests" >&2
  t0=$(date +%s)
  set +e
  # --no-fail-fast: one failing (or hung, VM_TIMEOUT) binary must not hide
  # the others' results.
  LBD_VM_KERNEL=$k cargo test --no-fail-fast "${targs[@]}" "$@"
  krc=$?
  set -e
  [ $krc = 0 ] || rc=$krc
  summary+=("kernel $k: $(echo $tests) in $(( $(date +%s) - t0 ))s (rc=$krc)")
done
for s in "${summary[@]}"; do echo "vm-test: $s" >&2; done
echo "vm-test: finished in $(( $(date +%s) - start ))s (rc=$rc)" >&2
exit $rc
