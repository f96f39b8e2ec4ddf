//! The client and the VIP sampler of `bench/vrrp-failover.sh`.
//!
//! Runs inside the client's network namespace (`ip netns exec`). Two jobs:
//!
//! * **probe**: every `--interval-ms` it starts one HTTPS request
//!   (`GET /healthz`, `Connection: close`, CA-verified) to `--target`, without
//!   waiting for the previous ones, each bounded by `--timeout-ms`. Starting
//!   on a fixed clock (not after the previous request ended) is what makes the
//!   figure honest: a request that hangs on a dead node's MAC does not hide
//!   the moment the VIP works again. One line per request:
//!   `P <start_ms> <end_ms> ok|fail <what>`.
//! * **sampler**: every `--sample-ms` it lists the addresses of `eth0` in
//!   each `--node NAME=/run/netns/NS` over a netlink socket opened inside that
//!   namespace (no process forks, so sampling does not disturb the timing) and
//!   prints which nodes hold `--vip`: `S <t_ms> <holders>`, where a holder
//!   whose link is down (a dead node keeping a stale VIP) is written `~NAME`,
//!   one whose IPv4 VIP is hidden by lbd's handover grace (deprecated, no
//!   ARP answers: docs/vrrp.md) `%NAME`, and `-` means nobody.
//!
//! Times are Unix milliseconds, as the script's `date +%s%3N`. Stops when
//! `--stop-file` exists or after `--max-secs`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lbd::config::TlsConfig;
use lbd::health::client_config;
use lbd::sys::addr::Netlink;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

