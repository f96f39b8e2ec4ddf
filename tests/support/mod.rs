//! Shared test support.
#![allow(dead_code)]
pub mod apiserver;
pub mod kube_cluster;
pub mod kube_objects;
