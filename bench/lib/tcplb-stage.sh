# shellcheck shell=bash
# The stage both balancer benchmarks share (sourced by bench/tcplb-vs-haproxy.sh
# and bench/tcplb-cost.sh): a work directory cleaned up on exit, a CA and an
# ECDSA P-256 server certificate for 127.0.0.1, one nginx serving TLS on
# several ports (the backends), and the haproxy and lbd configs that put the
# same listeners in front of them. Loopback (127.0.0.1) only.

# Both proxies get the same connection limit, within the descriptor limit
# (haproxy needs 2 per session; lbd needs 2, plus 2 for a splice pipe).
MAXCONN=${MAXCONN:-4000}
# Where the load generators and backends run (taskset prefix); none by default.
declare -p LOAD_CPU >/dev/null 2>&1 || LOAD_CPU=()

ports_free() { # PORT...: exits 2 when one is taken
    local p
    for p in "$@"; do
        if [[ -n $(ss -Htln "sport = :$p") ]]; then
            echo "port $p is in use; set BASE_PORT" >&2
            exit 2
        fi
    done
}

# WORK (a fresh directory, removed on exit unless KEEP=1) and PIDS (every
# process started here, killed on exit). Changes into WORK.
stage_workdir() {
    WORK=$(mktemp -d /tmp/lbd-bench.XXXXXX)
    PIDS=()
    trap stage_cleanup EXIT
    trap 'echo "interrupted" >&2; exit 130' INT TERM
    cd "$WORK"
}
stage_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n ${WATCHDOG:-} ]] && kill "$WATCHDOG" 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}

# ca.crt, srv.crt and srv.key in WORK.
stage_certs() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.crt -days 2 -subj /CN=lbd-bench-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >srv.ext
    openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile srv.ext -out srv.crt 2>/dev/null
}

# stage_nginx WORKERS PORT...: one nginx with TLS on every PORT: /healthz 200,
# / a 1 KiB body from memory, keep-alive without a request limit, no TLS
# session reuse (every new connection is a full handshake). Runs under
# ${LOAD_CPU[@]} when set. `reuseport`: each worker has its own socket and
# the kernel spreads connections over them by hash. Without it the workers
# race for a burst of connects (wrk's 50 at once) and one often took most
# of them (2 against 261 CPU ticks in one run): the busy worker set req/s
# and the other CPU idled, by chance, for whichever proxy ran then.
stage_nginx() {
    local workers=$1 listen="" p
    shift
    for p in "$@"; do listen+="        listen 127.0.0.1:$p ssl reuseport;"$'\n'; done
    mkdir -p tmp
    local body
    body=$(head -c 1024 /dev/zero | tr "\0" x)
    cat >nginx.conf <<NGINX
worker_processes $workers;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $WORK/tmp;
    keepalive_requests 10000000;   # keep-alive test: no reconnects
    keepalive_timeout 300s;
    ssl_certificate $WORK/srv.crt;
    ssl_certificate_key $WORK/srv.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;         # every new connection is a full handshake
    ssl_session_tickets off;
    server {
$listen        location = /healthz { return 200 "ok\n"; }
        location / { return 200 "$body"; }
    }
}
NGINX
    "${LOAD_CPU[@]}" nginx -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" \
        -g 'daemon off;' &
    PIDS+=($!)
}

# stage_haproxy_cfg FILE HTTPS_PORT IPERF_PORT IPERF_BACKEND STATS_PORT THREADS INTER NGX_PORT...
# haproxy as the kubeadm HA guide runs it (mode tcp, httpchk /healthz over
# TLS without verification), plus a plain TCP listener for iperf3 and the
# stats page the benchmark polls.
stage_haproxy_cfg() {
    local file=$1 https=$2 iperf=$3 iperf_backend=$4 stats=$5 threads=$6 inter=$7 servers="" i=1 p
    shift 7
    for p in "$@"; do servers+="    server b$i 127.0.0.1:$p"$'\n'; i=$((i + 1)); done
    cat >"$file" <<HAPROXY
global
    nbthread $threads
    maxconn $MAXCONN
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h      # lbd has no idle timeout; haproxy needs one
    timeout server 1h
    option tcpka           # lbd sets TCP keepalive on both legs
    retries 2
    option redispatch
listen https
    bind 127.0.0.1:$https
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check check-ssl verify none inter $inter rise 2 fall 2
$servers
listen iperf
    bind 127.0.0.1:$iperf
    balance roundrobin
    server i1 127.0.0.1:$iperf_backend check inter $inter rise 2 fall 2
listen stats
    mode http
    bind 127.0.0.1:$stats
    timeout client 5s
    stats enable
    stats uri /
HAPROXY
}

# stage_lbd_cfg FILE SOCKET_NAME HTTPS_PORT IPERF_PORT IPERF_BACKEND INTERVAL NGX_PORT...
# The same two listeners in lbd.yaml: an https check of /healthz without
# verification (haproxy's `check-ssl verify none`), retries 2.
stage_lbd_cfg() {
    local file=$1 sock=$2 https=$3 iperf=$4 iperf_backend=$5 interval=$6 backends="" p
    shift 6
    for p in "$@"; do backends+="${backends:+, }127.0.0.1:$p"; done
    cat >"$file" <<LBD
node: { name: bench }
tcplb:
  listeners:
    - name: https
      bind: 127.0.0.1:$https
      balance: roundrobin
      backends: [$backends]
      health:
        type: https
        path: /healthz
        expect_status: 200
        interval: $interval
        timeout: 1s
        rise: 2
        fall: 2
        tls: { insecure_skip_verify: true }
      retries: 2
      max_connections: $MAXCONN
    - name: iperf
      bind: 127.0.0.1:$iperf
      balance: roundrobin
      backends: [127.0.0.1:$iperf_backend]
      health: { type: tcp, interval: $interval, rise: 2, fall: 2 }
admin:
  socket: $WORK/$sock.sock
  listen: ""
LBD
}

# worker_of PID: the process whose CPU the data path uses. `lbd run` is a
# supervisor and its worker (`lbd-worker`, src/supervisor.rs), which moves
# the bytes; any other PID (haproxy -db is one process) is itself.
worker_of() {
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        [[ $(cat /proc/"$c"/comm 2>/dev/null) == lbd-worker ]] && { echo "$c"; return; }
    done
    echo "$1"
}
