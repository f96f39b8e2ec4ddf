//! What is left here once the Service proxy moved to `proxy`: the
//! KubeProxyConfiguration reader, on its way to `config` (issue 11).

pub mod kubeproxy_config;
