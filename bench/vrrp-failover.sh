#!/usr/bin/env bash
# Client-visible VIP failover: lbd against keepalived + haproxy, same run.
#
#   sudo bench/vrrp-failover.sh                     # every stack and mode, 5 runs each
#   sudo RUNS=3 STACKS="lbd-100ms" MODES=node-down bench/vrrp-failover.sh
#   sudo LBD_BIN=target/release/lbd PROBE_BIN=target/release/examples/failover_probe ...
#
# Three "nodes" (network namespaces on one bridge) each run a TLS
# "apiserver" (socat, GET /healthz -> 200) on :6443 and one of the stacks
# that keep a VIP in front of a balancer on :8443:
#
#   lbd-1s, lbd-100ms            lbd (VRRP + balancer, the listener tracked,
#                                weight -50), advert 1 s / 100 ms, HTTPS
#                                checks every 1 s / 200 ms (fall 2, rise 1)
#   keepalived-1s,               keepalived (Debian) + haproxy (Debian) as the
#   keepalived-100ms             kubeadm HA guide sets them up: haproxy in mode
#                                tcp with `option httpchk GET /healthz` and
#                                `check-ssl verify none`, keepalived tracking a
#                                script that curls haproxy's :8443/healthz
#                                (weight -50); advert 1 s (v2) / 100 ms (v3);
#                                haproxy checks every 1 s / 200 ms (fall 2,
#                                rise 1); the track script at keepalived's
#                                fastest useful setting (interval 1, fall 1,
#                                rise 1), tighter than the guide's 3 s x 10.
#
# Priorities 100/90/80: node1 is master. A client namespace runs
# examples/failover_probe: an HTTPS GET to VIP:8443 started every 10 ms (not
# waiting for the previous one, each bounded by 300 ms) and a sampler that
# reads, every 20 ms over netlink, which nodes hold the VIP. Then node1 fails
# in one of three ways:
#
#   node-down   node1 is gone: its link goes down and every process in it is
#               SIGKILLed (lbd or keepalived + haproxy, and the apiserver)
#   graceful    `systemctl stop`: SIGTERM to lbd / to keepalived
#   kill-lb     SIGKILL of node1's VRRP process alone, the split-brain
#               case: lbd's worker (its supervisor hands the VIP over with
#               priority 0 and starts a new worker, which takes the VIP
#               back), keepalived's VRRP child (its parent starts another)
#   backends    node1's balancer loses every backend: an nftables rule in
#               node1 drops its packets to :6443 (the other nodes still reach
#               all three apiservers)
#   reload      a configuration reload on the master, nothing failing:
#               node1's priority goes 100 -> 95 (still the highest) and
#               `lbd reload` / SIGHUP to keepalived applies it. The VIP must
#               not move (takeover "-") and no request may fail (issue 14:
#               reload in place, no priority-0 advert)
#
# Figures per stack and mode over RUNS runs (min / median / max):
#   outage    the longest stretch during which a newly started request did not
#             succeed (gap between the starts of two successful requests,
#             minus the 10 ms probe period); ~0 when nobody noticed
#   failed    requests that failed
#   after-ok  failed requests started after the first request that succeeded
#             once the VIP moved (the 100 ms node-down target: none)
#   late      how long after the VIP moved the last failed request started
#             (0: none after the move; the 1 s advert target: <= 300 ms)
#   takeover  from the failure to the first sample with the VIP on another node
#   split     samples in which two live nodes held the VIP at once (summed;
#             a VIP lbd keeps hidden for its handover grace does not count),
#             and in brackets the longest such stretch (consecutive samples x
#             the sample period). A lone sample is the make-before-break
#             handover (the old master keeps the VIP until it hears its
#             successor, a few ms); a split brain is a stretch longer than
#             one advert interval, which fails the target as in the tests.
#   stale     node-down only: how long the dead node kept the VIP (lbd gives
#             it a finite lifetime; keepalived keeps it forever, ">" = still
#             there when the run ended)
#
# Everything lives in namespaces lbdb-<pid>-*, removed on exit (Ctrl-C too);
# only private addresses in 10.214.0.0/24 that exist inside them are used.
# Needs root, iproute2, openssl, socat, curl, nftables, keepalived, haproxy
# (scripts/install-deps.sh). Takes about RUNS x 2 minutes for all stacks.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
STACKS=${STACKS:-"lbd-1s lbd-100ms keepalived-1s keepalived-100ms"}
MODES=${MODES:-"node-down graceful kill-lb backends reload"}
P="lbdb-$$-"
SW=${P}sw
CLIENT=${P}client
NODES=(1 2 3)
NET=10.214.0
VIP=$NET.100
PROBE_INTERVAL_MS=10
PROBE_TIMEOUT_MS=300
SAMPLE_MS=20
work=$(mktemp -d /run/lbd-failover.XXXXXX) # not under /tmp: keepalived's script security
results=$work/results

