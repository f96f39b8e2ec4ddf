//! Any bytes as a config file: errors with positions, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = lbd::config::Environment {
            hostname: "fuzz".into(),
            existing_files: Some(Default::default()),
        };
        if let Err(e) = lbd::config::parse(text, "fuzz.yaml", &env) {
            assert!(!e.problems.is_empty());
        }
    }
});
