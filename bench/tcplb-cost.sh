#!/usr/bin/env bash
# CPU cost per request of lbd's balancer and of haproxy (mode tcp), on the
# keep-alive HTTPS workload of bench/tcplb-vs-haproxy.sh (wrk through the
# proxy to nginx TLS backends), counted rather than timed:
#
#   instructions/request  valgrind --tool=callgrind on the proxy, collection
#                         switched on only while wrk runs
#   syscalls/request      strace -c -f on every thread of the proxy, attached
#                         only while wrk runs (the proxy runs at full speed
#                         otherwise, so futex and epoll counts are real)
#   CPU/request (cpu)     the proxy at full speed, nothing attached: user and
#                         system CPU microseconds and context switches
#                         (voluntary + involuntary, every thread) per
#                         request, from /proc before and after wrk (lbd: its
#                         worker process, where the data path runs). Time,
#                         not a count: read it on a quiet machine.
#
# Both figures hold on a busy machine (they count work, not time), which is
# why they, and not req/s, guide the optimisation of the data path.
#
#   bench/tcplb-cost.sh                      # both proxies, both tools
#   PROXIES=lbd TOOLS=strace DUR=5 LBD=target/release/lbd bench/tcplb-cost.sh
#
# DUR       seconds of wrk per measurement (default 10)
# PROXIES   "haproxy lbd" (default) or one of them
# TOOLS     "callgrind strace cpu" (default) or any of them
# LBD       lbd binary (default: cargo build --release)
# BASE_PORT first of the 127.0.0.1 ports used (default 27440, 20 ports)
# CONNS     wrk connections (default 50, as the comparison benchmark)
# KEEP=1    keep the work directory (profiles, strace tables, logs)
#
# Needs: valgrind strace haproxy wrk nginx openssl (scripts/install-deps.sh).
set -euo pipefail

DUR=${DUR:-10}
PROXIES=${PROXIES:-"haproxy lbd"}
TOOLS=${TOOLS:-"callgrind strace cpu"}
CONNS=${CONNS:-50}
BASE=${BASE_PORT:-27440}
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib/tcplb-stage.sh
source "$here/bench/lib/tcplb-stage.sh"

for tool in valgrind callgrind_control strace haproxy wrk nginx openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: scripts/install-deps.sh" >&2; exit 2; }
done
if [[ -z ${LBD:-} ]]; then
    (cd "$here" && cargo build --release --quiet --bin lbd)
    LBD=${CARGO_TARGET_DIR:-$here/target}/release/lbd
fi
[[ -x $LBD ]] || { echo "no lbd binary at $LBD" >&2; exit 2; }

NGX=($((BASE + 1)) $((BASE + 2)) $((BASE + 3)))
HA_PORT=$((BASE + 10)) LBD_PORT=$((BASE + 11)) HA_STATS=$((BASE + 19))
IPERF_UNUSED=$((BASE + 12)) # the staged configs name an iperf listener; nothing runs there
ports_free "${NGX[@]}" "$HA_PORT" "$LBD_PORT" "$HA_STATS" "$IPERF_UNUSED" $((BASE + 13)) $((BASE + 14))

stage_workdir
stage_certs
# One nginx worker: the backends' cost is not measured, only the proxy's.
stage_nginx 1 "${NGX[@]}"
# Health checks every hour: their work would be counted per request too.
stage_haproxy_cfg haproxy.cfg "$HA_PORT" $((BASE + 13)) "$IPERF_UNUSED" "$HA_STATS" "$(nproc)" 3600s "${NGX[@]}"
stage_lbd_cfg lbd.yaml lbd "$LBD_PORT" $((BASE + 14)) "$IPERF_UNUSED" 1h "${NGX[@]}"
"$LBD" check -c lbd.yaml >/dev/null
haproxy -c -q -f haproxy.cfg

# wrk PORT SECONDS: prints the number of requests served
wrk_requests() {
    local out
    out=$(timeout $(($2 + 30)) wrk -t2 -c"$CONNS" -d"$2s" "https://127.0.0.1:$1/" 2>&1) || true
    echo "$out" >>"$WORK/wrk.log"
    awk '/requests in/ { print $1 }' <<<"$out"
}
wait_port() { # PORT: until an HTTPS request through it succeeds (bounded)
    local i
    for i in $(seq 1 300); do
        curl -sk --max-time 2 -o /dev/null "https://127.0.0.1:$1/" && return 0
        sleep 0.2
    done
    echo "nothing answers on $1 (logs in $WORK)" >&2
    KEEP=1
    exit 1
}
start_proxy() { # NAME WRAPPER...: starts the proxy under WRAPPER; sets PROXY_PID
    local name=$1
    shift
    case $name in
    haproxy) "$@" haproxy -db -f haproxy.cfg >"$name.log" 2>&1 & ;;
    lbd) RUST_LOG=warn "$@" "$LBD" run -c lbd.yaml >"$name.log" 2>&1 & ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
}
port_of() { [[ $1 == haproxy ]] && echo "$HA_PORT" || echo "$LBD_PORT"; }
stop_proxy() {
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do kill -0 "$PROXY_PID" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$PROXY_PID" 2>/dev/null || true
}

