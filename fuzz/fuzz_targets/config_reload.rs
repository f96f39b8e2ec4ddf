//! The config's reload path on arbitrary text: the running file and the
//! edited one (split at the first NUL byte), each parsed as `lbd reload`
//! and SIGHUP parse them. Properties: no panic; every error prints one
//! `fuzz.yaml:LINE:COL: message` line per problem, LINE and COL from 1; a
//! valid config round-trips: its YAML tree written out again (flow style,
//! every string quoted) parses to the same `Config`, so the meaning of a
//! file never hangs on layout; and two files whose trees write out the
//! same are the same config (the reload's "nothing changed").
//!
//! The reload decision itself (which instances and listeners change) is
//! made inside the async runners today (app.rs, vrrp::driver::VrrpRunner::
//! apply): when it becomes a pure function of (old, new), it belongs here.
#![no_main]

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::PathBuf;

use lbd::config::yaml::{parse_document, Node, Value};
use lbd::config::{parse, Config, Environment};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "fuzz.yaml";

fn env() -> Environment {
    // The files the example configs name exist; nothing else does.
    let files: BTreeSet<PathBuf> = [
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/lbd-proxy.kubeconfig",
        "/etc/kubernetes/admin.conf",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    Environment {
        hostname: "fuzz".into(),
        existing_files: Some(files),
    }
}

/// The tree as flow-style YAML (JSON with YAML's names for the special
/// floats): no layout, no plain scalars left to interpret.
fn render(n: &Node, out: &mut String) {
    match &n.value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => write!(out, "{i}").unwrap(),
        Value::Float(f) if f.is_nan() => out.push_str(".nan"),
        Value::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { ".inf" } else { "-.inf" }),
        Value::Float(f) => write!(out, "{f:e}").unwrap(),
        Value::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
        Value::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, _, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(": ");
                render(v, out);
            }
            out.push('}');
        }
    }
}

fn rendered(text: &str) -> String {
    let tree = parse_document(text).expect("a valid config is valid YAML");
    let mut s = String::new();
    render(&tree, &mut s);
    s
}

/// Parses like a reload does; checks the error's form.
fn load(text: &str) -> Option<Config> {
    match parse(text, PATH, &env()) {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error with no problem");
            let shown = e.to_string();
            assert_eq!(shown.lines().count(), e.problems.len(), "{shown:?}");
            for line in shown.lines() {
                let rest = line
                    .strip_prefix("fuzz.yaml:")
                    .unwrap_or_else(|| panic!("{line:?}"));
                let mut f = rest.splitn(3, ':');
                let l: u64 = f
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap_or_else(|_| panic!("{line:?}"));
                let c: u64 = f
                    .next()
                    .unwrap_or("")
                    .parse()
                    .unwrap_or_else(|_| panic!("{line:?}"));
                assert!(l >= 1 && c >= 1, "no position: {line:?}");
                let msg = f.next().unwrap_or("");
                assert!(
                    msg.starts_with(' ') && msg.trim().len() > 1,
                    "no message: {line:?}"
                );
            }
            None
        }
    }
}

/// A valid config parses to itself once its layout is gone.
fn round_trip(text: &str, cfg: &Config) -> String {
    let flat = rendered(text);
    match parse(&flat, PATH, &env()) {
        Ok(again) => assert_eq!(&again, cfg, "{text:?} re-read as {flat:?}"),
        Err(e) => panic!("{text:?} re-read as {flat:?}: {e}"),
    }
    flat
}

fuzz_target!(|data: &[u8]| {
    let (old, new) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Ok(old), Ok(new)) = (std::str::from_utf8(old), std::str::from_utf8(new)) else {
        return;
    };
    let running = load(old);
    let next = load(new);
    if let (Some(a), Some(b)) = (&running, &next) {
        let (fa, fb) = (round_trip(old, a), round_trip(new, b));
        if fa == fb {
            assert_eq!(a, b, "same tree, different configs");
        }
    } else {
        for (text, cfg) in [(old, &running), (new, &next)] {
            if let Some(c) = cfg {
                round_trip(text, c);
            }
        }
    }
});
