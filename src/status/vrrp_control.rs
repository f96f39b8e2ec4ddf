//! `lbd vrrp release|resume [INSTANCE]` over the admin socket: `POST
//! /vrrp/release` or `/vrrp/resume`, `?instance=NAME` for one instance
//! (none: all). Root on the unix socket only. The answer is a
//! [`ControlReport`] as JSON: 200 when done, 404 for an unknown instance,
//! 409 when an instance did not answer, 403 for anyone but root.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::client::{request, StatusError};
use super::server::{text, Caller};
use crate::vrrp::{ControlReport, Verb, VrrpControl};

pub(super) async fn handle<B>(
    control: &VrrpControl,
    req: &Request<B>,
    verb: &str,
    caller: Caller,
) -> Response<Full<Bytes>> {
    let Some(verb) = Verb::from_name(verb) else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try POST /vrrp/release or /vrrp/resume\n",
        );
    };
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n");
    }
    if caller != Caller::Root {
        return text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "root only, on the admin unix socket\n",
        );
    }
    let instance = req.uri().query().and_then(instance_of);
    let report = control.apply(verb, instance.as_deref()).await;
    let status = match &report.refused {
        None => StatusCode::OK,
        Some(_) if report.done.is_empty() => StatusCode::NOT_FOUND,
        Some(_) => StatusCode::CONFLICT,
    };
    match serde_json::to_vec_pretty(&report) {
        Ok(body) => text(status, "application/json", body),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n",
        ),
    }
}

/// `instance=NAME` from a query string (names are plain: no escapes).
fn instance_of(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("instance="))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// What the daemon answered to a release or resume.
#[derive(Debug)]
pub enum VrrpAnswer {
    /// Done; the report says what each instance did.
    Done(ControlReport),
    /// Refused, with the reason.
    Refused(String),
}

/// Asks the daemon at `socket` to release or resume `instance` (None: all).
pub async fn send(
    socket: &Path,
    verb: Verb,
    instance: Option<&str>,
) -> Result<VrrpAnswer, StatusError> {
    let uri = match instance {
        Some(i) => format!("/vrrp/{}?instance={i}", verb.as_str()),
        None => format!("/vrrp/{}", verb.as_str()),
    };
    let (status, body) = request(socket, Method::POST, &uri).await?;
    let report: Option<ControlReport> = serde_json::from_slice(&body).ok();
    Ok(match (status.is_success(), report) {
        (true, Some(r)) => VrrpAnswer::Done(r),
        (
            _,
            Some(ControlReport {
                refused: Some(why), ..
            }),
        ) => VrrpAnswer::Refused(why),
        _ => VrrpAnswer::Refused(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    })
}

/// One line per instance, for people.
pub fn render(verb: Verb, r: &ControlReport) -> String {
    let mut out = String::new();
    for o in &r.done {
        let what = match (verb, o.changed) {
            (Verb::Release, true) => "released (priority 0 until resumed)",
            (Verb::Release, false) => "was released already",
            (Verb::Resume, true) => "resumed",
            (Verb::Resume, false) => "was not released",
        };
        out.push_str(&format!("{}: {what}; now {}\n", o.instance, o.state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_from_the_query() {
        assert_eq!(instance_of("instance=api").as_deref(), Some("api"));
        assert_eq!(instance_of("x=1&instance=v6").as_deref(), Some("v6"));
        assert_eq!(instance_of("instance="), None);
        assert_eq!(instance_of("other=1"), None);
    }
}