struct Args {
    target: SocketAddr,
    ca: PathBuf,
    server_name: String,
    interval: Duration,
    timeout: Duration,
    vip: IpAddr,
    sample: Duration,
    nodes: Vec<(String, PathBuf)>,
    out: PathBuf,
    stop_file: PathBuf,
    max: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = std::env::args().skip(1);
    let (mut target, mut ca, mut server_name, mut vip, mut out, mut stop_file) =
        (None, None, None, None, None, None);
    let (mut interval, mut timeout, mut sample, mut max) = (10u64, 200u64, 20u64, 600u64);
    let mut nodes = Vec::new();
    while let Some(flag) = a.next() {
        let mut value = || a.next().ok_or(format!("{flag} needs a value"));
        let ms = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--target" => target = Some(value()?.parse().map_err(|e| format!("{flag}: {e}"))?),
            "--ca" => ca = Some(PathBuf::from(value()?)),
            "--server-name" => server_name = Some(value()?),
            "--interval-ms" => interval = ms(value()?)?,
            "--timeout-ms" => timeout = ms(value()?)?,
            "--vip" => vip = Some(value()?.parse().map_err(|e| format!("{flag}: {e}"))?),
            "--sample-ms" => sample = ms(value()?)?,
            "--node" => {
                let v = value()?;
                let (name, path) = v.split_once('=').ok_or("--node NAME=PATH")?;
                nodes.push((name.to_string(), PathBuf::from(path)));
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--stop-file" => stop_file = Some(PathBuf::from(value()?)),
            "--max-secs" => max = ms(value()?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        target: target.ok_or("--target is required")?,
        ca: ca.ok_or("--ca is required")?,
        server_name: server_name.unwrap_or_else(|| "kubernetes".into()),
        interval: Duration::from_millis(interval.max(1)),
        timeout: Duration::from_millis(timeout.max(1)),
        vip: vip.ok_or("--vip is required")?,
        sample: Duration::from_millis(sample.max(1)),
        nodes,
        out: out.ok_or("--out is required")?,
        stop_file: stop_file.ok_or("--stop-file is required")?,
        max: Duration::from_secs(max),
    })
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// One request; Ok when the answer's status line is 200.
async fn request(
    connector: &tokio_rustls::TlsConnector,
    target: SocketAddr,
    name: ServerName<'static>,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect:{}", e.kind()))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls:{}", e.kind()))?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: apiserver\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write:{}", e.kind()))?;
    let mut answer = Vec::with_capacity(256);
    // The server closes after its answer; a reset after a full status line
    // still counts as an answer.
    let read = tls.read_to_end(&mut answer).await;
    if answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200") {
        return Ok(());
    }
    match read {
        Err(e) => Err(format!("read:{}", e.kind())),
        Ok(0) => Err("closed".into()),
        Ok(_) => Err("status".into()),
    }
}

/// Opens one netlink socket per node namespace on this (dedicated) thread,
/// then samples them until the stop file appears.
fn sampler(args: Arc<Args>, tx: mpsc::UnboundedSender<String>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(format!("E sampler runtime: {e}"));
            return;
        }
    };
    rt.block_on(async move {
        let mut socks = Vec::new();
        for (name, path) in &args.nodes {
            // The socket belongs to the namespace the thread is in when it
            // is created; the thread's own namespace no longer matters after.
            if let Err(e) = lbd::sys::netns::enter(path) {
                let _ = tx.send(format!("E enter {}: {e}", path.display()));
                return;
            }
            match Netlink::connect() {
                Ok(nl) => socks.push((name.clone(), nl)),
                Err(e) => {
                    let _ = tx.send(format!("E netlink in {name}: {e}"));
                    return;
                }
            }
        }
        let mut tick = tokio::time::interval(args.sample);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let end = tokio::time::Instant::now() + args.max;
        while tokio::time::Instant::now() < end && !args.stop_file.exists() {
            tick.tick().await;
            let t = unix_ms();
            let mut holders = Vec::new();
            for (name, nl) in &socks {
                // A node whose eth0 vanished counts as not holding anything;
                // the error is written so the analysis can see it.
                let link = match nl.link_by_name("eth0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(format!("E {t} {name} link: {e}"));
                        continue;
                    }
                };
                let addrs = match nl.addresses(link.index).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = tx.send(format!("E {t} {name} addresses: {e}"));
                        continue;
                    }
                };
                if let Some(a) = addrs.iter().find(|a| a.addr.addr() == args.vip) {
                    // `%`: an IPv4 VIP lbd keeps hidden for its handover
                    // grace (deprecated is its mark; no ARP answers).
                    holders.push(if !link.up {
                        format!("~{name}")
                    } else if a.addr.addr().is_ipv4() && a.deprecated {
                        format!("%{name}")
                    } else {
                        name.clone()
                    });
                }
            }
            let h = if holders.is_empty() {
                "-".to_string()
            } else {
                holders.join(",")
            };
            if tx.send(format!("S {t} {h}")).is_err() {
                return;
            }
        }
    });
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("failover_probe: {e}");
            std::process::exit(2);
        }
    };
    let tls = TlsConfig {
        ca_file: Some(args.ca.clone()),
        server_name: None,
        insecure_skip_verify: false,
        cert_file: None,
        key_file: None,
    };
    let config = match client_config(&tls) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("failover_probe: {e}");
            std::process::exit(2);
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = match ServerName::try_from(args.server_name.clone()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("failover_probe: server name: {e}");
            std::process::exit(2);
        }
    };
    let mut out = match std::fs::File::create(&args.out) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("failover_probe: {}: {e}", args.out.display());
            std::process::exit(2);
        }
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    if !args.nodes.is_empty() {
        let (a, t) = (args.clone(), tx.clone());
        std::thread::spawn(move || sampler(a, t));
    }
    let prober = {
        let args = args.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(args.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = tokio::time::Instant::now() + args.max;
            while tokio::time::Instant::now() < end && !args.stop_file.exists() {
                tick.tick().await;
                let (c, n, tx, target, timeout) = (
                    connector.clone(),
                    name.clone(),
                    tx.clone(),
                    args.target,
                    args.timeout,
                );
                tokio::spawn(async move {
                    let start = unix_ms();
                    let r = tokio::time::timeout(timeout, request(&c, target, n)).await;
                    let end = unix_ms();
                    let line = match r {
                        Ok(Ok(())) => format!("P {start} {end} ok -"),
                        Ok(Err(what)) => format!("P {start} {end} fail {what}"),
                        Err(_) => format!("P {start} {end} fail timeout"),
                    };
                    let _ = tx.send(line);
                });
            }
        })
    };
    // Lines are written as they come so the script can watch the file.
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    let _ = prober.await;
    // Let the requests still in flight finish (each is bounded).
    tokio::time::sleep(args.timeout + Duration::from_millis(50)).await;
    writer.abort();
}
