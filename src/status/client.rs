//! `lbd status`: asks the running daemon over its unix socket and renders
//! the answer for people (a table) or scripts (JSON).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::report::{ListenerStatus, ProxyStatus, StatusReport, VrrpInstanceStatus};

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
    let (status, body) = request(socket, http::Method::GET, "/status").await?;
    let proto = |message: String| StatusError::Protocol {
        path: socket.display().to_string(),
        message,
    };
    if !status.is_success() {
        return Err(proto(format!("HTTP {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| proto(e.to_string()))
}

/// One request to the daemon at `socket`: the answer's status and body,
/// whatever the status; within 5 s.
pub async fn request(
    socket: &Path,
    method: http::Method,
    uri: &str,
) -> Result<(http::StatusCode, Bytes), StatusError> {
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
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "lbd")
            .body(Empty::<Bytes>::new())
            .map_err(|e| proto(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or(Err(StatusError::Timeout { path }))
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
    render_vrrp(&mut out, &r.vrrp);
    render_listeners(&mut out, &r.tcplb);
    if let Some(p) = &r.proxy {
        render_proxy(&mut out, p);
    }
    out
}

/// Who holds each VIP, failing tracks, the peers heard.
fn render_vrrp(out: &mut String, vrrp: &[VrrpInstanceStatus]) {
    if !vrrp.is_empty() {
        let _ = writeln!(out, "\nVRRP");
        let _ = writeln!(
            out,
            "  {:<16} {:<8} {:>4} {:<7} {:>9} {:<24} {:<18} {:>6} {:>6}",
            "INSTANCE", "IFACE", "VRID", "STATE", "PRIO", "VIPS", "MASTER", "SINCE", "TRANS"
        );
        for v in vrrp {
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
                v.virtual_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                v.master.map_or_else(|| "-".to_string(), |m| m.to_string()),
                ago(v.since_seconds),
                v.transitions
            );
            for t in v.tracks.iter().filter(|t| t.failing) {
                let _ = writeln!(
                    out,
                    "    track {} FAILING (weight {})",
                    super::report::track_target_name(&t.target),
                    t.weight
                );
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
}

/// Which backends are up (and why not), sessions, refusals, the check.
fn render_listeners(out: &mut String, tcplb: &[ListenerStatus]) {
    if !tcplb.is_empty() {
        let _ = writeln!(out, "\nLISTENERS");
        for l in tcplb {
            let up = l.backends.iter().filter(|b| b.healthy).count();
            let _ = writeln!(
                out,
                "  {} {} ({}) {}/{} backends up, {} active, {} total, {} refused (no backend){}",
                l.name,
                l.bind,
                super::report::balance_name(l.balance),
                up,
                l.backends.len(),
                l.active_connections,
                l.total_connections,
                l.refused_no_backend,
                if l.draining { ", DRAINING" } else { "" }
            );
            if !l.check.is_empty() {
                let _ = writeln!(
                    out,
                    "    check {}; {} hedged connects ({} won), hedge after {:.1}ms",
                    l.check, l.hedged_connects, l.hedge_wins, l.hedge_delay_ms
                );
            }
            for b in &l.backends {
                let latency = b
                    .last_check_latency_ms
                    .map(|m| format!("{m:.1}ms"))
                    .unwrap_or_else(|| "-".into());
                // Why it is down (the reason, then the error) or that the
                // operator drained it, at the end of the line.
                let mut note = String::new();
                if b.drained {
                    note.push_str("DRAINED ");
                }
                if let (false, Some(r)) = (b.healthy, b.down_reason) {
                    let _ = write!(note, "[{r}] ");
                }
                note.push_str(b.last_error.as_deref().unwrap_or(""));
                let _ = writeln!(
                    out,
                    "    {:<4} {:<24} {:>5} active  check {:>8}  for {:>5}  {}",
                    if b.healthy { "UP" } else { "DOWN" },
                    b.address,
                    b.active_connections,
                    latency,
                    ago(b.since_seconds),
                    note.trim_end()
                );
            }
        }
    }
}

/// Whether the proxy is in sync.
fn render_proxy(out: &mut String, p: &ProxyStatus) {
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
