//! `lbd check` looks inside the files a config names (PEM certificates and
//! keys, the kubeconfig and its files), says which kubeconfig wins, and
//! answers keepalived's and haproxy's words with lbd's; and `lbd run`'s
//! logs: `--log-level`, `--log-format`, colour only on a terminal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};

fn lbd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lbd"))
        .args(args)
        .output()
        .unwrap()
}

/// `lbd check -c` of `config` written to `dir`: (exit code, stdout, stderr).
fn check(dir: &Path, config: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let cfg = dir.join("lbd.yaml");
    std::fs::write(&cfg, config).unwrap();
    let mut args = vec!["check", "-c", cfg.to_str().unwrap()];
    args.extend(extra);
    let out = lbd(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A self-signed certificate and its key, written as PEM.
fn cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn https_listener(tls: &str) -> String {
    format!(
        "tcplb:\n  listeners:\n    - name: api\n      bind: 127.0.0.1:8443\n      backends: [127.0.0.1:6443]\n      health:\n        type: https\n        tls: {{{tls}}}\n"
    )
}

#[test]
fn pem_files_are_parsed_and_the_key_must_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_key) = cert(dir.path(), "ca");
    let (client, client_key) = cert(dir.path(), "client");
    let (_, other_key) = cert(dir.path(), "other");
    let d = |p: &Path| p.display().to_string();

    let good = https_listener(&format!(
        "ca_file: {}, cert_file: {}, key_file: {}",
        d(&ca),
        d(&client),
        d(&client_key)
    ));
    let (code, out, err) = check(dir.path(), &good, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": ok (1 listener(s))"), "{out}");

    // Garbage where the CA should be, a key where a certificate should be,
    // another certificate's key: each at the key that names the file.
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let bad = https_listener(&format!(
        "ca_file: {}, cert_file: {}, key_file: {}",
        d(&garbage),
        d(&ca_key),
        d(&other_key)
    ));
    let (code, _, err) = check(dir.path(), &bad, &[]);
    assert_eq!(code, Some(1));
    let c = dir.path().join("lbd.yaml").display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{c}:8:24: tls.ca_file: {}: no PEM block in it (expected -----BEGIN ...-----)",
                d(&garbage)
            ),
            format!(
                "{c}:8:{}: tls.cert_file: {}: holds a private key where a certificate is expected",
                24 + d(&garbage).len() + 13,
                d(&ca_key)
            ),
        ],
        "{err}"
    );

    let mismatch = https_listener(&format!(
        "ca_file: {}, cert_file: {}, key_file: {}",
        d(&ca),
        d(&client),
        d(&other_key)
    ));
    let (code, _, err) = check(dir.path(), &mismatch, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "tls.key_file: {} does not belong to the certificate {}: their public keys differ",
            d(&other_key),
            d(&client)
        )),
        "{err}"
    );
    assert!(err.starts_with(&format!("{c}:8:")), "{err}");
}

/// Bootstrap: the CA is there, the client certificate and key are not
/// yet. Warnings (exit 0) saying what the check does meanwhile, each at
/// its key; a key whose certificate is still missing is not matched
/// against it (the check does that once both exist).
#[test]
fn a_client_certificate_that_does_not_exist_yet_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = cert(dir.path(), "ca");
    let (_, present_key) = cert(dir.path(), "client");
    let later = dir.path().join("later");
    let (crt, key) = (later.join("client.crt"), later.join("client.key"));
    let d = |p: &Path| p.display().to_string();
    let c = dir.path().join("lbd.yaml").display().to_string();

    let (code, out, err) = check(
        dir.path(),
        &https_listener(&format!(
            "ca_file: {}, cert_file: {}, key_file: {}",
            d(&ca),
            d(&crt),
            d(&key)
        )),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": ok (1 listener(s))"), "{out}");
    let meanwhile = "does not exist yet; until it appears the checks are a TLS handshake without a client certificate (verified if tls.ca_file exists), then HTTPS with the client certificate (watched, no reload needed)";
    let cert_col = 24 + d(&ca).len() + 13;
    let key_col = cert_col + d(&crt).len() + 12;
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!(
                "warning: {c}:8:{cert_col}: tls.cert_file: {} {meanwhile}",
                d(&crt)
            ),
            format!(
                "warning: {c}:8:{key_col}: tls.key_file: {} {meanwhile}",
                d(&key)
            ),
        ],
        "{err}"
    );

    // The key there, its certificate not yet: one warning, no mismatch.
    let (code, _, err) = check(
        dir.path(),
        &https_listener(&format!(
            "ca_file: {}, cert_file: {}, key_file: {}",
            d(&ca),
            d(&crt),
            d(&present_key)
        )),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("tls.cert_file: ") && err.contains("does not exist yet"),
        "{err}"
    );
}