die() { printf 'vrrp-failover: %s\n' "$*" >&2; exit "${2:-1}"; }
now_ms() { date +%s%3N; }
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for ns in "$CLIENT" "${NODES[@]/#/${P}n}" "$SW"; do
        if ip netns list 2>/dev/null | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    if [[ ${KEEP:-0} == 1 ]]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- preflight ---------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "needs root (network namespaces)" 2
for tool in ip openssl socat curl nft; do
    command -v "$tool" >/dev/null || die "$tool is missing: scripts/install-deps.sh" 2
done
if [[ $STACKS == *keepalived* ]]; then
    command -v keepalived >/dev/null || die "keepalived is missing: scripts/install-deps.sh" 2
    command -v haproxy >/dev/null || die "haproxy is missing: scripts/install-deps.sh" 2
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
if [[ -z ${LBD_BIN:-} || -z ${PROBE_BIN:-} ]]; then
    log "building lbd and the probe (release)"
    (cd "$repo" && cargo build --release --quiet --bin lbd --example failover_probe) || die "build failed" 2
fi
lbd=${LBD_BIN:-$target_dir/release/lbd}
probe=${PROBE_BIN:-$target_dir/release/examples/failover_probe}
[[ -x $lbd && -x $probe ]] || die "missing $lbd or $probe" 2

# ---- network: a bridge in its own namespace, three nodes and a client --------
ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
attach() { # namespace address bridge-port
    ip netns add "$1"
    ip -n "$SW" link add "$3" type veth peer name eth0 netns "$1"
    ip -n "$SW" link set "$3" master br0 up
    ip -n "$1" link set lo up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
}
for i in "${NODES[@]}"; do attach "${P}n$i" "$NET.$i" "port$i"; done
attach "$CLIENT" "$NET.10" portc

# ---- certificates (ECDSA: cheap handshakes keep the client's clock honest) ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench-ca -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
printf 'subjectAltName=DNS:kubernetes,IP:%s,IP:%s,IP:%s,IP:%s,IP:127.0.0.1\n' \
    "$VIP" "$NET.1" "$NET.2" "$NET.3" >"$work/san.ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$work/apiserver.key" -out "$work/apiserver.csr" 2>/dev/null
openssl x509 -req -in "$work/apiserver.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 1 -extfile "$work/san.ext" -out "$work/apiserver.crt" 2>/dev/null

