//! `lbd status`: asks the running daemon over its unix socket and renders
//! the answer for people (a table) or scripts (JSON).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::report::StatusReport;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("lbd is not running: cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("lbd did not answer on {path} within 5s")]
    Timeout { path: String },
    #[error("lbd answered badly on {path}: {message}")]
    Protocol { path: String, message: String },
}

/// Fetches `/status` from the daemon at `socket`.
pub async fn fetch(socket: &Path) -> Result<StatusReport, StatusError> {
    let path = socket.display().to_string();
    let p = path.clone();
    let work = async move {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| StatusError::Connect {
                path: p.clone(),
                source,
            })?;
        let proto = |message: String| StatusError::Protocol {
            path: p.clone(),
            message,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(e.to_string()))?;
        tokio::spawn(conn);
        let req = http::Request::get("/status")
            .header(http::header::HOST, "lbd")
            .body(Empty::<Bytes>::new())
            .map_err(|e| proto(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(proto(format!("HTTP {}", resp.status())));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| proto(e.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or(Err(StatusError::Timeout { path }))
}

/// Why an answering lbd is not healthy, one reason each: a backend down, a
/// listener with none up, an instance in FAULT, the proxy not synced.
/// Empty: healthy. `lbd status` exits 3 when there is a reason.
pub fn degraded(r: &StatusReport) -> Vec<String> {
    let mut out = Vec::new();
    for v in &r.vrrp {
        if v.state == "FAULT" {
            out.push(format!("VRRP instance {} is in FAULT", v.name));
        }
    }
    for l in r.tcplb.iter().filter(|l| !l.draining) {
        let down: Vec<String> = l
            .backends
            .iter()
            .filter(|b| !b.healthy)
            .map(|b| b.address.to_string())
            .collect();
        if !down.is_empty() {
            out.push(format!(
                "listener {}: {} of {} backends down ({})",
                l.name,
                down.len(),
                l.backends.len(),
                down.join(", ")
            ));
        }
    }
    if let Some(p) = r.proxy.as_ref().filter(|p| !p.synced) {
        out.push(match &p.last_error {
            Some(e) => format!("proxy ({}) not synced: {e}", p.mode),
            None => format!("proxy ({}) not synced yet", p.mode),
        });
    }
    out
}

fn ago(secs: u64) -> String {
    let d = Duration::from_secs(secs);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", d.as_secs() / 60),
        _ => format!("{}h", d.as_secs() / 3600),
    }
}

/// The human view: who holds each VIP, which backends are up, proxy sync.
pub fn render_table(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lbd {} on {}, up {}",
        r.version,
        r.node,
        ago(r.uptime_seconds)
    );
    if let Some(err) = &r.config.last_reload_error {
        let _ = writeln!(
            out,
            "\nCONFIG RELOAD FAILED (still running the previous config):"
        );
        for line in err.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !r.vrrp.is_empty() {
        let _ = writeln!(out, "\nVRRP");
        let _ = writeln!(
            out,
            "  {:<16} {:<8} {:>4} {:<7} {:>9} {:<24} {:<18} {:>6} {:>6}",
            "INSTANCE", "IFACE", "VRID", "STATE", "PRIO", "VIPS", "MASTER", "SINCE", "TRANS"
        );
        for v in &r.vrrp {
            let prio = if v.priority == v.effective_priority {
                v.priority.to_string()
            } else {
                format!("{}/{}", v.effective_priority, v.priority)
            };
            let _ = writeln!(
                out,
                "  {:<16} {:<8} {:>4} {:<7} {:>9} {:<24} {:<18} {:>6} {:>6}",
                v.name,
                v.interface,
                v.vrid,
                v.state,
                prio,
                v.virtual_ips.join(","),
                v.master.as_deref().unwrap_or("-"),
                ago(v.since_seconds),
                v.transitions
            );
            for t in v.tracks.iter().filter(|t| t.failing) {
                let _ = writeln!(out, "    track {} FAILING (weight {})", t.target, t.weight);
            }
            for p in &v.peers {
                let _ = writeln!(
                    out,
                    "    peer {:<18} priority {:>3}  heard {:.1}s ago",
                    p.address, p.priority, p.last_heard_seconds_ago
                );
            }
        }
    }
    if !r.tcplb.is_empty() {
        let _ = writeln!(out, "\nLISTENERS");
        for l in &r.tcplb {
            let up = l.backends.iter().filter(|b| b.healthy).count();
            let _ = writeln!(
                out,
                "  {} {} ({}) {}/{} backends up, {} active, {} total, {} refused (no backend){}",
                l.name,
                l.bind,
                l.balance,
                up,
                l.backends.len(),
                l.active_connections,
                l.total_connections,
                l.refused_no_backend,
                if l.draining { ", DRAINING" } else { "" }
            );
            for b in &l.backends {
                let latency = b
                    .last_check_latency_ms
                    .map(|m| format!("{m:.1}ms"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "    {:<4} {:<24} {:>5} active  check {:>8}  for {:>5}  {}",
                    if b.healthy { "UP" } else { "DOWN" },
                    b.address,
                    b.active_connections,
                    latency,
                    ago(b.since_seconds),
                    b.last_error.as_deref().unwrap_or("")
                );
            }
        }
    }
    if let Some(p) = &r.proxy {
        let _ = writeln!(out, "\nPROXY");
        let _ = writeln!(
            out,
            "  mode {}  {}  {} services, {} real servers, last sync {} ago in {}",
            p.mode,
            if p.synced { "SYNCED" } else { "NOT SYNCED" },
            p.services,
            p.real_servers,
            p.last_sync_seconds_ago
                .map(ago)
                .unwrap_or_else(|| "never".into()),
            p.last_sync_duration_ms
                .map(|d| format!("{d:.1}ms"))
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(e) = &p.last_error {
            let _ = writeln!(out, "  last error: {e}");
        }
    }
    out
}
