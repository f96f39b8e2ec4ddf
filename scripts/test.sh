#!/usr/bin/env bash
# The whole test suite: what .ci/run calls and what a newcomer runs.
#   sudo scripts/test.sh            everything (root: netns, VM, interop)
#   LBD_SKIP_VM=1 scripts/test.sh   without the qemu VM stage
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
stage() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

if [ "$(id -u)" = 0 ]; then
  stage "dependencies"
  scripts/install-deps.sh
fi

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

# The real kube-apiserver, kube-proxy and etcd (tests/proxy_real_apiserver.rs
# and the VM's kube-proxy tests): built once from their Go modules and cached;
# without Go those tests skip and say so.
stage "real Kubernetes peers (bench/kube-peers.sh)"
set +e
kube_bin=$(bench/kube-peers.sh | tail -1)
rc=$?
set -e
case $rc in
  0) export LBD_KUBE_BIN=$kube_bin ;;
  3) echo "kube peers skipped: Go not found; the tests that need them skip" ;;
  *) echo "bench/kube-peers.sh failed (rc=$rc)" >&2; exit 1 ;;
esac

stage "unit and integration tests"
cargo test --all-targets --no-fail-fast 2>&1 | tee target/test-output.txt
grep -q "test result" target/test-output.txt

if [ -x scripts/vm-test.sh ] && [ "${LBD_SKIP_VM:-0}" != 1 ]; then
  stage "real-kernel tests in the VM (IPVS; kernels 6.1 and 5.10)"
  scripts/vm-test.sh
fi

for extra in tests/packaging.sh tests/demo.sh scripts/fuzz-smoke.sh; do
  if [ -x "$extra" ]; then
    stage "$extra"
    "$extra"
  fi
done
stage "done"
