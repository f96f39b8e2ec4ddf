#!/usr/bin/env bash
# lbd's TCP balancer against Debian's haproxy (mode tcp), side by side in one
# run, on loopback only (127.0.0.1). See docs/benchmarks.md for how to read
# the figures.
#
#   bench/tcplb-vs-haproxy.sh            # builds lbd --release if needed
#   DUR=10 PIN=0 BASE_PORT=26440 LBD=/path/to/lbd bench/tcplb-vs-haproxy.sh
#
# DUR        seconds per measurement (default 10; the whole run is ~17*DUR+15 s)
# PIN        1: proxies on CPU 1, backends and load generators on CPU 0,
#            haproxy nbthread 1 and one tokio worker for lbd; 0 (default): no
#            pinning, haproxy nbthread = nproc, lbd's default runtime.
# BASE_PORT  first of the 127.0.0.1 ports used (BASE_PORT .. BASE_PORT+39)
# LBD        lbd binary (default: cargo build --release, target/release/lbd)
# NICE       nice value for the whole benchmark (e.g. -10 as root) so that
#            other work on the machine disturbs the figures less; default 0
# RUNS       N > 1: N whole runs, then one table of the medians (each run's
#            table and figures stay in /tmp/lbd-bench-runs.*); default 1
# VS         haproxy: a second haproxy (same config) in lbd's column, to see
#            the noise between two identical proxies (ratios should be 1.00);
#            default lbd
#
# Needs (Debian): haproxy iperf3 wrk nginx-light (or nginx) openssl jq curl
# util-linux (taskset). Run as root or as a user who may bind those ports.
set -euo pipefail

DUR=${DUR:-10}
PIN=${PIN:-0}
RUNS=${RUNS:-1}
VS=${VS:-lbd}
[[ $VS == lbd || $VS == haproxy ]] || { echo "VS is lbd or haproxy" >&2; exit 2; }
BASE=${BASE_PORT:-26440}
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib/tcplb-stage.sh
source "$here/bench/lib/tcplb-stage.sh"

for tool in haproxy iperf3 wrk nginx openssl jq curl taskset; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install -y haproxy iperf3 wrk nginx-light openssl jq curl util-linux" >&2
        exit 2
    }
done

if [[ -z ${LBD:-} ]]; then
    (cd "$here" && cargo build --release --quiet --bin lbd)
    LBD=${CARGO_TARGET_DIR:-$here/target}/release/lbd
fi
[[ -x $LBD ]] || { echo "no lbd binary at $LBD" >&2; exit 2; }
if [[ ${NICE:-0} != 0 ]]; then renice -n "$NICE" -p $$ >/dev/null; fi # children inherit it
T_START=$SECONDS # the build above is not counted

