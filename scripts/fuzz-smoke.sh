#!/usr/bin/env bash
# Bounded fuzzing with libFuzzer (cargo-fuzz) on the stable toolchain, for
# CI and by hand. Targets (fuzz/fuzz_targets/): vrrp_decode (the VRRP codec),
# vrrp_input (a received datagram through the driver's input path into the
# state machine), ipvs_decode (IPVS generic netlink), conntrack_decode
# (ctnetlink, the stale-flow cleanup's dump), config_parse and
# config_reload (old and new config text, as a reload parses them).
#
#   scripts/fuzz-smoke.sh                        # every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=60 FUZZ_TARGETS="vrrp_input" scripts/fuzz-smoke.sh
#   FUZZ_RUNS=1000000 scripts/fuzz-smoke.sh      # a number of inputs instead of a time
#   scripts/fuzz-smoke.sh --build-only           # install cargo-fuzz, build, stop
#
# Stable, not nightly: cargo-fuzz's coverage instrumentation is stable -C
# flags (sancov); RUSTC_BOOTSTRAP=1 lets stable cargo and rustc take the few
# -Z options it passes. No sanitizer (-s none: ASan needs nightly's
# -Zsanitizer and std rebuilt; the code fuzzed here is safe Rust); -a keeps
# debug assertions and overflow checks on, so an overflow is a crash too.
# cargo-fuzz is installed (pinned, `cargo install --locked`, ~3 min once per
# machine, into ~/.cargo/bin) when missing. The first build of the targets
# is a release build of lbd and its dependencies with instrumentation.
# cargo-fuzz makes that one codegen unit per crate (the fastest fuzzing,
# 15+ minutes to build on two cores, most of it one core compiling lbd);
# FUZZ_CODEGEN_UNITS (default 16) trades some speed per input for a build
# that uses every core, which a bounded smoke run gains more from
# (FUZZ_CODEGEN_UNITS=1 for long runs). Its target directory is kept outside the checkout,
# ${FUZZ_TARGET_DIR:-~/.cache/lbd-fuzz/target}, so a fresh clone (CI)
# rebuilds only lbd itself.
#
# Each target starts from fuzz/seeds/TARGET (committed: real captures and
# configs) and fuzz/corpus/TARGET (what earlier runs found; not committed).
# Prints every target's execution count, "fuzz: N passed, N failed" at the
# end, and exits 1 when a target crashed (input left in fuzz/artifacts/) or
# ran no input at all.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
CARGO_FUZZ_VERSION=0.13.2
secs=${FUZZ_SECONDS:-20}
runs=${FUZZ_RUNS:-}
export RUSTC_BOOTSTRAP=1
have=$(cargo fuzz --version 2>/dev/null || true)
if [[ $have != *"$CARGO_FUZZ_VERSION"* ]]; then
  echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --locked; once)"
  cargo install --locked --version "=$CARGO_FUZZ_VERSION" cargo-fuzz
fi
target_dir=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lbd-fuzz/target}
triple=$(rustc -vV | sed -n 's/^host: //p')
start=$(date +%s)
cargo fuzz build -O -a -s none --codegen-units "${FUZZ_CODEGEN_UNITS:-16}" --target-dir "$target_dir"
echo "fuzz-smoke: targets built in $(( $(date +%s) - start ))s"
[[ ${1:-} == --build-only ]] && exit 0
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
if [[ -n $runs ]]; then bound=(-runs="$runs"); else bound=(-max_total_time="$secs"); fi
passed=0 failed=0
report=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dirs=("corpus/$t")
  [[ -d seeds/$t ]] && dirs+=("seeds/$t")
  log=$(mktemp)
  rc=0
  t0=$(date +%s)
  # The binary itself, not `cargo fuzz run`: no second cargo build per
  # target. -timeout: one input running 10 s is a hang, reported as a crash.
  "$target_dir/$triple/release/$t" "${bound[@]}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  took=$(( $(date +%s) - t0 ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 || true)
  line="$t: ${execs:-0} inputs in ${took}s (${cov:-cov: ?}, corpus $(ls "corpus/$t" | wc -l))"
  if [[ $rc != 0 ]]; then
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -n 20 || true
    tail -n 40 "$log"
    report+=("FAILED  $line: exit $rc")
    failed=$((failed + 1))
  elif [[ -z $execs || $execs == 0 ]]; then
    tail -n 20 "$log"
    report+=("FAILED  $line: ran no input")
    failed=$((failed + 1))
  else
    report+=("ok      $line")
    passed=$((passed + 1))
  fi
  echo "fuzz-smoke: ${report[-1]}"
  rm -f "$log"
done
echo
printf 'fuzz-smoke: %s\n' "${report[@]}"
echo "fuzz: $passed passed, $failed failed"
[[ $failed == 0 ]]
