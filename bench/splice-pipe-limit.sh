#!/usr/bin/env bash
# Shows what lbd's 1 MiB splice pipes do to a process without
# CAP_SYS_RESOURCE/CAP_SYS_ADMIN (the static pod keeps only NET_ADMIN,
# NET_RAW, NET_BIND_SERVICE): the kernel counts pipe pages per user
# (fs.pipe-user-pages-soft, 16384 pages = 64 MiB by default, shared by every
# process of that uid, root included) and, past that, gives new pipes 2 pages
# and refuses F_SETPIPE_SZ. Loopback only; bounded; everything is killed on exit.
#
#   LBD=target/release/lbd bench/splice-pipe-limit.sh [IDLE_SESSIONS]
set -euo pipefail
IDLE=${1:-100}
LBD=${LBD:?set LBD to the lbd binary}
BASE=${BASE_PORT:-26590}
IPERF=$BASE ECHO=$((BASE + 1)) L_IPERF=$((BASE + 2)) L_IDLE=$((BASE + 3))
WORK=$(mktemp -d /tmp/lbd-pipes.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

iperf3 -s -B 127.0.0.1 -p $IPERF >/dev/null 2>&1 &
PIDS+=($!)
# Echo backend holding the idle sessions open.
socat TCP-LISTEN:$ECHO,bind=127.0.0.1,fork,reuseaddr EXEC:cat >/dev/null 2>&1 &
PIDS+=($!)
cat >"$WORK/lbd.yaml" <<EOF
tcplb:
  listeners:
    - name: iperf
      bind: 127.0.0.1:$L_IPERF
      backends: [127.0.0.1:$IPERF]
      health: { type: tcp, interval: 10s }
    - name: idle
      bind: 127.0.0.1:$L_IDLE
      backends: [127.0.0.1:$ECHO]
      health: { type: tcp, interval: 10s }
admin: { socket: $WORK/lbd.sock, listen: "" }
EOF

pipe_size_unprivileged() {
    setpriv --bounding-set=-sys_resource,-sys_admin python3 -c \
        'import fcntl, os; r, w = os.pipe(); print(fcntl.fcntl(w, fcntl.F_GETPIPE_SZ))'
}
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
through() { # PID: one 5 s iperf3 through lbd; prints Gb/s and lbd CPU s/GB
    local t0 t1 out
    t0=$(cpu "$1")
    out=$(timeout 20 iperf3 -c 127.0.0.1 -p $L_IPERF -t 5 -J)
    t1=$(cpu "$1")
    jq -r --arg t "$((t1 - t0))" --arg hz "$(getconf CLK_TCK)" \
        '.end.sum_received | "\(.bits_per_second / 1e9 * 100 | round / 100) Gb/s, lbd \(($t | tonumber) / ($hz | tonumber) / (.bytes / 1e9) * 100 | round / 100) CPU s/GB"' <<<"$out"
}

for mode in "with CAP_SYS_RESOURCE" "without CAP_SYS_RESOURCE/CAP_SYS_ADMIN"; do
    pre=()
    [[ $mode == without* ]] && pre=(setpriv --bounding-set=-sys_resource,-sys_admin)
    RUST_LOG=warn "${pre[@]}" "$LBD" run -c "$WORK/lbd.yaml" 2>"$WORK/lbd.log" &
    lbd=$!
    for _ in $(seq 50); do [[ -S $WORK/lbd.sock ]] && break; sleep 0.1; done
    sleep 0.5
    echo "== lbd $mode"
    echo "   alone:              $(through $lbd); unprivileged new pipe: $(pipe_size_unprivileged) B"
    idle=()
    for _ in $(seq "$IDLE"); do
        socat -u -T30 TCP:127.0.0.1:$L_IDLE /dev/null 2>/dev/null &
        idle+=($!)
    done
    sleep 1
    echo "   + $IDLE idle sessions: $(through $lbd); unprivileged new pipe: $(pipe_size_unprivileged) B"
    kill "${idle[@]}" 2>/dev/null || true
    kill $lbd
    wait $lbd 2>/dev/null || true
    rm -f "$WORK/lbd.sock"
    sleep 0.5
done
