#!/usr/bin/env bash
# Bounded fuzzing of the decoders (VRRP packets, IPVS netlink, config files)
# with libFuzzer, for CI: each target runs FUZZ_SECONDS (default 20) from the
# corpus it builds up in fuzz/corpus/. Needs the nightly toolchain (for the
# coverage instrumentation); cargo-fuzz is installed if missing.
# A crash fails the run and leaves the input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-20}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz-smoke: no nightly toolchain here; skipped (rustup toolchain install nightly)"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
# No sanitizer: the targets check panics, and Rust code here is safe outside
# sys/; this keeps the build a third cheaper.
cargo +nightly fuzz build -O -s none
for t in $(cargo +nightly fuzz list); do
  echo "fuzz-smoke: $t for ${secs}s"
  mkdir -p "corpus/$t"
  log=$(mktemp)
  rc=0
  cargo +nightly fuzz run -O -s none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1 || rc=$?
  grep -E "DONE|Done [0-9]+ runs|panicked|ERROR|SUMMARY" "$log" | tail -5 || true
  if [ "$rc" != 0 ]; then tail -40 "$log"; rm -f "$log"; echo "fuzz-smoke: $t FAILED"; exit 1; fi
  rm -f "$log"
done
echo "fuzz-smoke: ok"