cat >"$work/apiserver.sh" <<'EOF'
#!/bin/sh
# One HTTP exchange: GET /healthz -> 200 ok, anything else 404.
read -r method path rest || exit 0
cr=$(printf '\r')
while IFS= read -r h; do h=${h%"$cr"}; [ -z "$h" ] && break; done
if [ "$path" = /healthz ]; then status="200 OK" body=ok; else status="404 Not Found" body="not found"; fi
printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$status" "${#body}" "$body"
EOF
cat >"$work/check_apiserver.sh" <<'EOF'
#!/bin/sh
# keepalived's track script, as in the kubeadm HA guide: through the local
# haproxy to an apiserver.
exec curl -sfk --max-time 1 -o /dev/null https://127.0.0.1:8443/healthz
EOF
chmod 755 "$work/apiserver.sh" "$work/check_apiserver.sh"

node_ns() { echo "${P}n$1"; }
in_node() { local i=$1; shift; ip netns exec "$(node_ns "$i")" "$@"; }
spawn_in() { # node log command... (detached; the reset kills by namespace)
    local i=$1 logf=$2
    shift 2
    in_node "$i" "$@" >>"$logf" 2>&1 &
    disown "$!"
}
start_apiserver() {
    spawn_in "$1" "$work/n$1.apiserver.log" socat -T 5 \
        "OPENSSL-LISTEN:6443,fork,reuseaddr,cert=$work/apiserver.crt,key=$work/apiserver.key,verify=0" \
        "EXEC:$work/apiserver.sh"
}
pids_of() { # node command-name: pids of that program inside the node
    local ns pid
    ns=$(node_ns "$1")
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] && echo "$pid"
    done
    return 0
}
no_stack_left() { [[ -z $(pids_of "$1" lbd)$(pids_of "$1" lbd-worker)$(pids_of "$1" keepalived)$(pids_of "$1" haproxy) ]]; }
vrrp_process() { # stack: the pid of node1's VRRP process (lbd's worker, keepalived's VRRP child)
    case $1 in
        lbd-*) pids_of 1 lbd-worker | head -n1 ;;
        keepalived-*) cat "$work/n1/keepalived.vrrp.pid" 2>/dev/null ;;
    esac
}
holds_vip() { ip -n "$(node_ns "$1")" -o addr show dev eth0 | grep -q " $VIP/"; }

# ---- the stacks ------------------------------------------------------------------
stack_params() { # sets ADVERT HC_INTERVAL HC_TIMEOUT SETTLE for a stack
    case $1 in
        *-1s) ADVERT=1; HC_INTERVAL_MS=1000; HC_TIMEOUT_MS=1000; SETTLE=4 ;;
        *-100ms) ADVERT=0.1; HC_INTERVAL_MS=200; HC_TIMEOUT_MS=200; SETTLE=2 ;;
        *) die "unknown stack $1" 2 ;;
    esac
}
start_lbd_node() { # node priority
    local i=$1 d=$work/n$1
    mkdir -p "$d"
    local advert=${ADVERT}s
    [[ $ADVERT == 0.1 ]] && advert=100ms
    cat >"$d/lbd.yaml" <<EOF
node:
  name: node$i
vrrp:
  instances:
    - name: apiserver
      interface: eth0
      vrid: 51
      priority: $2
      advert_interval: $advert
      virtual_ips: [$VIP/24]
      track:
        - listener: apiserver
          weight: -50
tcplb:
  shutdown_grace: 2s
  listeners:
    - name: apiserver
      bind: 0.0.0.0:8443
      backends: [$NET.1:6443, $NET.2:6443, $NET.3:6443]
      health:
        type: https
        path: /healthz
        interval: ${HC_INTERVAL_MS}ms
        timeout: ${HC_TIMEOUT_MS}ms
        rise: 1
        fall: 2
        tls: { ca_file: $work/ca.crt, server_name: kubernetes }
admin:
  socket: $d/lbd.sock
EOF
    "$lbd" check -c "$d/lbd.yaml" >/dev/null || die "node$i: invalid lbd config" 2
    spawn_in "$i" "$d/lbd.log" env RUST_LOG="${LBD_LOG:-warn}" "$lbd" run -c "$d/lbd.yaml"
}
start_keepalived_node() { # node priority
    local i=$1 d=$work/n$1 version=2
    mkdir -p "$d"
    [[ $ADVERT == 0.1 ]] && version=3
    cat >"$d/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 1
frontend apiserver
    bind *:8443
    default_backend apiserver
backend apiserver
    option httpchk GET /healthz
    http-check expect status 200
    balance roundrobin
    timeout check ${HC_TIMEOUT_MS}ms
    default-server inter ${HC_INTERVAL_MS}ms downinter ${HC_INTERVAL_MS}ms rise 1 fall 2 check check-ssl verify none
    server n1 $NET.1:6443
    server n2 $NET.2:6443
    server n3 $NET.3:6443
EOF
    cat >"$d/keepalived.conf" <<EOF
global_defs {
    vrrp_version $version
    enable_script_security
    script_user root
}
vrrp_script check_apiserver {
    script "$work/check_apiserver.sh"
    interval 1
    timeout 1
    fall 1
    rise 1
    weight -50
}
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority $2
    advert_int $ADVERT
    virtual_ipaddress {
        $VIP/24 dev eth0
    }
    track_script {
        check_apiserver
    }
}
EOF
    spawn_in "$i" "$d/haproxy.log" haproxy -db -f "$d/haproxy.cfg"
    spawn_in "$i" "$d/keepalived.log" keepalived -n -l -D -P -R -f "$d/keepalived.conf" \
        -p "$d/keepalived.pid" -r "$d/keepalived.vrrp.pid"
}

