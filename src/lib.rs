//! lbd: one daemon for Kubernetes control-plane nodes.
//!
//! `vrrp` holds the apiserver VIP, `tcplb` + `health` replace haproxy, `proxy`
//! replaces kube-proxy in IPVS mode. Only `app` knows every subsystem; `vrrp`
//! and `proxy` never import each other; pure modules import no I/O.
#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod doctor;
pub mod health;
pub mod import;
pub mod label;
pub mod manifest;
pub mod proxy;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod tcplb;
pub mod vrrp;