fn kubeconfig(cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n{cluster}users:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
    )
}

fn proxy_with(kc: &Path) -> String {
    format!("proxy:\n  mode: ipvs\n  kubeconfig: {}\n", kc.display())
}

#[test]
fn kubeconfig_files_and_inline_data_are_checked_in_the_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = cert(dir.path(), "ca");
    let (client, client_key) = cert(dir.path(), "client");
    let (_, other_key) = cert(dir.path(), "other");
    let kc = dir.path().join("proxy.kubeconfig");
    let k = kc.display().to_string();

    // Relative paths are the kubeconfig's directory's, as kubectl reads them.
    std::fs::write(
        &kc,
        kubeconfig(
            "    server: https://10.0.0.1:6443\n    certificate-authority: ca.crt\n",
            "    client-certificate: client.crt\n    client-key: client.key\n",
        ),
    )
    .unwrap();
    let (code, out, err) = check(dir.path(), &proxy_with(&kc), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "kubeconfig {k} (from proxy.kubeconfig in lbd.yaml)"
        )),
        "{out}"
    );

    // A missing certificate, inline data that is not base64, a key that
    // is not the certificate's: each at its line and column in the
    // kubeconfig.
    let b64 = |p: &Path| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
    };
    std::fs::write(
        &kc,
        kubeconfig(
            "    server: https://10.0.0.1:6443\n    certificate-authority-data: '%%%'\n",
            &format!(
                "    client-certificate: /nonexistent/client.crt\n    client-key-data: {}\n",
                b64(&other_key)
            ),
        ),
    )
    .unwrap();
    let (code, _, err) = check(dir.path(), &proxy_with(&kc), &[]);
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        format!("{k}:7:33: certificate-authority-data: not base64: Invalid symbol 37, offset 0.")
    );
    assert_eq!(
        lines[1],
        format!("{k}:11:25: client-certificate: /nonexistent/client.crt does not exist")
    );
    assert!(
        lines[2].starts_with(&format!(
            "{k}:12:22: user \"u\": client-certificate and client-key go together"
        )),
        "{err}"
    );
    assert_eq!(lines.len(), 3, "{err}");

    std::fs::write(
        &kc,
        kubeconfig(
            &format!(
                "    server: https://10.0.0.1:6443\n    certificate-authority-data: {}\n",
                b64(&ca)
            ),
            &format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&client),
                b64(&other_key)
            ),
        ),
    )
    .unwrap();
    let (code, _, err) = check(dir.path(), &proxy_with(&kc), &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("{k}:11:30: user \"u\": client key and certificate do not belong together: their public keys differ")),
        "{err}"
    );

    // No current context, or a user with no credential at all.
    std::fs::write(
        &kc,
        kubeconfig("    server: https://10.0.0.1:6443\n", "    {}\n")
            .replace("current-context: x\n", "")
            .replace(
                "contexts:\n",
                "contexts:\n- name: other\n  context: {cluster: c, user: u}\n",
            ),
    )
    .unwrap();
    let (code, _, err) = check(dir.path(), &proxy_with(&kc), &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        format!(
            "{k}:1:1: current-context is not set: lbd (like kube-proxy) uses the current context"
        )
    );
    std::fs::write(
        &kc,
        kubeconfig(
            "    server: https://10.0.0.1:6443\n",
            "    username: \"\"\n",
        ),
    )
    .unwrap();
    let (_, _, err) = check(dir.path(), &proxy_with(&kc), &[]);
    assert!(
        err.contains("user \"u\" has no client certificate or token"),
        "{err}"
    );
    let _ = client_key;
}