# Back to a clean slate: nothing running but the apiservers, links up, no
# VIP, no drop rule, no stale neighbour entries.
reset_nodes() {
    local i pid
    for i in "${NODES[@]}"; do
        for pid in $(pids_of "$i" lbd) $(pids_of "$i" keepalived) $(pids_of "$i" haproxy); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    # keepalived refuses to start while its old pid files name a live pid.
    for i in "${NODES[@]}"; do
        wait_until 5 no_stack_left "$i" || log "node$i: processes survive SIGKILL"
        rm -f "$work/n$i"/keepalived*.pid
    done
    for i in "${NODES[@]}"; do
        ip -n "$SW" link set "port$i" up
        ip -n "$(node_ns "$i")" addr del "$VIP/24" dev eth0 2>/dev/null || true
        in_node "$i" nft delete table inet lbdbench 2>/dev/null || true
        [[ -n $(pids_of "$i" socat) ]] || start_apiserver "$i"
    done
    ip -n "$CLIENT" neigh flush all 2>/dev/null || true
    sleep 0.3
}
start_stack() { # stack
    local i prio
    for i in "${NODES[@]}"; do
        prio=$((110 - 10 * i))
        case $1 in
            lbd-*) start_lbd_node "$i" "$prio" ;;
            keepalived-*) start_keepalived_node "$i" "$prio" ;;
        esac
    done
}
wait_until() { # seconds command...
    local end=$(($(date +%s) + $1))
    shift
    until "$@"; do
        (($(date +%s) < end)) || return 1
        sleep 0.05
    done
}

# ---- one run ---------------------------------------------------------------------
ok_count() { grep -c ' ok ' "$1" 2>/dev/null || true; }
recovered() { # probe-file event-ms: VIP on another live node and a request that started after it succeeded
    awk -v t="$2" '
        $1 == "S" && $2 > t && !moved { n = split($3, h, ","); for (k = 1; k <= n; k++) if (h[k] != "n1" && h[k] !~ /^[~%]/ && h[k] != "-") moved = $2 }
        $1 == "P" && $4 == "ok" && $2 > t { oks[++c] = $2 }
        END { if (!moved) exit 1; for (k = 1; k <= c; k++) if (oks[k] > moved) exit 0; exit 1 }' "$1" 2>/dev/null
}
probe_ok_after() { awk -v t="$2" '$1 == "P" && $4 == "ok" && $2 > t { f = 1 } END { exit !f }' "$1" 2>/dev/null; }

diagnose() { # what the client and the nodes hold, for a run that did not recover
    local i
    echo "== client neighbours"; ip -n "$CLIENT" neigh show
    echo "== client sockets"; ip netns exec "$CLIENT" ss -tan | head -20
    for i in "${NODES[@]}"; do
        echo "== node$i"; ip -n "$(node_ns "$i")" -br link show dev eth0
        ip -n "$(node_ns "$i")" addr show dev eth0
        ip netns exec "$(node_ns "$i")" ss -tan state syn-recv | head -5
    done
}

