//! The status JSON is a contract (SPEC.md: fields may be added, never
//! renamed): a full report, every field set, against a golden file, both
//! ways. `LBD_BLESS=1` rewrites the golden (review the diff: a changed name
//! or value breaks scripts that read `lbd status --json`).

use std::path::Path;

use lbd::config::{Balance, TrackTarget};
use lbd::status::*;
use lbd::vrrp::fsm::{Fault, State};

fn full_report() -> StatusReport {
    StatusReport {
        node: "cp1".into(),
        version: "0.1.0".into(),
        uptime_seconds: 42,
        vrrp: vec![
            VrrpInstanceStatus {
                name: "apiserver".into(),
                interface: "eth0".into(),
                vrid: 51,
                state: State::Master,
                priority: 100,
                effective_priority: 50,
                virtual_ips: vec!["10.31.90.0/24".parse().unwrap()],
                master: Some("10.31.90.1".parse().unwrap()),
                transitions: 1,
                since_seconds: 40,
                version: 3,
                advert_interval_ms: 1000,
                peers: vec![VrrpPeerStatus {
                    address: "10.31.90.2".parse().unwrap(),
                    priority: 90,
                    advert_interval_ms: 1000,
                    last_heard_seconds_ago: 0.25,
                }],
                tracks: vec![
                    TrackStatus {
                        target: TrackTarget::Listener("apiserver".into()),
                        weight: -50,
                        failing: true,
                    },
                    TrackStatus {
                        target: TrackTarget::Interface("eth0".into()),
                        weight: -50,
                        failing: false,
                    },
                ],
                faults: Vec::new(),
                released: false,
                handover: None,
            },
            VrrpInstanceStatus {
                name: "v6".into(),
                interface: "eth1".into(),
                vrid: 52,
                state: State::Fault,
                priority: 100,
                effective_priority: 100,
                virtual_ips: vec!["fd00:db8::100/64".parse().unwrap()],
                master: None,
                transitions: 0,
                since_seconds: 0,
                version: 3,
                advert_interval_ms: 100,
                peers: Vec::new(),
                tracks: Vec::new(),
                faults: vec![VrrpFaultStatus {
                    reason: Fault::VipForeign,
                    detail:
                        "fd00:db8::100/64 configured on eth1 by someone else (lbd never touches it)"
                            .into(),
                }],
                released: true,
                handover: None,
            },
        ],
        tcplb: vec![ListenerStatus {
            name: "apiserver".into(),
            bind: "0.0.0.0:8443".parse().unwrap(),
            active_connections: 3,
            backends: vec![
                BackendStatus {
                    address: "10.31.90.1:6443".parse().unwrap(),
                    healthy: true,
                    active_connections: 1,
                    last_error: None,
                    since_seconds: 40,
                    last_check_latency_ms: Some(3.5),
                    total_connections: 10,
                    down_reason: None,
                    drained: true,
                },
                BackendStatus {
                    address: "[fd00:db8::2]:6443".parse().unwrap(),
                    healthy: false,
                    active_connections: 0,
                    last_error: Some("connect: Connection refused (os error 111)".into()),
                    since_seconds: 7,
                    last_check_latency_ms: None,
                    total_connections: 2,
                    down_reason: Some(DownReason::Passive),
                    drained: false,
                },
            ],
            balance: Balance::LeastConn,
            total_connections: 12,
            refused_no_backend: 1,
            draining: false,
            check: "https verified".into(),
            hedged_connects: 4,
            hedge_wins: 3,
            hedge_delay_ms: 10.0,
        }],
        proxy: Some(ProxyStatus {
            mode: ProxyDataPlane::Ipvs,
            synced: true,
            services: 12,
            real_servers: 30,
            last_sync_seconds_ago: Some(2),
            last_sync_duration_ms: Some(3.1),
            last_error: None,
        }),
        config: ConfigStatus {
            path: "/etc/lbd/lbd.yaml".into(),
            reloads_ok: 2,
            reloads_failed: 1,
            last_reload_error: Some("/etc/lbd/lbd.yaml:4:13: bind: invalid \"nonsense\"".into()),
            last_reload_seconds_ago: Some(5),
        },
    }
}

#[test]
fn full_report_serializes_to_the_golden_json_and_back() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/status/report.json");
    let got = serde_json::to_string_pretty(&full_report()).unwrap() + "\n";
    if std::env::var_os("LBD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (LBD_BLESS=1 creates it)", golden.display()));
    assert_eq!(got, want, "status JSON drifted from {}", golden.display());
    let back: StatusReport = serde_json::from_str(&want).unwrap();
    assert_eq!(back, full_report());
}

/// The table `lbd status` prints for the same report (the golden was
/// rendered by the String-typed report of before: padding and all).
#[test]
fn full_report_renders_as_the_golden_table() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/status/report.txt");
    let got = lbd::status::client::render_table(&full_report());
    if std::env::var_os("LBD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(got, want, "status table drifted from {}", golden.display());
}

#[test]
fn every_down_reason_has_its_name() {
    let names: Vec<String> = DownReason::ALL
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["check", "passive", "hedge", "peer_gone"]);
}

#[test]
fn every_vrrp_state_has_its_spec_name() {
    let names: Vec<String> = State::ALL
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["INIT", "BACKUP", "MASTER", "FAULT"]);
}

