//! The EndpointSlice (discovery.k8s.io/v1) as the proxy stores it: the
//! fields it reads, decoded straight from the apiserver's JSON.
//!
//! At 10k Services the reflector stores are most of the proxy's memory,
//! and k8s-openapi's `Endpoint` is 352 bytes, most of it fields the proxy
//! never reads (targetRef alone is seven strings): 50 000 endpoints held
//! 16.8 MiB, and the one-label map of each slice a B-tree node (5.2 MiB at
//! 10k slices; docs/benchmarks.md, "kube-proxy vs lbd"). This type keeps
//! what `endpoints::port_endpoints` and the change tracking read, parses
//! the addresses once, and moves the service-name label out of the map.
//! It is only ever decoded: tests that create slices through an apiserver
//! use k8s-openapi's type, whose JSON this reads.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::model::SERVICE_NAME_LABEL;

/// One EndpointSlice: metadata without its service-name label (that is
/// [`EndpointSlice::service_name`]), the address type, ports, endpoints.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "WireSlice")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    /// The `kubernetes.io/service-name` label: the Service this slice
    /// belongs to (none: it belongs to no Service and is never proxied).
    pub service_name: Option<String>,
    /// `IPv4`, `IPv6` or `FQDN` (never proxied).
    pub address_type: String,
    pub endpoints: Option<Vec<SliceEndpoint>>,
    pub ports: Option<Vec<EndpointPort>>,
}

/// One endpoint of a slice, as `port_endpoints` reads it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// The addresses that parse (an address that does not is skipped, as
    /// it always was: it can be programmed nowhere).
    #[serde(default, deserialize_with = "parsed_addresses")]
    pub addresses: Vec<IpAddr>,
    pub conditions: Option<EndpointConditions>,
    pub hints: Option<EndpointHints>,
    pub node_name: Option<String>,
}

/// The slice as the apiserver sends it (unknown fields are skipped by
/// serde without being allocated).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSlice {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    address_type: String,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
}

impl From<WireSlice> for EndpointSlice {
    fn from(w: WireSlice) -> Self {
        let mut metadata = w.metadata;
        let service_name = metadata
            .labels
            .as_mut()
            .and_then(|l| l.remove(SERVICE_NAME_LABEL));
        if metadata.labels.as_ref().is_some_and(|l| l.is_empty()) {
            metadata.labels = None;
        }
        let mut endpoints = w.endpoints;
        if let Some(eps) = endpoints.as_mut() {
            // A list's vectors grow by doubling: up to half of them unused.
            eps.shrink_to_fit();
        }
        let mut ports = w.ports;
        if let Some(p) = ports.as_mut() {
            p.shrink_to_fit();
        }
        EndpointSlice {
            metadata,
            service_name,
            address_type: w.address_type,
            endpoints,
            ports,
        }
    }
}

fn parsed_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    let raw: Option<Vec<String>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect())
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str = "discovery.k8s.io/v1";
    const GROUP: &'static str = "discovery.k8s.io";
    const KIND: &'static str = "EndpointSlice";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "endpointslices";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
