#!/usr/bin/env bash
# lbd vs the real kube-proxy (ipvs mode, v1.37.2) in the qemu VM, same run,
# same apiserver, same Services (tests/kube_proxy_bench.rs): full sync, one
# endpoint change to the kernel, CPU seconds and RSS of each, and the ratios.
#   bench/kube-proxy-vs-lbd.sh              # 1000 then 10000 Services x 5
#   SIZES=1000 bench/kube-proxy-vs-lbd.sh   # one size
# env: SIZES, LBD_BENCH_CHANGES (endpoint changes timed per proxy, 3),
#      LBD_BENCH_ORDER (default lbd,kube-proxy,lbd: lbd on an untouched
#      kernel, kube-proxy, lbd after kube-proxy; LBD_BENCH_ORDER=lbd: lbd
#      alone, no ratios, to measure a change to lbd),
#      PROFILE (release; debug to skip the release build: figures then
#      overstate lbd's CPU), VM_MEM (MiB, default 3072 for 1k, 6144 above),
#      VM_TIMEOUT (s, default 7200). Needs bench/kube-peers.sh's binaries.
# Creating objects in the VM is the slow part: ~3 a second one at a time
# under emulation, 16 in flight here. Run on a quiet machine (wall clock).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
sizes=${SIZES:-"1000 10000"}
prof=()
[ "${PROFILE:-release}" = release ] && prof=(--release)
for n in $sizes; do
  mem=${VM_MEM:-$([ "$n" -gt 1000 ] && echo 6144 || echo 3072)}
  echo "=== $n Services (VM_MEM=$mem)"
  LBD_BENCH_SERVICES=$n VM_MEM=$mem VM_TIMEOUT=${VM_TIMEOUT:-7200} \
    VM_KERNELS=6.1 VM_TESTS=kube_proxy_bench \
    scripts/vm-test.sh "${prof[@]}" -- --nocapture 2>&1 | grep --line-buffered -E '^bench|panicked|^vm-test'
done
