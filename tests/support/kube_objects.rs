//! Kubernetes objects written through a real apiserver's API for the
//! proxy tests, and the IPVS table as comparable text. Services live in
//! `default`; every port's targetPort is its port + 8000; endpoints are
//! ready and on another node (`cp2`) unless a test says otherwise.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

pub struct Objects {
    pub services: Api<Service>,
    pub slices: Api<EndpointSlice>,
    pub nodes: Api<Node>,
}

impl Objects {
    pub fn new(client: kube::Client) -> Objects {
        Objects {
            services: Api::namespaced(client.clone(), "default"),
            slices: Api::namespaced(client.clone(), "default"),
            nodes: Api::all(client),
        }
    }

    pub async fn service(&self, v: Value) -> Service {
        let s: Service = serde_json::from_value(v).unwrap();
        self.services
            .create(&PostParams::default(), &s)
            .await
            .unwrap_or_else(|e| panic!("create Service {:?}: {e}", s.metadata.name))
    }

    pub async fn slice(&self, v: Value) {
        let s: EndpointSlice = serde_json::from_value(v).unwrap();
        self.slices
            .create(&PostParams::default(), &s)
            .await
            .unwrap_or_else(|e| panic!("create EndpointSlice {:?}: {e}", s.metadata.name));
    }

    /// A single-stack TCP ClusterIP Service on `port` and its slice
    /// `NAME-1` with `addrs`.
    pub async fn cluster_ip_service(&self, name: &str, ip: &str, port: u16, addrs: &[&str]) {
        self.service(cluster_ip(name, ip, ports(&[("http", "TCP", port, 0)])))
            .await;
        let slice_name = format!("{name}-1");
        self.slice(slice(
            name,
            &slice_name,
            "IPv4",
            &[("http", "TCP", port)],
            addrs,
        ))
        .await;
    }

    pub async fn set_endpoints(&self, slice: &str, endpoints: Value) {
        self.slices
            .patch(
                slice,
                &PatchParams::default(),
                &Patch::Merge(json!({ "endpoints": endpoints })),
            )
            .await
            .unwrap();
    }

    /// A Node with one InternalIP.
    pub async fn node(&self, name: &str, ip: &str) {
        self.node_with(name, &[ip], json!({})).await;
    }

    /// A Node with `labels` and these InternalIPs (one per family, the
    /// primary first).
    pub async fn node_with(&self, name: &str, ips: &[&str], labels: Value) {
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        self.nodes.create(&PostParams::default(), &n).await.unwrap();
        let mut addresses: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": name}));
        // Status is the kubelet's: written through the subresource.
        self.nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": addresses}})),
            )
            .await
            .unwrap();
    }

    /// The ingress IP a cloud controller would write.
    pub async fn load_balancer_ip(&self, service: &str, ip: &str) {
        self.services
            .patch_status(
                service,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
            )
            .await
            .unwrap();
    }

    pub async fn delete_service(&self, name: &str) {
        self.services
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// Service ports: (name, protocol, port, nodePort or 0 for none).
pub fn ports(list: &[(&str, &str, u16, u16)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(name, proto, port, np)| {
                let mut p = json!({"name": name, "protocol": proto, "port": port,
                                   "targetPort": port + 8000});
                if *np != 0 {
                    p["nodePort"] = json!(np);
                }
                p
            })
            .collect(),
    )
}

/// A slice of `svc` for one family: (name, protocol, service port) each
/// becomes endpoint port service port + 8000.
pub fn slice(
    svc: &str,
    name: &str,
    family: &str,
    ports: &[(&str, &str, u16)],
    addrs: &[&str],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc,
                                "endpointslice.kubernetes.io/managed-by": "lbd-test"}},
        "addressType": family,
        "ports": ports.iter().map(|(n, p, port)| json!({"name": n, "protocol": p, "port": port + 8000})).collect::<Vec<_>>(),
        "endpoints": endpoints(addrs),
    })
}

/// Ready endpoints on another node.
pub fn endpoints(addrs: &[&str]) -> Value {
    Value::Array(
        addrs
            .iter()
            .map(|a| json!({"addresses": [a], "nodeName": "cp2", "conditions": {"ready": true}}))
            .collect(),
    )
}

pub fn cluster_ip(name: &str, ip: &str, p: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": p}})
}

/// A table as sorted lines: each virtual server line followed by its
/// sorted real server lines, virtual servers sorted; blanks collapsed, so
/// expectations can be indented text and `ipvsadm -Ln` lines compare.
pub fn canonical<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for l in lines {
        let l = l.as_ref().split_whitespace().collect::<Vec<_>>().join(" ");
        if l.is_empty() {
            continue;
        }
        match (l.starts_with("->"), groups.last_mut()) {
            (true, Some(g)) => g.1.push(format!("  {l}")),
            _ => groups.push((l.to_string(), Vec::new())),
        }
    }
    groups.sort();
    groups
        .into_iter()
        .flat_map(|(vs, mut rs)| {
            rs.sort();
            std::iter::once(vs).chain(rs)
        })
        .collect()
}

/// `ipvsadm -Ln` output as [`canonical`] lines: header and counters
/// dropped.
pub fn canonical_ipvsadm(out: &str) -> Vec<String> {
    canonical(out.lines().skip(3).map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.first() {
            // -> ADDR:PORT Forward Weight ActiveConn InActConn
            Some(&"->") => f[..f.len().min(4)].join(" "),
            _ => f.join(" "),
        }
    }))
}
