//! The config file: model, loading and validation.