run_one() { # stack mode n
    local stack=$1 mode=$2 n=$3 out=$work/$1.$2.$3.probe stop=$work/stop.$1.$2.$3 t_event
    stack_params "$stack"
    reset_nodes
    start_stack "$stack"
    if ! wait_until 20 holds_vip 1; then
        log "$stack $mode #$n: node1 never took the VIP; skipped"
        echo "$stack $mode $n error - - - - -" >>"$results"
        return
    fi
    sleep "$SETTLE"
    ip netns exec "$CLIENT" "$probe" --target "$VIP:8443" --ca "$work/ca.crt" \
        --server-name kubernetes --interval-ms $PROBE_INTERVAL_MS --timeout-ms $PROBE_TIMEOUT_MS \
        --vip "$VIP" --sample-ms $SAMPLE_MS --out "$out" --stop-file "$stop" --max-secs 60 \
        --node n1=/run/netns/"$(node_ns 1)" --node n2=/run/netns/"$(node_ns 2)" \
        --node n3=/run/netns/"$(node_ns 3)" 2>>"$work/probe.err" &
    local probe_pid=$!
    # A second of steady service before the failure.
    local t_start
    t_start=$(now_ms)
    if ! wait_until 10 probe_ok_after "$out" "$((t_start + 1000))"; then
        log "$stack $mode #$n: the client never got through; skipped"
        touch "$stop"; wait "$probe_pid" || true
        echo "$stack $mode $n error - - - - -" >>"$results"
        return
    fi
    # Whom to signal is looked up before the clock starts: pids_of forks
    # once per process in the node, which took up to half a second here.
    local term_pids=() vrrp_pid=
    if [[ $mode == graceful ]]; then
        case $stack in
            lbd-*) mapfile -t term_pids < <(pids_of 1 lbd) ;;
            keepalived-*) term_pids=("$(cat "$work/n1/keepalived.pid")") ;;
        esac
    fi
    if [[ $mode == kill-lb ]]; then
        vrrp_pid=$(vrrp_process "$stack")
        if [[ -z $vrrp_pid ]]; then
            log "$stack $mode #$n: no VRRP process found in node1; skipped"
            touch "$stop"; wait "$probe_pid" || true
            echo "$stack $mode $n error - - - - -" >>"$results"
            return
        fi
    fi
    t_event=$(now_ms)
    case $mode in
        node-down)
            # Processes first: a live lbd would see the link go and drop
            # the VIP itself, which a crashed node cannot do.
            # All stopped before any is killed: keepalived's VRRP child
            # would otherwise see its parent die and leave gracefully.
            mapfile -t victims < <(ip netns pids "$(node_ns 1)")
            kill -STOP "${victims[@]}" 2>/dev/null || true
            kill -KILL "${victims[@]}" 2>/dev/null || true
            ip -n "$SW" link set port1 down
            ;;
        graceful)
            kill -TERM "${term_pids[@]}"
            ;;
        kill-lb)
            kill -KILL "$vrrp_pid"
            ;;
        backends)
            in_node 1 nft -f - <<'EOF'