#[test]
fn every_balance_and_track_target_reads_back() {
    for (balance, name) in [
        (Balance::RoundRobin, "roundrobin"),
        (Balance::LeastConn, "leastconn"),
        (Balance::Source, "source"),
        (Balance::Random, "random"),
    ] {
        let mut r = full_report();
        r.tcplb[0].balance = balance;
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tcplb"][0]["balance"], name);
        let back: StatusReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.tcplb[0].balance, balance);
    }
    let v = serde_json::to_value(full_report()).unwrap();
    assert_eq!(v["vrrp"][0]["tracks"][0]["target"], "listener:apiserver");
    assert_eq!(v["vrrp"][0]["tracks"][1]["target"], "interface:eth0");
    let mut bad = v.clone();
    bad["vrrp"][0]["tracks"][0]["target"] = "script:x".into();
    assert!(serde_json::from_value::<StatusReport>(bad).is_err());
    // A report without the fields added after the first release still reads.
    let mut old = v;
    for k in [
        "balance",
        "total_connections",
        "refused_no_backend",
        "draining",
        "check",
        "hedged_connects",
        "hedge_wins",
        "hedge_delay_ms",
    ] {
        old["tcplb"][0].as_object_mut().unwrap().remove(k);
    }
    for k in ["down_reason", "drained"] {
        old["tcplb"][0]["backends"][1]
            .as_object_mut()
            .unwrap()
            .remove(k);
    }
    let r: StatusReport = serde_json::from_value(old).unwrap();
    assert_eq!(r.tcplb[0].balance, Balance::RoundRobin);
    assert_eq!(
        (
            r.tcplb[0].backends[1].down_reason,
            r.tcplb[0].backends[1].drained
        ),
        (None, false)
    );
}

/// `lbd status` exits 3 when `degraded` gives a reason (SPEC.md: a backend
/// down, the proxy not synced, an instance in FAULT); what the operator did
/// on purpose gives none.
#[test]
fn degraded_reasons_are_faults_not_operator_intent() {
    use lbd::status::client::degraded;
    let r = full_report();
    assert_eq!(
        degraded(&r),
        [
            "VRRP instance v6 is in FAULT (vip_foreign: fd00:db8::100/64 configured on eth1 \
             by someone else (lbd never touches it))",
            "listener apiserver: 1 of 2 backends down ([fd00:db8::2]:6443)",
        ]
    );

    // The same node healthy: v6 a (released) BACKUP, the second backend up.
    // The first backend stays drained, v6 released: neither is a reason.
    let mut healthy = full_report();
    healthy.vrrp[1].state = State::Backup;
    healthy.vrrp[1].faults.clear();
    healthy.tcplb[0].backends[1].healthy = true;
    assert!(healthy.vrrp[1].released && healthy.tcplb[0].backends[0].drained);
    assert_eq!(degraded(&healthy), Vec::<String>::new());

    // FAULT alone: every fault's reason and detail, in order; none known
    // (a daemon from before `faults`): the bare state.
    let mut fault = healthy.clone();
    fault.vrrp[0].state = State::Fault;
    assert_eq!(degraded(&fault), ["VRRP instance apiserver is in FAULT"]);
    fault.vrrp[0].faults = vec![
        VrrpFaultStatus {
            reason: Fault::VipFailed,
            detail: "add 10.31.90.0/24 on eth0: Permission denied (os error 13)".into(),
        },
        VrrpFaultStatus {
            reason: Fault::LinkDown,
            detail: "eth0 has no carrier".into(),
        },
    ];
    assert_eq!(
        degraded(&fault),
        [
            "VRRP instance apiserver is in FAULT (vip_failed: add 10.31.90.0/24 on eth0: \
          Permission denied (os error 13); link_down: eth0 has no carrier)"
        ]
    );
    let table = lbd::status::client::render_table(&fault);
    let under: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("  apiserver "))
        .skip(1)
        .take(2)
        .collect();
    assert_eq!(
        under,
        [
            "    fault vip_failed: add 10.31.90.0/24 on eth0: Permission denied (os error 13)",
            "    fault link_down: eth0 has no carrier",
        ]
    );

    // The proxy not synced, with and without an error.
    let mut unsynced = healthy.clone();
    let p = unsynced.proxy.as_mut().unwrap();
    p.synced = false;
    assert_eq!(degraded(&unsynced), ["proxy (ipvs) not synced yet"]);
    unsynced.proxy.as_mut().unwrap().last_error = Some("list services: 403".into());
    assert_eq!(
        degraded(&unsynced),
        ["proxy (ipvs) not synced: list services: 403"]
    );

    // A drained backend that is down (its apiserver stopped for the
    // upgrade) is no reason; the same backend enabled again is.
    let mut drained_down = healthy.clone();
    drained_down.tcplb[0].backends[0].healthy = false;
    assert_eq!(degraded(&drained_down), Vec::<String>::new());
    drained_down.tcplb[0].backends[0].drained = false;
    assert_eq!(
        degraded(&drained_down),
        ["listener apiserver: 1 of 2 backends down (10.31.90.1:6443)"]
    );

    // A listener draining after a reload removed it: its backends no
    // longer matter, even all down.
    let mut draining = full_report();
    draining.vrrp[1].state = State::Backup;
    draining.tcplb[0].draining = true;
    for b in &mut draining.tcplb[0].backends {
        b.healthy = false;
    }
    assert_eq!(degraded(&draining), Vec::<String>::new());
}
