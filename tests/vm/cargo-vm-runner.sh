#!/usr/bin/env bash
# Cargo target runner: cargo invokes  cargo-vm-runner.sh <test-binary> [args...]
# Copies the binary (plus VM_RUNNER_FILES, space-separated paths) into a fresh
# dir and runs it as /payload/<name> inside the IPVS-capable VM (one boot per
# test binary), with LBD_IN_VM=1 so the VM tests know they may run.
# A test binary that runs lbd (env!("CARGO_BIN_EXE_lbd"), found by its path
# in the binary) gets the lbd of the same build at that path in the VM, its
# debug info stripped (257 -> 57 MB of a debug build: the initramfs lives
# in the VM's memory). The kernel is run-in-vm.sh's LBD_VM_KERNEL
# (scripts/vm-test.sh sets it per stage).
# Use it only for the VM test targets, e.g. (scripts/vm-test.sh does this)
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/tests/vm/cargo-vm-runner.sh \
#     cargo test --test ipvs_vm
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1; shift
d=$(mktemp -d "${TMPDIR:-/tmp}/vmrun.XXXXXX")
trap 'rm -rf "$d" "$d.lbd"' EXIT
cp "$bin" "$d/"
for f in ${VM_RUNNER_FILES:-}; do cp -r "$f" "$d/"; done
args=(-m "${VM_MODULES:-ip_vs,ip_vs_rr,ip_vs_wrr,ip_vs_sh,nf_conntrack,dummy,veth}" -e LBD_IN_VM=1)
lbd_bin=$(cd "$(dirname "$bin")/.." && pwd)/lbd
if [ -x "$lbd_bin" ] && grep -qF "$lbd_bin" "$bin"; then
  objcopy --strip-debug "$lbd_bin" "$d.lbd"
  args+=(-f "$d.lbd=$lbd_bin")
fi
# Test binaries named kube_*: the real etcd, kube-apiserver and kube-proxy
# (bench/kube-peers.sh's cache, ~200 MB) go into the payload, with the
# iptables and ipset that kube-proxy's ipvs mode runs, and more memory.
# Without the binaries the tests skip inside the VM and say why.
case $(basename "$bin") in
  kube_*)
    kb=${LBD_KUBE_BIN:-$("$here/../../bench/kube-peers.sh" --print 2>/dev/null || true)}
    if [ -n "$kb" ] && [ -d "$kb" ]; then
      mkdir "$d/kube-bin"
      cp "$kb"/etcd "$kb"/etcdctl "$kb"/kube-apiserver "$kb"/kube-proxy "$d/kube-bin/"
      args+=(-e LBD_KUBE_BIN=/payload/kube-bin)
    fi
    export VM_MEM=${VM_MEM:-3072}
    # etcd + kube-apiserver start in ~85 s under TCG, more on a busy host.
    VM_TIMEOUT=${VM_TIMEOUT:-900}
    export VM_EXTRA_BINS="${VM_EXTRA_BINS:-} ipset iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore"
    [ -d /usr/lib/x86_64-linux-gnu/xtables ] &&
      export VM_EXTRA_FILES="${VM_EXTRA_FILES:-} /usr/lib/x86_64-linux-gnu/xtables"
    ;;
esac
# A hung test must not eat CI's budget: 5 minutes per boot unless told.
args+=(-t "${VM_TIMEOUT:-300}")
for v in RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_TEST_NOCAPTURE RUST_MIN_STACK LBD_VM_CAPTURE LBD_DIFF_SEED LBD_DIFF_RANDOM LBD_BENCH_SERVICES LBD_BENCH_CHANGES LBD_BENCH_ORDER; do
  [ -n "${!v-}" ] && args+=(-e "$v=${!v}")
done
set +e
"${VM_RUN:-$here/run-in-vm.sh}" "${args[@]}" "$d" "./$(basename "$bin")" "$@"
exit $?