table inet lbdbench {
    chain out {
        type filter hook output priority 0;
        tcp dport 6443 drop
    }
}
EOF
            ;;
        reload)
            case $stack in
                lbd-*)
                    sed -i 's/^      priority: 100$/      priority: 95/' "$work/n1/lbd.yaml"
                    in_node 1 "$lbd" reload -c "$work/n1/lbd.yaml" --socket "$work/n1/lbd.sock" \
                        >>"$work/n1/reload.log" 2>&1 || log "$stack $mode #$n: lbd reload refused"
                    ;;
                keepalived-*)
                    sed -i 's/^    priority 100$/    priority 95/' "$work/n1/keepalived.conf"
                    kill -HUP "$(cat "$work/n1/keepalived.pid")"
                    ;;
            esac
            ;;
    esac
    if [[ $mode == reload ]]; then
        # Nothing to recover from: watch the reload's aftermath.
        sleep 2
    elif ! wait_until 20 recovered "$out" "$t_event"; then
        log "$stack $mode #$n: no recovery within 20 s"
        diagnose >>"$work/$stack.$mode.$n.diag" 2>&1
    fi
    # Keep watching: a split brain or the dead node's VIP expiring shows here.
    case $mode in
        node-down) sleep 4 ;;
        *) sleep 1 ;;
    esac
    touch "$stop"
    wait "$probe_pid" || true
    awk -v t="$t_event" -v iv=$PROBE_INTERVAL_MS -v sms=$SAMPLE_MS -v stack="$stack" -v mode="$mode" -v n="$n" '
        $1 == "P" && $4 == "ok" { ok[++c] = $2 }
        $1 == "P" && $4 == "fail" && $2 >= t { failed++; fail[failed] = $2 }
        $1 == "P" && $4 == "ok" && moved && $2 >= moved && !first_ok { first_ok = $2 }
        $1 == "S" {
            live = 0; stale = 0
            k = split($3, h, ",")
            # "%": hidden by lbd'"'"'s handover grace (answers no ARP): not live.
            for (j = 1; j <= k; j++) { if (h[j] ~ /^~/) stale = 1; else if (h[j] != "-" && h[j] !~ /^%/) live++ }
            if (live > 1) { split_brain++; if (++run * sms > split_ms) split_ms = run * sms } else run = 0
            if ($2 > t && !moved) for (j = 1; j <= k; j++) if (h[j] != "n1" && h[j] !~ /^[~%]/ && h[j] != "-") moved = $2
            if ($2 > t) { if (stale) last_stale = $2; last = $2; stale_at_end = stale }
        }
        END {
            gap = 0
            for (j = 2; j <= c; j++)
                if (ok[j] > t && ok[j - 1] >= t - 1000 && ok[j] - ok[j - 1] > gap) gap = ok[j] - ok[j - 1]
            outage = gap - iv; if (outage < 0) outage = 0
            take = moved ? moved - t : "-"
            if (mode != "node-down") st = "-"
            else if (stale_at_end) st = ">" (last - t)
            else if (last_stale) st = last_stale - t
            else st = 0
            after_ok = 0; late = 0
            for (j = 1; j <= failed; j++) {
                if (first_ok && fail[j] > first_ok) after_ok++
                if (moved && fail[j] - moved > late) late = fail[j] - moved
            }
            if (!moved) late = "-"
            printf "%s %s %s ok %d %d %s %d %s %d %d %s\n", stack, mode, n, outage, failed, take, split_brain, st, split_ms, after_ok, late
        }' <(sort -n -k2,2 "$out") >>"$results"
    log "$(tail -n1 "$results")"
}

# ---- all runs, interleaved so that slow drifts of the machine hit every stack --
log "work directory: $work; $RUNS runs of [$STACKS] x [$MODES]"
: >"$results"
for n in $(seq 1 "$RUNS"); do
    for mode in $MODES; do
        for stack in $STACKS; do
            run_one "$stack" "$mode" "$n"
        done
    done
done
reset_nodes