/// flag > lbd.yaml > KubeProxyConfiguration > in-cluster, and `lbd check`
/// says which one and what it overrides.
#[test]
fn kubeconfig_precedence_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let token_user = "    token: abc\n";
    let server = "    server: https://10.0.0.1:6443\n";
    let write_kc = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, kubeconfig(server, token_user)).unwrap();
        p
    };
    let (from_yaml, from_kpc, from_flag) = (
        write_kc("a.kubeconfig"),
        write_kc("b.kubeconfig"),
        write_kc("c.kubeconfig"),
    );
    let kpc = dir.path().join("kp.yaml");
    std::fs::write(
        &kpc,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  kubeconfig: {}\n",
            from_kpc.display()
        ),
    )
    .unwrap();
    let both = format!(
        "proxy:\n  kube_proxy_config: {}\n  kubeconfig: {}\n",
        kpc.display(),
        from_yaml.display()
    );
    let (code, out, err) = check(dir.path(), &both, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "kubeconfig {} (from proxy.kubeconfig in lbd.yaml); overrides clientConnection.kubeconfig in the KubeProxyConfiguration {}",
            from_yaml.display(),
            from_kpc.display()
        )),
        "{out}"
    );
    let flag = from_flag.display().to_string();
    let (code, out, err) = check(dir.path(), &both, &["--kubeconfig", &flag]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "kubeconfig {flag} (from --kubeconfig); overrides proxy.kubeconfig in lbd.yaml {}; overrides clientConnection.kubeconfig in the KubeProxyConfiguration {}",
            from_yaml.display(),
            from_kpc.display()
        )),
        "{out}"
    );
    // Only the KubeProxyConfiguration's: used, and one that is missing is
    // reported there.
    let only_kpc = format!("proxy:\n  kube_proxy_config: {}\n", kpc.display());
    let (_, out, _) = check(dir.path(), &only_kpc, &[]);
    assert!(
        out.contains("(from clientConnection.kubeconfig in the KubeProxyConfiguration)"),
        "{out}"
    );
    std::fs::remove_file(&from_kpc).unwrap();
    let (code, _, err) = check(dir.path(), &only_kpc, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!(
            "{}:4:15: clientConnection.kubeconfig: {} does not exist",
            kpc.display(),
            from_kpc.display()
        )),
        "{err}"
    );
    // In-cluster on a host: no token, and the address would be the
    // ClusterIP the proxy programs itself.
    let (code, _, err) = check(dir.path(), "proxy:\n  mode: ipvs\n", &[]);
    assert_eq!(code, Some(1));
    if !Path::new(lbd::config::SERVICE_ACCOUNT_TOKEN).exists() {
        assert!(
            err.contains("lbd.yaml:2:3: proxy: no kubeconfig, and no service account token"),
            "{err}"
        );
    }
    assert!(
        err.contains("lbd.yaml:2:3: proxy: in-cluster credentials need proxy.api_server"),
        "{err}"
    );
    let (_, _, err) = check(
        dir.path(),
        "proxy:\n  mode: ipvs\n  api_server: https://10.31.90.0:8443\n",
        &[],
    );
    assert!(!err.contains("need proxy.api_server"), "{err}");
    let (code, _, err) = check(
        dir.path(),
        "proxy:\n  api_server: 10.31.90.0:8443\n  kubeconfig: /x\n",
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("lbd.yaml:2:15: proxy.api_server: \"10.31.90.0:8443\" is not a URL like https://10.31.90.0:8443"), "{err}");
}

