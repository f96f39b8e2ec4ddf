//! The config file: model, loading and validation.
pub mod kube_proxy;
mod model;
mod parse;
pub mod yaml;

pub use model::*;
pub use parse::{load, parse, parse_duration, ConfigError, DurationError, Environment, Problem};