# ---- report --------------------------------------------------------------------
mdi_ms() { # advert-seconds priority: 3 x advert + skew (RFC 5798 / 3768)
    awk -v a="$1" -v p="$2" 'BEGIN { printf "%d", (3 * a + (256 - p) / 256 * a) * 1000 }'
}
stat3() { # values...: min/median/max ("-" for none)
    (($#)) || { echo -; return; }
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (!NR) { print "-"; exit }
        printf "%d / %d / %d", v[1], v[int((NR + 1) / 2)], v[NR] }'
}
echo
echo "VRRP failover, client-visible ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $RUNS runs each)"
echo "figures in ms, min / median / max; target applies to lbd rows"
printf '%-17s %-10s %-20s %-17s %-9s %-9s %-20s %-12s %-14s %s\n' stack mode outage failed after-ok late takeover split stale target
for mode in $MODES; do
    for stack in $STACKS; do
        mapfile -t rows < <(awk -v s="$stack" -v m="$mode" '$1 == s && $2 == m && $4 == "ok"' "$results")
        errors=$(awk -v s="$stack" -v m="$mode" '$1 == s && $2 == m && $4 == "error"' "$results" | wc -l)
        [[ ${#rows[@]} -gt 0 ]] || { printf '%-17s %-10s no completed run (%s errors)\n' "$stack" "$mode" "$errors"; continue; }
        outages=() fails=() takes=() stales=() split=0 split_ms=0 after_ok=0 late=0
        for r in "${rows[@]}"; do
            read -r _ _ _ _ o f tk sb st sms ao lt <<<"$r"
            ((sms > split_ms)) && split_ms=$sms
            after_ok=$((after_ok + ao))
            [[ $lt != - ]] && ((lt > late)) && late=$lt
            outages+=("$o"); fails+=("$f"); [[ $tk != - ]] && takes+=("$tk")
            split=$((split + sb)); stales+=("$st")
        done
        stack_params "$stack"
        case $mode in
            node-down)
                limit=$(($(mdi_ms "$ADVERT" 90) + 100))
                [[ $ADVERT == 0.1 ]] && ((limit > 500)) && limit=500 ;;
            graceful) limit=$(awk -v a="$ADVERT" 'BEGIN { printf "%d", a * 1000 }') ;;
            # Priority 0 from the supervisor: the backup's skew time plus
            # the handover; issue 14's target is 350 ms at 100 ms adverts.
            kill-lb) limit=$(awk -v a="$ADVERT" 'BEGIN { printf "%d", a * 3500 }') ;;
            backends) limit=1000 ;;
            # Jitter of the probe only: a VIP that moved would cost more.
            reload) limit=100 ;;
        esac
        worst=$(printf '%s\n' "${outages[@]}" | sort -n | tail -n1)
        verdict="<= $limit ms"
        if [[ $stack == lbd-* ]]; then
            advert_ms=$(awk -v a="$ADVERT" 'BEGIN { printf "%d", a * 1000 }')
            ok=1
            ((worst <= limit && split_ms <= advert_ms && errors == 0)) || ok=0
            # The issue's client-side targets, node down: at 100 ms adverts
            # no failure after the first success; at 1 s none later than
            # 300 ms after the VIP moved.
            if [[ $mode == node-down && $ADVERT == 0.1 ]]; then
                verdict+=", after-ok 0"
                ((after_ok == 0)) || ok=0
            elif [[ $mode == node-down ]]; then
                verdict+=", late <= 300"
                ((late <= 300)) || ok=0
            fi
            # Issue 14: a graceful stop and a reload fail no request; a
            # reload leaves the VIP where it was.
            total_failed=0
            for f in "${fails[@]}"; do total_failed=$((total_failed + f)); done
            if [[ $mode == graceful || $mode == reload ]]; then
                verdict+=", failed 0"
                ((total_failed == 0)) || ok=0
            fi
            if [[ $mode == reload ]]; then
                verdict+=", no takeover"
                ((${#takes[@]} == 0)) || ok=0
            fi
            if ((ok)); then verdict+=" PASS"; else verdict+=" MISS"; fi
        fi
        stale_txt=-
        [[ $mode == node-down ]] && stale_txt=$(printf '%s\n' "${stales[@]}" | sort -n | tail -n1)
        printf '%-17s %-10s %-20s %-17s %-9s %-9s %-20s %-12s %-14s %s\n' "$stack" "$mode" \
            "$(stat3 "${outages[@]}")" "$(stat3 "${fails[@]}")" "$after_ok" "$late" "$(stat3 "${takes[@]}")" \
            "$split [${split_ms}ms]" "$stale_txt" "$verdict"
        ((errors == 0)) || echo "   ($errors runs of $stack $mode could not start)"
    done
done
echo
echo "after-ok: failed requests after the first success since the VIP moved (sum over runs); late: ms after the VIP moved of the last failed request (worst run)"
echo "outage: longest gap between the starts of two successful requests, minus the 10 ms probe period"
echo "split: samples with two live holders [longest stretch]; target: no stretch longer than one advert interval"
echo "stale: ms after the failure until the dead node dropped the VIP (worst run; '>' = still held at the end)"