# ---- RUNS > 1: the whole benchmark RUNS times, then the medians ---------------
if ((RUNS > 1)); then
    runs_dir=$(mktemp -d /tmp/lbd-bench-runs.XXXXXX)
    for n in $(seq 1 "$RUNS"); do
        echo "# run $n of $RUNS" >&2
        RUNS=1 RESULTS_OUT=$runs_dir/run$n.vals LBD=$LBD "$0" >"$runs_dir/run$n.txt" ||
            { echo "run $n failed (tables in $runs_dir)" >&2; exit 1; }
    done
    # "key value" lines, one file per run: the median of the numeric values.
    cat "$runs_dir"/run*.vals | awk '
        $2 ~ /^[0-9.]+$/ { v[$1] = v[$1] " " $2; next }
        { if (!($1 in v)) v[$1] = "" }
        END {
            for (k in v) {
                n = split(v[k], a, " ")
                if (n == 0) { print k, "-"; continue }
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
                    if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
                print k, (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
        }' >"$runs_dir/median.vals"
    echo "# medians of $RUNS runs (each run's table in $runs_dir)"
    grep -h '^# machine\|^# haproxy' "$runs_dir/run1.txt"
    # Each run's main figures: the spread behind the medians.
    for n in $(seq 1 "$RUNS"); do
        sort "$runs_dir/run$n.vals" | awk -v n="$n" '$1 ~ /^(lbd|ha)_(ka|nc|up|down)$/ { f = f " " $1 "=" $2 }
            END { print "# run " n ":" f }'
    done
    REPLAY=$runs_dir/median.vals RUNS=1 VS=$VS LBD=$LBD "$0"
    exit
fi

declare -A R
if [[ -n ${REPLAY:-} ]]; then # RUNS > 1: the table of the medians only
    while read -r k v; do R[$k]=$v; done <"$REPLAY"
    RSS_LBD=${R[rss_lbd]} RSS_LBDU=${R[rss_lbdu]} RSS_HA=${R[rss_ha]}
    PSS_LBD=${R[pss_lbd]:-} PSS_LBDU=${R[pss_lbdu]:-} PSS_HA=${R[pss_ha]:-}
else # the run itself, down to the table (not indented: one long block)
# ---- ports (all on 127.0.0.1) ----------------------------------------------
NGX=($((BASE + 1)) $((BASE + 2)) $((BASE + 3))) # three TLS backends (one nginx)
IPERF_DIRECT=$((BASE + 5))
IPERF_HA=$((BASE + 6))       # one iperf3 server per proxy: a health check of
IPERF_LBD=$((BASE + 7))      # one proxy never lands in another proxy's test
IPERF_LBDU=$((BASE + 8))
HA_HTTPS=$((BASE + 10)) HA_IPERF=$((BASE + 11)) HA_STATS=$((BASE + 19))
HA2_STATS=$((BASE + 29)) # VS=haproxy: the second haproxy, on lbd's ports
LBD_HTTPS=$((BASE + 20)) LBD_IPERF=$((BASE + 21))
LBDU_HTTPS=$((BASE + 30)) LBDU_IPERF=$((BASE + 31))
ports_free "${NGX[@]}" $IPERF_DIRECT $IPERF_HA $IPERF_LBD $IPERF_LBDU $HA_HTTPS $HA_IPERF \
    $HA_STATS $HA2_STATS $LBD_HTTPS $LBD_IPERF $LBDU_HTTPS $LBDU_IPERF

# ---- work directory: everything started here dies with the script ----------
stage_workdir # bench/lib/tcplb-stage.sh: WORK, PIDS, the clean-up on exit
# The whole run is bounded: a stuck tool cannot keep it alive.
LIMIT=$((17 * DUR + 120))
(
    trap 'kill $sp 2>/dev/null; exit 0' TERM
    sleep "$LIMIT" &
    sp=$!
    wait $sp
    echo "watchdog: over ${LIMIT}s, stopping" >&2
    kill -TERM $$
) &
WATCHDOG=$!

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true # MAXCONN (the stage's) fits in it
NCPU=$(nproc)
if [[ $PIN == 1 ]]; then
    (( NCPU >= 2 )) || { echo "PIN=1 needs 2 CPUs" >&2; exit 2; }
    PROXY_CPU=(taskset -c 1) LOAD_CPU=(taskset -c 0) HA_THREADS=1 NGX_WORKERS=1
else
    PROXY_CPU=() LOAD_CPU=() HA_THREADS=$NCPU NGX_WORKERS=$NCPU
fi
CLK_TCK=$(getconf CLK_TCK)

# ---- certificates, and one nginx serving TLS on three ports (the backends) ---
stage_certs
stage_nginx "$NGX_WORKERS" "${NGX[@]}"

# ---- iperf3 servers ------------------------------------------------------------
for p in $IPERF_DIRECT $IPERF_HA $IPERF_LBD $IPERF_LBDU; do
    "${LOAD_CPU[@]}" iperf3 -s -B 127.0.0.1 -p "$p" >"iperf3-$p.log" 2>&1 &
    PIDS+=($!)
done

# ---- haproxy ---------------------------------------------------------------------
stage_haproxy_cfg haproxy.cfg "$HA_HTTPS" "$HA_IPERF" "$IPERF_HA" "$HA_STATS" "$HA_THREADS" 1s "${NGX[@]}"
haproxy -c -q -f haproxy.cfg
"${PROXY_CPU[@]}" haproxy -db -f haproxy.cfg >haproxy.log 2>&1 &
HA_PID=$!
PIDS+=($HA_PID)

# ---- lbd: splice (default) and user-space copy -------------------------------
stage_lbd_cfg lbd.yaml lbd "$LBD_HTTPS" "$LBD_IPERF" "$IPERF_LBD" 1s "${NGX[@]}"
stage_lbd_cfg lbdu.yaml lbdu "$LBDU_HTTPS" "$LBDU_IPERF" "$IPERF_LBDU" 1s "${NGX[@]}"
"$LBD" check -c lbd.yaml >/dev/null
if [[ $VS == haproxy ]]; then # lbd's column: a second haproxy
    stage_haproxy_cfg haproxy2.cfg "$LBD_HTTPS" "$LBD_IPERF" "$IPERF_LBD" "$HA2_STATS" "$HA_THREADS" 1s "${NGX[@]}"
    "${PROXY_CPU[@]}" haproxy -db -f haproxy2.cfg >haproxy2.log 2>&1 &
else
    RUST_LOG=warn "${PROXY_CPU[@]}" "$LBD" run -c lbd.yaml >lbd.log 2>&1 &
fi
LBD_PID=$!
PIDS+=($LBD_PID)
LBD_COPY=userspace RUST_LOG=warn "${PROXY_CPU[@]}" "$LBD" run -c lbdu.yaml >lbdu.log 2>&1 &
LBDU_PID=$!
PIDS+=($LBDU_PID)

# ---- wait until every proxy sees all its backends up -------------------------
lbd_up() { "$LBD" status --json --answered --socket "$WORK/$1.sock" 2>/dev/null |
    jq '[.tcplb[].backends[] | select(.healthy)] | length' 2>/dev/null || echo 0; }
ha_up() { curl -s --max-time 1 "http://127.0.0.1:${1:-$HA_STATS}/;csv" 2>/dev/null |
    awk -F, '$2 ~ /^[bi][0-9]$/ && $18 == "UP"' | wc -l; }
if [[ $VS == haproxy ]]; then first_up() { ha_up "$HA2_STATS"; }; else first_up() { lbd_up lbd; }; fi
deadline=$((SECONDS + 20))
until [[ $(first_up) == 4 && $(lbd_up lbdu) == 4 && $(ha_up) == 4 ]]; do
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "process $pid died at startup (logs in $WORK)" >&2; KEEP=1; exit 1; }
    done
    if ((SECONDS > deadline)); then
        echo "proxies not ready after 20s: $VS=$(first_up)/4 lbdu=$(lbd_up lbdu)/4 haproxy=$(ha_up)/4" >&2
        KEEP=1
        exit 1
    fi
    sleep 0.3
done
sleep 3 # a few check rounds at idle
# `lbd run` is a supervisor and its worker (`lbd-worker`, src/supervisor.rs):
# the worker moves the bytes, so its CPU is the proxy's; RSS is both
# processes' together (what the node pays). haproxy -db is one process.
LBD_WORKER=$(worker_of "$LBD_PID") LBDU_WORKER=$(worker_of "$LBDU_PID")
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
rss_mb() { # PID...: the sum in MB
    local kb=0 p
    for p in "$@"; do kb=$((kb + $(rss_kb "$p"))); done
    awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}
both() { [[ $2 == "$1" ]] && echo "$1" || echo "$1 $2"; }
RSS_LBD=$(rss_mb $(both "$LBD_PID" "$LBD_WORKER")) RSS_LBDU=$(rss_mb $(both "$LBDU_PID" "$LBDU_WORKER")) RSS_HA=$(rss_mb $HA_PID)
# VmRSS counts the pages of the binary in each process that maps them: the
# supervisor and the worker share ~7.7 MB of lbd's text, which the sum of
# their RSS counts twice. PSS (each shared page split between the processes
# that map it) summed is what the node pays; haproxy's PSS likewise splits
# the libraries it shares with other processes (libssl with nginx here).
pss_mb() { # PID...: the sum of Pss in MB
    local kb=0 p
    for p in "$@"; do kb=$((kb + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup"))); done
    awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}
PSS_LBD=$(pss_mb $(both "$LBD_PID" "$LBD_WORKER")) PSS_LBDU=$(pss_mb $(both "$LBDU_PID" "$LBDU_WORKER")) PSS_HA=$(pss_mb $HA_PID)

# ---- measurement helpers -------------------------------------------------------
cpu_ticks() { [[ -z $1 ]] && echo 0 || awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Sets CPU to the proxy's CPU use in % of one core over the last run.
measure_cpu_start() { T0=$(cpu_ticks "$1"); W0=$(date +%s.%N); }
measure_cpu_end() {
    local t1 w1
    t1=$(cpu_ticks "$1") w1=$(date +%s.%N)
    CPU=$(awk -v a="$T0" -v b="$t1" -v w0="$W0" -v w1="$w1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f", (b - a) / hz / (w1 - w0) * 100 }')
}
# iperf3 PORT PID [-R]: prints "Gbit/s cpu%"
iperf() {
    local port=$1 pid=$2 out try
    shift 2
    for try in 1 2; do # a health-check connect can race the data connection
        measure_cpu_start "$pid"
        if out=$(timeout $((DUR + 15)) "${LOAD_CPU[@]}" iperf3 -c 127.0.0.1 -p "$port" \
            -t "$DUR" -J "$@" 2>/dev/null); then
            measure_cpu_end "$pid"
            echo "$(jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100' <<<"$out") $CPU"
            return
        fi
        sleep 1
    done
    echo "err -"
}
# The machine's busy and idle jiffies (all CPUs), and nginx's workers' CPU
# ticks: where a request's CPU goes besides the proxy.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
nginx_ticks() {
    local t=0 w
    for w in $(cat /proc/"$(cat "$WORK/nginx.pid")"/task/*/children 2>/dev/null); do
        t=$((t + $(cpu_ticks "$w")))
    done
    echo "$t"
}
# wrk URL [header]: prints "req/s p99_ms errors cpu% nginx_cpu% busy_cpu% idle%"
# (the last three in % of one CPU over the run, the machine's idle in % of all)
wrkrun() {
    local port=$1 pid=$2 out b0 i0 b1 i1 n0 n1
    shift 2
    read -r b0 i0 < <(machine_ticks)
    n0=$(nginx_ticks)
    measure_cpu_start "$pid"
    out=$(timeout $((DUR + 15)) "${LOAD_CPU[@]}" wrk -t2 -c50 -d"${DUR}s" --latency "$@" \
        "https://127.0.0.1:$port/" 2>&1) || true
    measure_cpu_end "$pid"
    read -r b1 i1 < <(machine_ticks)
    n1=$(nginx_ticks)
    local split
    split=$(awk -v b0="$b0" -v b1="$b1" -v i0="$i0" -v i1="$i1" -v n0="$n0" -v n1="$n1" \
        -v w0="$W0" -v w1="$(date +%s.%N)" -v hz="$CLK_TCK" 'BEGIN {
        t = (w1 - w0) * hz
        printf "%.0f %.0f %.1f", (n1 - n0) / t * 100, (b1 - b0) / t * 100, (i1 - i0) / ((b1 - b0) + (i1 - i0)) * 100 }')
    echo "$out" >>"$WORK/wrk.log"
    awk -v cpu="$CPU" -v parts="$split" '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^ +99%/ { p99 = ms($2) }
        /Requests\/sec:/ { rps = $2 }
        /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx/ { err += $NF }
        END { printf "%s %.2f %d %s %s\n", (rps == "" ? "err" : rps), p99, err, cpu, parts }' <<<"$out"
}

# ---- runs: for each test the proxies run back to back ------------------------
echo "# machine: $(nproc) CPUs ($(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ //')), kernel $(uname -r), PIN=$PIN, DUR=${DUR}s, nice $(nice)"
echo "# haproxy $(haproxy -v | awk 'NR == 1 { print $3 }') nbthread $HA_THREADS; lbd $("$LBD" version | head -1); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for dir in up down; do
    flag=()
    [[ $dir == down ]] && flag=(-R)
    read -r R[ha_$dir] R[ha_${dir}_cpu] < <(iperf $HA_IPERF "$HA_PID" "${flag[@]}")
    read -r R[lbd_$dir] R[lbd_${dir}_cpu] < <(iperf $LBD_IPERF "$LBD_WORKER" "${flag[@]}")
    read -r R[lbdu_$dir] R[lbdu_${dir}_cpu] < <(iperf $LBDU_IPERF "$LBDU_WORKER" "${flag[@]}")
    read -r R[direct_$dir] _ < <(iperf $IPERF_DIRECT "" "${flag[@]}")
done
for kind in ka nc; do
    hdr=()
    [[ $kind == nc ]] && hdr=(-H "Connection: close")
    read -r R[ha_$kind] R[ha_${kind}_p99] R[ha_${kind}_err] R[ha_${kind}_cpu] \
        R[ha_${kind}_ngx] R[ha_${kind}_busy] R[ha_${kind}_idle] < <(wrkrun $HA_HTTPS "$HA_PID" "${hdr[@]}")
    read -r R[lbd_$kind] R[lbd_${kind}_p99] R[lbd_${kind}_err] R[lbd_${kind}_cpu] \
        R[lbd_${kind}_ngx] R[lbd_${kind}_busy] R[lbd_${kind}_idle] < <(wrkrun $LBD_HTTPS "$LBD_WORKER" "${hdr[@]}")
    read -r R[lbdu_$kind] R[lbdu_${kind}_p99] R[lbdu_${kind}_err] R[lbdu_${kind}_cpu] \
        R[lbdu_${kind}_ngx] R[lbdu_${kind}_busy] R[lbdu_${kind}_idle] < <(wrkrun $LBDU_HTTPS "$LBDU_WORKER" "${hdr[@]}")
    read -r R[direct_$kind] R[direct_${kind}_p99] R[direct_${kind}_err] R[direct_${kind}_cpu] \
        R[direct_${kind}_ngx] R[direct_${kind}_busy] R[direct_${kind}_idle] < <(wrkrun "${NGX[0]}" "" "${hdr[@]}")
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -n ${RESULTS_OUT:-} ]]; then # one run of RUNS > 1: the figures for the medians
    for k in "${!R[@]}"; do echo "$k ${R[$k]}"; done >"$RESULTS_OUT"
    printf 'rss_lbd %s\nrss_lbdu %s\nrss_ha %s\n' "$RSS_LBD" "$RSS_LBDU" "$RSS_HA" >>"$RESULTS_OUT"
    printf 'pss_lbd %s\npss_lbdu %s\npss_ha %s\n' "$PSS_LBD" "$PSS_LBDU" "$PSS_HA" >>"$RESULTS_OUT"
fi
fi # REPLAY

# ---- table ---------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { # RATIO OP LIMIT
    awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (r == "-") { print "MISS"; exit }
        ok = (op == ">=") ? (r + 0 >= l) : (r + 0 <= l)
        print ok ? "PASS" : "MISS" }'
}
row() { # LABEL LBD HAPROXY TARGET_OP TARGET (TARGET_OP "abs<=" compares lbd itself)
    local r v="-" t="-"
    r=$(ratio "$2" "$3")
    case $4 in
    ">=" | "<=") v=$(verdict "$r" "$4" "$5") t="ratio $4 $5" ;;
    "abs<=") v=$(verdict "$2" "<=" "$5") t="lbd <= $5" ;;
    esac
    printf '| %-34s | %9s | %9s | %6s | %-13s | %-4s |\n' "$1" "$2" "$3" "$r" "$t" "$v"
}
echo
[[ $VS == haproxy ]] && echo "VS=haproxy: the lbd column is a second haproxy (noise check; the targets do not apply)"
echo "| figure                             |       lbd |   haproxy | ratio  | target        |      |"
echo "|------------------------------------|-----------|-----------|--------|---------------|------|"
row "TCP throughput client->server Gb/s" "${R[lbd_up]}" "${R[ha_up]}" ">=" 1.5
row "TCP throughput server->client Gb/s" "${R[lbd_down]}" "${R[ha_down]}" ">=" 1.5
row "HTTPS keep-alive req/s" "${R[lbd_ka]}" "${R[ha_ka]}" ">=" 1.2
row "HTTPS keep-alive p99 ms" "${R[lbd_ka_p99]}" "${R[ha_ka_p99]}" "<=" 1.0
row "new TLS connections/s" "${R[lbd_nc]}" "${R[ha_nc]}" "" ""
row "new TLS connections p99 ms" "${R[lbd_nc_p99]}" "${R[ha_nc_p99]}" "" ""
row "idle RSS MB (VmRSS summed)" "$RSS_LBD" "$RSS_HA" "" ""
row "idle PSS MB (what the node pays)" "$PSS_LBD" "$PSS_HA" "abs<=" 15
echo
# CPU cost per unit of work: robust when the load generator and other
# processes compete for the same cores (throughput then mostly measures them).
per_gb() { awk -v c="$1" -v g="$2" 'BEGIN { if (c != "-" && g + 0 > 0) printf "%.2f", c / 100 * 8 / g; else print "-" }'; }
per_req() { awk -v c="$1" -v r="$2" 'BEGIN { if (c != "-" && r + 0 > 0) printf "%.0f", c / 100 * 1e6 / r; else print "-" }'; }
cpu_row() { # LABEL UNIT KEY CONVERTER
    local l=${R[lbd_$3_cpu]} u=${R[lbdu_$3_cpu]} h=${R[ha_$3_cpu]}
    printf '| %-21s | %5s%% %9s | %5s%% %9s | %5s%% %9s | %-9s |\n' "$1" \
        "$l" "$($4 "$l" "${R[lbd_$3]}")" "$u" "$($4 "$u" "${R[lbdu_$3]}")" \
        "$h" "$($4 "$h" "${R[ha_$3]}")" "$2"
}
echo "Proxy CPU during each test (% of one core) and CPU per unit of work (lower is better):"
if [[ $VS == haproxy ]]; then first=haproxy#2; else first="lbd splice"; fi
printf '| test                  | %-16s | lbd userspace    | haproxy          | unit      |\n' "$first"
echo "|-----------------------|------------------|------------------|------------------|-----------|"
cpu_row "iperf3 client->server" "CPU s/GB" up per_gb
cpu_row "iperf3 server->client" "CPU s/GB" down per_gb
cpu_row "wrk keep-alive" "CPU us/req" ka per_req
cpu_row "wrk Connection: close" "CPU us/conn" nc per_req
echo
if [[ $VS == lbd ]]; then
    echo "lbd copy mode (splice is the default; LBD_COPY=userspace):"
    echo "| figure                             |    splice | userspace | splice/userspace |"
    echo "|------------------------------------|-----------|-----------|------------------|"
    for f in "up:TCP throughput client->server Gb/s" "down:TCP throughput server->client Gb/s" \
        "ka:HTTPS keep-alive req/s" "ka_p99:HTTPS keep-alive p99 ms" "nc:new TLS connections/s"; do
        k=${f%%:*}
        printf '| %-34s | %9s | %9s | %16s |\n' "${f#*:}" "${R[lbd_$k]}" "${R[lbdu_$k]}" "$(ratio "${R[lbd_$k]}" "${R[lbdu_$k]}")"
    done
    printf '| %-34s | %9s | %9s | %16s |\n' "idle RSS MB" "$RSS_LBD" "$RSS_LBDU" "$(ratio "$RSS_LBD" "$RSS_LBDU")"
    echo
fi
# Where the machine's CPU goes per request (us; % of one CPU x 1e4 / req/s):
# the proxy, nginx, and the rest (wrk, and kernel work charged to no one of
# them: softirqs, idle exits). What a faster proxy can win is its own
# column: the others cost about the same per request whichever proxy is in
# between (the "no proxy" row). A ratio R over haproxy needs a total of
# haproxy's total / R.
us_per() { awk -v c="$1" -v r="$2" 'BEGIN { if (c != "" && c != "-" && r + 0 > 0) printf "%.1f", c / 100 * 1e6 / r; else print "-" }'; }
split_row() { # TEST LABEL KEY (TEST: ka or nc)
    local k=$3_$1 rest
    rest=$(awk -v b="${R[${k}_busy]:-}" -v c="${R[${k}_cpu]:-0}" -v n="${R[${k}_ngx]:-}" \
        'BEGIN { if (b == "" || n == "") print "-"; else print b - (c == "-" ? 0 : c) - n }')
    printf '| %-10s | %-10s | %9s | %7s | %7s | %7s | %7s | %6s |\n' "$1" "$2" "${R[$k]:--}" \
        "$(us_per "${R[${k}_busy]:-}" "${R[$k]:-}")" "$(us_per "${R[${k}_cpu]:-}" "${R[$k]:-}")" \
        "$(us_per "${R[${k}_ngx]:-}" "${R[$k]:-}")" "$(us_per "$rest" "${R[$k]:-}")" "${R[${k}_idle]:--}"
}
echo "Machine CPU per request, us (ka: keep-alive; nc: a new TLS connection each; 2 CPUs shared):"
echo "| test       | path       |     req/s |   total |   proxy |   nginx |    rest | idle % |"
echo "|------------|------------|-----------|---------|---------|---------|---------|--------|"
for kind in ka nc; do
    if [[ $VS == haproxy ]]; then split_row $kind "haproxy#2" lbd; else split_row $kind lbd lbd; fi
    split_row $kind haproxy ha
    split_row $kind "no proxy" direct
done
echo

echo "No proxy (client straight to one backend), the ceiling on this machine:"
echo "  iperf3 ${R[direct_up]} / ${R[direct_down]} (-R) Gb/s; keep-alive ${R[direct_ka]} req/s p99 ${R[direct_ka_p99]} ms; new TLS ${R[direct_nc]} conn/s"
errs="haproxy ka=${R[ha_ka_err]} nc=${R[ha_nc_err]}; lbd ka=${R[lbd_ka_err]} nc=${R[lbd_nc_err]}; lbd-userspace ka=${R[lbdu_ka_err]} nc=${R[lbdu_nc_err]}"
echo "wrk socket errors + non-2xx: $errs"
if [[ -z ${REPLAY:-} ]]; then echo "run time (without the build): $((SECONDS - T_START)) s"; fi
