#!/usr/bin/env bash
# Runs the HA demo (scripts/demo.sh) in its short mode and fails if the
# failover does not happen; then interrupts a second run and checks that it
# leaves no namespace, process or temporary directory behind.
#
#   tests/demo.sh                          # as root; builds lbd (debug) first
#   LBD_BIN=target/debug/lbd tests/demo.sh
#   DEMO_REQUIRE_VRRP=1 tests/demo.sh      # fail when lbd runs no VRRP
#
# DEMO_REQUIRE_VRRP defaults to 1 as soon as src/app.rs wires the VRRP
# speaker (mentions `vrrp::`), so the demo cannot quietly fall back to the
# balancer-only failover once VRRP has landed.
# Ends with "N passed, N failed, N skipped".
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
passed=0 failed=0 skipped=0
log=$(mktemp /tmp/lbd-demotest.XXXXXX)
trap 'rm -f "$log"' EXIT
pass() { passed=$((passed + 1)); printf 'ok      %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAILED  %s\n' "$1"; [[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/        /'; return 0; }
finish() { printf '\n%d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"; [[ $failed == 0 ]]; exit $?; }

if [[ $(id -u) != 0 ]]; then
    skipped=1
    echo "skipped demo: needs root for network namespaces (CI runs as root)"
    finish
fi
for tool in ip openssl socat curl; do
    command -v "$tool" >/dev/null || { fail "demo: $tool is missing (scripts/install-deps.sh)"; finish; }
done

if [[ -z ${LBD_BIN:-} ]]; then
    (cd "$repo" && cargo build --bin lbd >&2) || { fail "cargo build"; finish; }
    LBD_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/lbd
fi
export LBD_BIN
if [[ -z ${DEMO_REQUIRE_VRRP:-} ]]; then
    if grep -q 'vrrp::' "$repo/src/app.rs"; then DEMO_REQUIRE_VRRP=1; else DEMO_REQUIRE_VRRP=0; fi
fi
export DEMO_REQUIRE_VRRP

leftovers() { # pid of a demo run: what it left behind
    ip netns list | grep -o "^lbdd-$1-[a-z0-9]*" || true
}

# 1. The whole demo, short mode: exit 0 only if the failover happened.
start=$(date +%s)
DEMO_FAST=1 timeout 180 "$repo/scripts/demo.sh" >"$log" 2>&1 &
demo=$!
wait "$demo"
rc=$?
secs=$(( $(date +%s) - start ))
if [[ $rc == 0 ]]; then
    pass "demo ran end to end in ${secs}s (exit 0)"
else
    fail "demo exit status $rc after ${secs}s" "$(tail -n 60 "$log")"
fi
if grep -q "has no VRRP speaker yet" "$log"; then
    echo "note: lbd runs no VRRP instance: the demo showed the balancer's failover only"
    grep -q "^   client: " "$log" && pass "balancer failover: $(grep -m1 '^   client: ' "$log" | sed 's/^ *//')" \
        || fail "balancer failover: no client outage line" "$(tail -n 30 "$log")"
else
    grep -q "took over after" "$log" && pass "VRRP failover: $(grep -m1 'took over after' "$log" | sed 's/^ *//')" \
        || fail "VRRP failover: no new master" "$(tail -n 60 "$log")"
    grep -q "it gives up the VIP" "$log" && [[ $(grep -c "took over after" "$log") -ge 2 ]] \
        && pass "graceful stop hands the VIP over" \
        || fail "graceful stop: no second takeover" "$(tail -n 40 "$log")"
fi
left=$(leftovers "$demo")
[[ -z $left ]] && pass "demo removed its namespaces" || fail "namespaces left behind" "$left"

# 2. Interrupted: Ctrl-C while the client runs; everything must go.
# Emptied here, not by the background redirection: the loop below must not
# read the first run's lines before the second run truncates the file.
: >"$log"
DEMO_FAST=1 timeout 120 "$repo/scripts/demo.sh" >"$log" 2>&1 &
demo=$!
start=$(date +%s)
for ((i = 0; i < 300; i++)); do
    grep -q "the client gets 200" "$log" && break
    kill -0 "$demo" 2>/dev/null || break
    sleep 0.1
done
if grep -q "the client gets 200" "$log"; then
    workdir=$(sed -n 's/.*work directory (logs): //p' "$log" | head -n1)
    kill -INT "$demo"
    wait "$demo"
    rc=$?
    left=$(leftovers "$demo")
    procs=$( [[ -n $workdir ]] && pgrep -f "$workdir/" || true)
    if [[ -z $left && -z $procs && $rc != 0 ]]; then
        pass "interrupted demo cleaned up (exit $rc, no namespace or process left)"
    else
        fail "interrupted demo left: namespaces [$left] processes [$procs] exit $rc"
    fi
    if [[ -n $workdir && ! -d $workdir ]]; then pass "interrupted demo removed $workdir"; else fail "work directory [$workdir] left behind"; fi
else
    kill "$demo" 2>/dev/null
    wait "$demo"
    rc=$?
    fail "second demo run never reached the client loop (exit $rc after $(( $(date +%s) - start ))s)" \
        "$(tail -n 30 "$log")"
fi
finish
