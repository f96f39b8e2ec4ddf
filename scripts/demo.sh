#!/usr/bin/env bash
# lbd in five minutes: a three-node control plane in network namespaces.
#
# As root:
#   scripts/demo.sh                  # builds lbd (release) and runs the demo
#   DEMO_FAST=1 scripts/demo.sh      # shorter timers (what the test runs)
#   LBD_BIN=path/to/lbd scripts/demo.sh   # use a built binary
#
# Each "node" is a network namespace on one bridge with a TLS "apiserver"
# (socat, answering GET /healthz) on :6443 and lbd running VRRP for the
# VIP 10.213.0.100 plus the balancer on :8443 in front of all three
# apiservers. A client namespace requests https://10.213.0.100:8443/healthz
# in a loop. The demo
# prints `lbd status` from each node, kills the master (lbd, apiserver and
# link: the node is gone), shows the client's outage and the new master,
# then stops the new master gracefully (as `systemctl stop lbd` does) to
# show the clean handover. Everything lives in namespaces named
# lbdd-<pid>-*; all of it is removed on exit, Ctrl-C included.
#
# Exit status: 0 when the failover happened and the client recovered,
# 1 when it did not, 2 when the demo could not start.
# Needs root, iproute2, openssl, socat, curl (scripts/install-deps.sh installs them).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
fast=${DEMO_FAST:-0}
P="lbdd-$$-"
SW=${P}sw
CLIENT=${P}client
NODES=(1 2 3)
VIP=10.213.0.100
NET=10.213.0
work=$(mktemp -d /tmp/lbd-demo.XXXXXX)
pids=()
client_pid=
failed=0

if [[ $fast == 1 ]]; then
    ADVERT=200ms; HEALTH_INTERVAL=200ms; CURL_TIMEOUT=0.5; PAUSE=0.1; DEADLINE=20
else
    ADVERT=1s; HEALTH_INTERVAL=1s; CURL_TIMEOUT=1; PAUSE=0.2; DEADLINE=30
fi

if [[ -t 1 ]]; then
    bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    bold() { printf '\n== %s\n' "$*"; }
fi
say() { printf '   %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit "${2:-1}"; }
now_ms() { date +%s%3N; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $client_pid ]] && kill "$client_pid" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Whatever still runs inside our namespaces is ours; then the namespaces.
    for ns in "$CLIENT" "$SW" "${NODES[@]/#/${P}n}"; do
        if ip netns list 2>/dev/null | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    [[ ${DEMO_KEEP:-0} == 1 ]] && echo "logs kept in $work" || rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- preflight ---------------------------------------------------------
[[ $(id -u) == 0 ]] || die "needs root (network namespaces): run it as root" 2
for tool in ip openssl socat curl; do
    command -v "$tool" >/dev/null || die "$tool is missing: scripts/install-deps.sh (as root) installs it" 2
done
if [[ -n ${LBD_BIN:-} ]]; then
    lbd=$LBD_BIN
else
    bold "building lbd (cargo build --release)"
    (cd "$repo" && cargo build --release --bin lbd) || die "build failed" 2
    lbd=${CARGO_TARGET_DIR:-$repo/target}/release/lbd
fi
[[ -x $lbd ]] || die "no lbd binary at $lbd" 2
say "$("$lbd" version)"
say "work directory (logs): $work"

# ---- network: one bridge in its own namespace, nothing on the host -------
bold "three nodes and a client on a bridge ($NET.0/24, VIP $VIP)"
ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up
attach() { # namespace address port-name
    ip netns add "$1"
    ip -n "$SW" link add "$3" type veth peer name eth0 netns "$1"
    ip -n "$SW" link set "$3" master br0 up
    ip -n "$1" link set lo up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
}
for i in "${NODES[@]}"; do
    attach "${P}n$i" "$NET.$i" "port$i"
    say "node$i  ${P}n$i  $NET.$i"
done
attach "$CLIENT" "$NET.10" portc
say "client ${CLIENT} $NET.10"

# ---- a CA and one apiserver certificate per node -------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=demo-ca \
    -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
for i in "${NODES[@]}"; do
    d=$work/n$i
    mkdir -p "$d"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
    # As a kubeadm apiserver certificate: the control-plane endpoint (VIP)
    # and the node addresses.
    printf 'subjectAltName=DNS:kubernetes,IP:%s,IP:%s,IP:%s,IP:%s\n' "$VIP" "$NET.1" "$NET.2" "$NET.3" > "$d/san.ext"
    openssl x509 -req -in "$d/apiserver.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
        -CAcreateserial -days 1 -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
done

