//! What the integration tests share, one module tree for all of them
//! (`mod support;` in each test file):
//!
//! - `config`: the config file, section by section (the builders tests
//!   used to copy between files).
//! - `lbd`: the real `lbd` binary in a temp dir, and `eventually`.
//! - `pki`, `backends`: a test PKI and the HTTPS / TCP backends the
//!   balancer tests run against.
//! - `netns`, `vrrp`, `keepalived`: network-namespace labs (root), VIP
//!   watching and RFC 5798 timers, Debian's keepalived as a peer;
//!   `cluster`: lbd nodes on a bridge; `wire`: what goes over a link,
//!   captured in a namespace.
//! - `apiserver`: an in-process Kubernetes API server (list/watch).
//! - `kube_cluster`, `kube_objects`: real etcd + kube-apiserver on loopback
//!   (Go-built peers; skipped where absent) and the objects the proxy tests
//!   put through them.
//! - `vm`: whether the test runs inside the qemu VM (tests/vm/README.md).
//!
//! Each test file uses a part of it; the rest is dead code there.
#![allow(dead_code)]

pub mod apiserver;
pub mod backends;
pub mod cluster;
pub mod config;
pub mod keepalived;
pub mod kube_cluster;
pub mod kube_objects;
pub mod lbd;
pub mod netns;
pub mod nsrun;
pub mod ping_client;
pub mod pki;
pub mod proxy_diff;
pub mod proxy_vm;
pub mod vm;
pub mod vrrp;
pub mod wire;
