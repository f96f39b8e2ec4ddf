#!/usr/bin/env bash
# The whole test suite: what .ci/run calls and what a newcomer runs.
#   scripts/test.sh                 everything (as root: netns, VM, interop)
#   LBD_SKIP_VM=1 scripts/test.sh   without the qemu VM stage
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# One build from a clean tree: incremental compilation's bookkeeping only
# costs here (it pays back on a developer's edit-compile loop, not in CI).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
start=$(date +%s)
stage() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

if [ "$(id -u)" = 0 ]; then
  stage "dependencies"
  scripts/install-deps.sh
fi

# Two slow builds run in the background, niced, where the foreground
# leaves a core idle (one crate compiling, linking, tests that wait on the
# network or on timers): the real kube-apiserver, kube-proxy and etcd
# (bench/kube-peers.sh, ~10 min of two cores from nothing) from the start,
# the fuzz targets (scripts/fuzz-smoke.sh --build-only) once the tests are
# built. Their output is in target/ci/.
mkdir -p target/ci
bg() { # name command...: runs it niced in its own process group; rc in target/ci/name.rc
  local name=$1; shift
  rm -f "target/ci/$name.rc" "target/ci/$name.pgid"
  ( setsid bash -c 'echo $$ >"$0.pgid"; exec nice -n 19 "$@"' "target/ci/$name" "$@" \
      >"target/ci/$name.out" 2>"target/ci/$name.log"
    echo $? >"target/ci/$name.rc" ) </dev/null >/dev/null 2>&1 &
}
await() { # name: waits (an hour at most) for bg name; prints its log; returns its rc
  local name=$1 i
  for ((i = 0; i < 1800; i++)); do [ -f "target/ci/$name.rc" ] && break; sleep 2; done
  cat "target/ci/$name.log"
  [ -f "target/ci/$name.rc" ] || { echo "$name: still running after an hour" >&2; return 1; }
  return "$(cat "target/ci/$name.rc")"
}
# A failed stage must not leave them running.
stop_bg() {
  local f
  for f in target/ci/*.pgid; do
    [ -f "$f" ] && [ ! -f "${f%.pgid}.rc" ] && kill -- -"$(cat "$f")" 2>/dev/null
  done
  return 0
}
trap stop_bg EXIT
bg kube-peers bench/kube-peers.sh

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

stage "build the tests"
cargo test --all-targets --no-run --quiet

fuzz_build=0
if [ -x scripts/fuzz-smoke.sh ]; then
  bg fuzz-build scripts/fuzz-smoke.sh --build-only
  fuzz_build=1
fi

# Every test target but the one that needs the real Kubernetes peers, while
# they build; that one after them.
real_api=proxy_real_apiserver
targets=(--lib --bins --examples --benches)
for t in tests/*.rs; do
  t=$(basename "$t" .rs)
  [ "$t" = "$real_api" ] || targets+=(--test "$t")
done
stage "unit and integration tests"
cargo test "${targets[@]}" --no-fail-fast 2>&1 | tee target/test-output.txt
grep -q "test result" target/test-output.txt

# tests/proxy_real_apiserver.rs and the VM's kube-proxy tests run the real
# peers; without Go those tests skip and say so.
stage "real Kubernetes peers (bench/kube-peers.sh, started in the background)"
rc=0
await kube-peers || rc=$?
case $rc in
  0) export LBD_KUBE_BIN=$(tail -1 target/ci/kube-peers.out) ;;
  3) echo "kube peers skipped: Go not found; the tests that need them skip" ;;
  *) echo "bench/kube-peers.sh failed (rc=$rc)" >&2; exit 1 ;;
esac
stage "tests against the real kube-apiserver ($real_api)"
cargo test --test "$real_api" --no-fail-fast 2>&1 | tee -a target/test-output.txt

if [ -x scripts/vm-test.sh ] && [ "${LBD_SKIP_VM:-0}" != 1 ]; then
  stage "real-kernel tests in the VM (IPVS; kernels 6.1 and 5.10)"
  scripts/vm-test.sh
fi

for extra in tests/packaging.sh tests/demo.sh; do
  if [ -x "$extra" ]; then
    stage "$extra"
    "$extra"
  fi
done
if [ $fuzz_build = 1 ]; then
  stage "scripts/fuzz-smoke.sh (targets built in the background)"
  await fuzz-build || { echo "fuzz targets did not build" >&2; exit 1; }
  scripts/fuzz-smoke.sh
fi
stage "done"
