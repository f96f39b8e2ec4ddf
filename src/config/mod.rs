//! The config file: model, loading and validation.
//!
//! [`load`] is the one way the daemon and the command line read a config:
//! lbd.yaml, then the KubeProxyConfiguration its `proxy.kube_proxy_config`
//! names, merged into the proxy section. [`parse`] is the pure part, for
//! text already in memory.
mod error;
mod files;
pub mod kube_proxy;
mod load;
mod model;
mod parse;
pub mod yaml;

pub use error::{ConfigError, Problem};
pub use kube_proxy::KubeProxyConfigError;
pub use load::{
    api_server_from_vip, describe_credentials, load, load_with, load_with_warnings, LoadOptions,
    SERVICE_ACCOUNT_TOKEN,
};
pub use model::*;
pub use parse::{format_duration, parse, parse_duration, DurationError, Environment};
