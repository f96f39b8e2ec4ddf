//! Any bytes as a config file, and as the KubeProxyConfiguration it names:
//! errors with positions, never a panic, never a half-applied merge.
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
        let base = lbd::config::parse("proxy: {}\n", "base.yaml", &env)
            .ok()
            .and_then(|c| c.proxy)
            .expect("the base config parses");
        let mut proxy = base.clone();
        if let Err(problems) = lbd::config::kube_proxy::apply(text, "kpc.yaml", &mut proxy) {
            assert!(!problems.is_empty());
            assert_eq!(proxy, base);
        }
    }
});