#[test]
fn keepalived_and_haproxy_words_get_lbds() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check(
        dir.path(),
        "vrrp:\n  instances:\n    - name: v\n      interface: eth0\n      vrid: 51\n      virtual_ips: [10.0.0.1/24]\n      \
         advert_int: 1\n      nopreempt: true\n      virtual_ipaddress: [10.0.0.2]\n      state: MASTER\n\
         tcplb:\n  listeners:\n    - name: a\n      bind: 127.0.0.1:8443\n      backends: [127.0.0.1:6443]\n      \
         server: x\n      rise: 2\n      health:\n        inter: 2s\n        ca_file: /x\n\
         proxy:\n  kubeconfig: /nonexistent\n  clusterCIDR: 10.0.0.0/8\n",
        &[],
    );
    assert_eq!(code, Some(1));
    let c = dir.path().join("lbd.yaml").display().to_string();
    let want = [
        format!("{c}:7:7: unknown key \"advert_int\" in a VRRP instance (keepalived's advert_int is advert_interval (with a unit, as in 1s) here)"),
        format!("{c}:8:7: unknown key \"nopreempt\" in a VRRP instance (keepalived's nopreempt is preempt: false here)"),
        format!("{c}:9:7: unknown key \"virtual_ipaddress\" in a VRRP instance (keepalived's virtual_ipaddress is virtual_ips: [ADDRESS/PREFIX] here)"),
        format!("{c}:10:7: unknown key \"state\" in a VRRP instance (keepalived's state has no equivalent: every node starts as backup and the priority decides)"),
        format!("{c}:16:7: unknown key \"server\" in a listener (haproxy's server is backends: [ADDRESS:PORT, ...] here)"),
        format!("{c}:17:7: unknown key \"rise\" in a listener (rise goes under health: health.rise)"),
        format!("{c}:19:9: unknown key \"inter\" in health (haproxy's inter is health.interval here)"),
        format!("{c}:20:9: unknown key \"ca_file\" in health (ca_file goes under tls: tls.ca_file)"),
        format!("{c}:22:15: proxy.kubeconfig: /nonexistent does not exist"),
        format!("{c}:23:3: unknown key \"clusterCIDR\" in proxy (did you mean \"cluster_cidr\"?)"),
    ];
    let got: Vec<&str> = err.lines().collect();
    assert_eq!(got, want, "{err}");
    // Never a problem without its place.
    assert!(!err.contains(":0:0:"), "{err}");
}

/// `lbd run` until it logs "lbd running", then SIGTERM; its stderr.
fn run_logs(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin:\n  socket: {}\n  listen: \"\"\n",
            dir.path().join("lbd.sock").display()
        ),
    )
    .unwrap();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["run", "-c", cfg.to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .args(&full)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The socket appears when the daemon is up, whatever it logs.
    while Instant::now() < deadline && !dir.path().join("lbd.sock").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn logs_have_no_colour_in_a_pipe_and_follow_level_and_format() {
    let text = run_logs(&[]);
    assert!(text.contains("lbd running"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a pipe: {text:?}");

    let json = run_logs(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "lbd running" && v["level"] == "INFO"),
        "{json}"
    );

    // warn hides the info lines; a filter names a module.
    let quiet = run_logs(&["--log-level", "warn"]);
    assert!(!quiet.contains("lbd running"), "{quiet}");
    let filtered = run_logs(&["--log-level", "warn,lbd::app=info"]);
    assert!(filtered.contains("lbd running"), "{filtered}");

    // On a terminal (script(1) gives it one), colour: the test above is not
    // a check that cannot fail.
    if Path::new("/usr/bin/script").exists() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lbd.yaml");
        std::fs::write(
            &cfg,
            format!(
                "admin:\n  socket: {}\n  listen: \"\"\n",
                dir.path().join("s").display()
            ),
        )
        .unwrap();
        let cmd = format!(
            "timeout -s TERM 2 {} run -c {}",
            env!("CARGO_BIN_EXE_lbd"),
            cfg.display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(tty.contains("lbd running"), "{tty}");
        assert!(tty.contains("\u{1b}["), "no colour on a terminal: {tty:?}");
    }

    let bad = lbd(&["--log-level", "lbd=loud", "version"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--log-level"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