# ---- the apiservers: socat forks one TLS handler per connection, so a
# half-open connection from a dead node cannot stall the others (openssl
# s_server serves one connection at a time and would).
cat > "$work/apiserver.sh" <<'EOF'
#!/bin/sh
# One HTTP exchange on stdin/stdout: GET /healthz -> 200 ok, else 404.
read -r method path rest || exit 0
cr=$(printf '\r')
while IFS= read -r h; do h=${h%"$cr"}; [ -z "$h" ] && break; done
if [ "$path" = /healthz ]; then status="200 OK" body=ok; else status="404 Not Found" body="not found"; fi
printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$status" "${#body}" "$body"
EOF
chmod +x "$work/apiserver.sh"
declare -A apiserver lbdpid
start_apiserver() {
    local i=$1 d=$work/n$1
    ip netns exec "${P}n$i" socat -T 5 \
        "OPENSSL-LISTEN:6443,fork,reuseaddr,cert=$d/apiserver.crt,key=$d/apiserver.key,verify=0" \
        "EXEC:$work/apiserver.sh" >"$d/apiserver.log" 2>&1 &
    apiserver[$i]=$!
    pids+=("$!")
    disown "$!"
}
for i in "${NODES[@]}"; do start_apiserver "$i"; done

# ---- lbd on each node ------------------------------------------------------
write_config() { # node priority
    local i=$1
    cat > "$work/n$i/lbd.yaml" <<EOF
node:
  name: node$i
vrrp:
  instances:
    - name: apiserver
      interface: eth0
      vrid: 51
      priority: $2
      advert_interval: $ADVERT
      virtual_ips: [$VIP/24]
      track:
        - listener: apiserver
          weight: -50
tcplb:
  shutdown_grace: 3s
  listeners:
    - name: apiserver
      bind: 0.0.0.0:8443
      backends: [$NET.1:6443, $NET.2:6443, $NET.3:6443]
      health:
        type: https
        path: /healthz
        interval: $HEALTH_INTERVAL
        timeout: 1s
        rise: 1
        fall: 2
        tls: { ca_file: $work/ca.crt, server_name: kubernetes }
admin:
  socket: $work/n$i/lbd.sock
  listen: 127.0.0.1:9440
EOF
}
start_lbd() {
    local i=$1
    ip netns exec "${P}n$i" env RUST_LOG=${RUST_LOG:-info} \
        "$lbd" run -c "$work/n$i/lbd.yaml" >>"$work/n$i/lbd.log" 2>&1 &
    lbdpid[$i]=$!
    pids+=("$!")
    disown "$!"
}
for i in "${NODES[@]}"; do
    write_config "$i" $((110 - 10 * i))
    "$lbd" check -c "$work/n$i/lbd.yaml" >/dev/null || die "node$i: invalid config" 2
    start_lbd "$i"
done

status_json() { "$lbd" status --json --answered --socket "$work/n$1/lbd.sock" 2>/dev/null; }
state_of() { status_json "$1" | sed -n 's/.*"state": *"\([A-Z]*\)".*/\1/p' | head -n1; }
wait_for() { # seconds description command...
    local secs=$1 what=$2 end
    shift 2
    end=$(( $(date +%s) + secs ))
    until "$@"; do
        (( $(date +%s) < end )) || { say "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.1
    done
}
all_answer() { for i in "${NODES[@]}"; do status_json "$i" >/dev/null || return 1; done; }
wait_for "$DEADLINE" "lbd to answer on every node" all_answer \
    || { tail -n 20 "$work"/n*/lbd.log; die "lbd did not start" 1; }

# VRRP may not be in this build yet: then `status` lists no instance and the
# demo shows the balancer's failover only.
vrrp=1
has_vrrp() { status_json 1 | tr -d ' \n' | grep -q '"vrrp":\[{'; }
if ! wait_for 3 "VRRP instances in lbd status" has_vrrp; then
    vrrp=0
    [[ ${DEMO_REQUIRE_VRRP:-0} == 1 ]] && die "DEMO_REQUIRE_VRRP=1 but lbd runs no VRRP instance" 1
    bold "this lbd build has no VRRP speaker yet: showing the balancer's failover only"
fi

masters() { for i in "${NODES[@]}"; do [[ $(state_of "$i") == MASTER ]] && echo "$i"; done; return 0; }
one_master() { [[ $(masters | wc -l) == 1 ]]; }

if [[ $vrrp == 1 ]]; then
    bold "waiting for the nodes to elect a master"
    wait_for "$DEADLINE" "one master" one_master || die "no master elected" 1
    master=$(masters)
    say "node$master is MASTER and holds $VIP"
    target=$VIP
else
    master=1
    target=$NET.1
fi

# ---- the client ------------------------------------------------------------
bold "client: GET https://$target:8443/healthz every ${PAUSE}s"
ip netns exec "$CLIENT" bash -c '
    for ((n = 0; n < 100000; n++)); do
        [[ -e $4 ]] && exit 0
        if curl -s -o /dev/null --max-time "$2" --cacert "$3" "https://$1:8443/healthz"; then r=ok; else r=FAIL; fi
        echo "$(date +%s%3N) $r"
        sleep "$5"
    done' _ "$target" "$CURL_TIMEOUT" "$work/ca.crt" "$work/stop-client" "$PAUSE" \
    >"$work/client.log" 2>&1 &
client_pid=$!
pids+=("$client_pid")
disown "$client_pid"
client_ok_since() { # ms: an ok line newer than that
    awk -v t="$1" '$1 > t && $2 == "ok" { found = 1 } END { exit !found }' "$work/client.log"
}
t0=$(now_ms)
wait_for "$DEADLINE" "the client's first answer" client_ok_since "$t0" || die "the client never got through" 1
say "the client gets 200 through lbd"

show_status() {
    for i in "${NODES[@]}"; do
        printf '\n   --- lbd status on node%s\n' "$i"
        if [[ $i == "${gone:-}" ]]; then say "(node is down)"; continue; fi
        "$lbd" status --socket "$work/n$i/lbd.sock" 2>&1 | sed 's/^/   /' || true
    done
}
bold "lbd status on each node"
gone=
sleep 1
show_status

# outage MS_FROM: the client's failures after MS_FROM and when it got through again
outage() {
    awk -v t="$1" '$1 > t {
            if ($2 == "FAIL") { if (!first) first = $1; fails++ }
            else if (first && !back) back = $1
        }
        END {
            if (!first) { print "no failed request"; exit 0 }
            if (!back) { print "still failing: " fails " failed requests"; exit 1 }
            printf "%d failed requests, %.1fs without service\n", fails, (back - first) / 1000
        }' "$work/client.log"
}

if [[ $vrrp == 1 ]]; then
    bold "killing the master node$master (lbd, apiserver, and its link: the node is gone)"
    t_kill=$(now_ms)
    kill -KILL "${lbdpid[$master]}" "${apiserver[$master]}" 2>/dev/null || true
    ip -n "$SW" link set "port$master" down
    gone=$master
    new_master() { local m; m=$(masters); [[ -n $m && $m != "$gone" && $(wc -l <<<"$m") == 1 ]]; }
    if wait_for "$DEADLINE" "a new master" new_master; then
        new=$(masters)
        say "node$new took over after $(( $(now_ms) - t_kill )) ms (as seen by polling)"
    else
        failed=1
    fi
    if [[ $failed == 0 ]] && wait_for "$DEADLINE" "the client to get through again" client_ok_since "$(now_ms)"; then
        say "client: $(outage "$t_kill")"
    else
        failed=1
        say "client: $(outage "$t_kill" || true)"
    fi
    bold "lbd status after the failover"
    show_status

    if [[ $failed == 0 ]]; then
        bold "stopping lbd on node$new gracefully (SIGTERM, as systemctl stop does): it gives up the VIP"
        t_stop=$(now_ms)
        kill -TERM "${lbdpid[$new]}"
        old_new=$new
        next_master() { local m; m=$(masters); [[ -n $m && $m != "$gone" && $m != "$old_new" ]]; }
        if wait_for "$DEADLINE" "the last node to take over" next_master; then
            say "node$(masters) took over after $(( $(now_ms) - t_stop )) ms"
            wait_for "$DEADLINE" "the client to get through again" client_ok_since "$(now_ms)" || failed=1
            say "client: $(outage "$t_stop" || true)"
        else
            failed=1
        fi
    fi
else
    bold "killing the apiserver on node1: the balancer routes around it"
    t_kill=$(now_ms)
    kill -KILL "${apiserver[1]}"
    backend_down() { status_json 1 | tr -d ' \n' | grep -q "\"address\":\"$NET.1:6443\",\"healthy\":false"; }
    wait_for "$DEADLINE" "node1's balancer to mark $NET.1:6443 down" backend_down || failed=1
    sleep 1
    wait_for "$DEADLINE" "the client to get through again" client_ok_since "$(now_ms)" || failed=1
    say "client: $(outage "$t_kill" || true)"
    bold "lbd status after the failure"
    show_status
fi

touch "$work/stop-client"
if [[ $failed == 1 ]]; then
    bold "FAILOVER FAILED"
    for i in "${NODES[@]}"; do printf '\n--- node%s lbd.log (tail)\n' "$i"; tail -n 15 "$work/n$i/lbd.log"; done
    exit 1
fi
bold "done: failover worked; cleaning up"
exit 0