# PID: "utime_ticks stime_ticks context_switches" over its threads.
cpu_counters() {
    local stat ctx
    stat=$(awk '{ sub(/^.*\) /, ""); print $12, $13 }' /proc/"$1"/stat)
    ctx=$(cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }')
    echo "$stat $ctx"
}

declare -A IR REQ_CG SYS REQ_ST TOP US_REQ SYS_REQ CS_REQ
for p in $PROXIES; do
    port=$(port_of "$p")
    if [[ $TOOLS == *callgrind* ]]; then
        start_proxy "$p" valgrind --tool=callgrind --instr-atstart=no \
            --callgrind-out-file="$WORK/callgrind.$p.out"
        wait_port "$port"
        wrk_requests "$port" 2 >/dev/null # warm-up (lazy init, first connects)
        callgrind_control -i on "$PROXY_PID" >/dev/null
        REQ_CG[$p]=$(wrk_requests "$port" "$DUR")
        callgrind_control -i off "$PROXY_PID" >/dev/null
        callgrind_control -d "$PROXY_PID" >/dev/null
        stop_proxy
        IR[$p]=$(cat "$WORK"/callgrind.$p.out* | awk '/^(summary|totals):/ { s += $2 } END { print s + 0 }')
    fi
    if [[ $TOOLS == *strace* ]]; then
        start_proxy "$p"
        wait_port "$port"
        wrk_requests "$port" 2 >/dev/null
        tids=()
        for t in /proc/"$(worker_of "$PROXY_PID")"/task/*; do tids+=(-p "${t##*/}"); done # lbd: its worker
        strace -c -f -o "$WORK/strace.$p.txt" "${tids[@]}" 2>/dev/null &
        st=$!
        sleep 0.5 # attached
        REQ_ST[$p]=$(wrk_requests "$port" "$DUR")
        kill -INT "$st"
        wait "$st" 2>/dev/null || true
        stop_proxy
        # Data lines: % time, seconds, usecs/call, calls, [errors,] syscall.
        SYS[$p]=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" { s += $4 } END { print s + 0 }' "$WORK/strace.$p.txt")
        TOP[$p]=$(awk -v n="${REQ_ST[$p]}" '$1 ~ /^[0-9.]+$/ && $NF != "total" { printf "%s %.2f\n", $NF, $4 / n }' \
            "$WORK/strace.$p.txt" | sort -k2 -nr | head -8 | awk '{ printf "%s%s=%s", sep, $1, $2; sep = " " }')
    fi
    if [[ $TOOLS == *cpu* ]]; then
        start_proxy "$p"
        wait_port "$port"
        wrk_requests "$port" 2 >/dev/null
        dp=$(worker_of "$PROXY_PID")
        read -r u0 s0 c0 < <(cpu_counters "$dp")
        n=$(wrk_requests "$port" "$DUR")
        read -r u1 s1 c1 < <(cpu_counters "$dp")
        stop_proxy
        hz=$(getconf CLK_TCK)
        US_REQ[$p]=$(awk -v a="$u0" -v b="$u1" -v n="$n" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / n }')
        SYS_REQ[$p]=$(awk -v a="$s0" -v b="$s1" -v n="$n" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / n }')
        CS_REQ[$p]=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.3f", (b - a) / n }')
    fi
done

per() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.0f", a / b; else print "-" }'; }
per2() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
echo "# keep-alive HTTPS through the proxy, wrk -t2 -c$CONNS -d${DUR}s, 1 KiB responses; $(nproc) CPUs; lbd $("$LBD" version | head -1)"
printf '| %-8s | %14s | %10s | %12s | %10s | %s\n' proxy "instr/request" "requests" "syscalls/req" requests "top syscalls per request"
printf '|----------|----------------|------------|--------------|------------|------\n'
for p in $PROXIES; do
    printf '| %-8s | %14s | %10s | %12s | %10s | %s\n' "$p" "$(per "${IR[$p]:-}" "${REQ_CG[$p]:-}")" \
        "${REQ_CG[$p]:--}" "$(per2 "${SYS[$p]:-}" "${REQ_ST[$p]:-}")" "${REQ_ST[$p]:--}" "${TOP[$p]:-}"
done
if [[ $TOOLS == *cpu* ]]; then
    echo
    printf '| %-8s | %12s | %12s | %16s\n' proxy "user us/req" "sys us/req" "ctx switches/req"
    printf '|----------|--------------|--------------|-----------------\n'
    for p in $PROXIES; do
        printf '| %-8s | %12s | %12s | %16s\n' "$p" "${US_REQ[$p]:--}" "${SYS_REQ[$p]:--}" "${CS_REQ[$p]:--}"
    done
fi
