//! The config file: model, loading and validation.
mod model;
pub use model::*;
