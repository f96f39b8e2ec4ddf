//! Prints the nftables ruleset lbd renders for a small sample table.
use lbd::proxy::kernel::nft::{render, NftParams};
use lbd::proxy::model::Protocol;
use lbd::proxy::model::{DesiredState, DesiredVs, DestKey, ServiceKey, VirtualServer, VsKind};

fn main() {
    let mut d = DesiredState::default();
    let mut add =
        |a: &str, port: u16, proto, kind, local, ranges: Vec<&str>, rs: &[(&str, u16)]| {
            let addr = a.parse().unwrap();
            d.virtual_servers.insert(
                ServiceKey {
                    addr,
                    port,
                    protocol: proto,
                },
                std::sync::Arc::new(DesiredVs {
                    vs: VirtualServer::new(addr, port, proto, "rr"),
                    kind,
                    service: "default/x:".into(),
                    local_only: local,
                    source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
                    real_servers: rs
                        .iter()
                        .map(|(a, p)| {
                            (
                                DestKey {
                                    addr: a.parse().unwrap(),
                                    port: *p,
                                },
                                1,
                            )
                        })
                        .collect(),
                }),
            );
            if kind != VsKind::NodePort {
                d.bind_addresses.insert(addr);
            }
        };
    add(
        "10.96.0.1",
        443,
        Protocol::Tcp,
        VsKind::ClusterIp,
        false,
        vec![],
        &[("10.244.0.5", 6443)],
    );
    add(
        "10.96.0.10",
        53,
        Protocol::Udp,
        VsKind::ClusterIp,
        false,
        vec![],
        &[("10.244.0.6", 53)],
    );
    add(
        "203.0.113.50",
        80,
        Protocol::Tcp,
        VsKind::LoadBalancer,
        false,
        vec!["198.51.100.0/24"],
        &[("10.244.0.7", 8080)],
    );
    add(
        "192.168.1.10",
        30080,
        Protocol::Tcp,
        VsKind::NodePort,
        true,
        vec![],
        &[("10.244.0.7", 8080)],
    );
    add(
        "fd00:96::1",
        443,
        Protocol::Sctp,
        VsKind::ClusterIp,
        false,
        vec![],
        &[("fd00:244::5", 6443)],
    );
    let cidrs = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:244::/56".parse().unwrap(),
    ];
    let v = render(
        &d,
        &NftParams {
            cluster_cidrs: &cidrs,
            masquerade_all: false,
        },
    );
    let v = v.to_value().expect("render writes JSON");
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
}
