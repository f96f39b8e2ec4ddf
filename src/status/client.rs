//! `lbd status`: asks the running daemon over its unix socket and renders
//! the answer for people (a table) or scripts (JSON).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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
    #[error("lbd did not answer on {path} within {secs}s")]
    Timeout { path: String, secs: u64 },
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

/// What the daemon said to `POST /reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    /// The file was refused; the previous config still runs.
    Refused(String),
}

/// Asks the daemon at `socket` to reload its config file, and waits for
/// the outcome (a reload binds and reads files: 30 s at most).
pub async fn reload(socket: &Path) -> Result<ReloadOutcome, StatusError> {
    let (status, body) = request(socket, http::Method::POST, "/reload").await?;
    let said = String::from_utf8_lossy(&body).trim_end().to_string();
    match status {
        http::StatusCode::OK => Ok(ReloadOutcome::Applied),
        http::StatusCode::UNPROCESSABLE_ENTITY => Ok(ReloadOutcome::Refused(said)),
        other => Err(StatusError::Protocol {
            path: socket.display().to_string(),
            message: format!("HTTP {other}: {said}"),
        }),
    }
}

/// One HTTP/1.1 request on the admin socket, bounded in time (5 s for a
/// GET, 30 s for a POST, which waits for the reload); the answer's status
/// and body, whatever the status.
pub async fn request(
    socket: &Path,
    method: http::Method,
    uri: &str,
) -> Result<(http::StatusCode, Bytes), StatusError> {
    request_with(socket, method, uri, None).await
}

/// [`request`] with a JSON body.
pub async fn request_with(
    socket: &Path,
    method: http::Method,
    uri: &str,
    json: Option<Vec<u8>>,
) -> Result<(http::StatusCode, Bytes), StatusError> {
    let path = socket.display().to_string();
    let limit = if method == http::Method::GET { 5 } else { 30 };
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
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "lbd");
        if json.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
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
    tokio::time::timeout(Duration::from_secs(limit), work)
        .await
        .unwrap_or(Err(StatusError::Timeout { path, secs: limit }))
}

/// How `lbd status` shows the answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    pub json: bool,
    pub watch: bool,
    /// Degraded exits 0 too: only "did it answer" counts.
    pub answered: bool,
}

/// `lbd status`: prints the daemon's answer once, or every second until
/// SIGINT with `watch`; returns the exit code of the last answer (SPEC.md:
/// 0 healthy, 1 unreachable, 3 degraded).
pub async fn show(socket: &Path, how: Show) -> u8 {
    use std::io::{IsTerminal, Write};
    let redraw = how.watch && !how.json && std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut code = 1;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c(), if how.watch => return code,
        }
        let mut out = String::new();
        match fetch(socket).await {
            Ok(report) => {
                let reasons = degraded(&report);
                code = if reasons.is_empty() || how.answered {
                    0
                } else {
                    3
                };
                out = render(&report, &reasons, how);
            }
            Err(e) => {
                code = 1;
                eprintln!("{e}");
            }
        }
        if redraw {
            // Home and clear, then the table: a redraw in place, as watch(1).
            out.insert_str(0, "\x1b[H\x1b[2J");
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush());
        if !how.watch {
            return code;
        }
    }
}

/// One answer as `lbd status` prints it: the table and a line for each
/// reason it is degraded, or the JSON object (pretty once; one line each
/// when watching, for `jq` and log files).
fn render(report: &StatusReport, reasons: &[String], how: Show) -> String {
    if how.json {
        let mut s = if how.watch {
            serde_json::to_string(report)
        } else {
            serde_json::to_string_pretty(report)
        }
        .unwrap_or_default();
        s.push('\n');
        return s;
    }
    let mut s = render_table(report);
    for r in reasons {
        let _ = writeln!(s, "DEGRADED: {r}");
    }
    s
}

/// Why an answering lbd is not healthy, one reason each: a backend down, a
/// listener with none up, an instance in FAULT, the proxy not synced.
/// Empty: healthy. `lbd status` exits 3 when there is a reason. What the
/// operator did on purpose is none: a drained backend, a listener draining
/// after a reload removed it, a released VRRP instance.
pub fn degraded(r: &StatusReport) -> Vec<String> {
    let mut out = Vec::new();
    for v in &r.vrrp {
        if v.state == crate::vrrp::fsm::State::Fault {
            // The reason goes with it, so a page says what to fix without
            // a second look (a daemon from before `faults` sends none).
            let why = v
                .faults
                .iter()
                .map(|f| format!("{}: {}", f.reason, f.detail))
                .collect::<Vec<_>>()
                .join("; ");
            out.push(if why.is_empty() {
                format!("VRRP instance {} is in FAULT", v.name)
            } else {
                format!("VRRP instance {} is in FAULT ({why})", v.name)
            });
        }
    }
    for l in r.tcplb.iter().filter(|l| !l.draining) {
        // A drained backend is out by the operator's hand (maintenance:
        // its apiserver may well be stopped): no reason to page anyone.
        let down: Vec<String> = l
            .backends
            .iter()
            .filter(|b| !b.healthy && !b.drained)
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
            // The STATE column keeps SPEC.md's four names; why a FAULT
            // holds goes under the row, one line per fault, as the JSON's
            // `faults` has it.
            for f in &v.faults {
                let _ = writeln!(out, "    fault {}: {}", f.reason, f.detail);
            }
            if let Some(h) = &v.handover {
                let _ = writeln!(out, "    handover: {h}");
            }
            // A release is operator intent and says how it ends.
            if v.released {
                let _ = writeln!(
                    out,
                    "    released: priority 0 until \"lbd vrrp resume {}\"",
                    v.name
                );
            }
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
