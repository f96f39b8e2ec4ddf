#!/usr/bin/env bash
# Proxy sync benchmark (examples/ipvs_bench.rs): full sync, one endpoint
# change and a no-op resync at 1k and 10k Services x 5 endpoints, with RSS.
#   bench/ipvs-sync.sh          # host: in-memory IPVS (FakeIpvs)
#   bench/ipvs-sync.sh vm       # VM: real IPVS over netlink (NetlinkIpvs),
#                               # real kube-ipvs0, in qemu (emulated: slow)
# One JSON line per run on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -q --release --example ipvs_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples/ipvs_bench
sizes=${SIZES:-"1000 10000"}
if [ "${1:-host}" = vm ]; then
  d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
  cp "$bin" "$d/"
  cmd=""
  for n in $sizes; do cmd="$cmd ./ipvs_bench $n 5 netlink;"; done
  VM_MEM=${VM_MEM:-1024} tests/vm/run-in-vm.sh -t "${VM_TIMEOUT:-1800}" "$d" "$cmd"
else
  for n in $sizes; do "$bin" "$n" 5 fake; done
fi
