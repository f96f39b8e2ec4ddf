//! What the files a config names hold: CA bundles, certificates and keys
//! that parse as what their key says, a key that belongs to its
//! certificate, and a kubeconfig whose context, cluster, user and the files
//! *they* name are all there. The loader runs these after parsing; each
//! problem is reported at the key that names the file, or inside the
//! kubeconfig at its own line and column.
//!
//! A garbage CA file otherwise passes `lbd check` and fails only when the
//! first health check runs; a kubeconfig whose client certificate is
//! missing fails only when the proxy first lists Services.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::Problem;
use super::parse::{FileKind, NamedFile};
use super::yaml::{parse_document, Node, Pos, Value};

/// Every problem with the content of `files` (which exist), each at the key
/// in `config_path` that names the file.
pub(super) fn check_named_files(config_path: &str, files: &[NamedFile]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut failed: Vec<&Path> = Vec::new();
    for f in files {
        let at = |message: String| Problem::at(config_path, f.at, message);
        let result = match f.kind {
            FileKind::CaBundle => read(&f.path).and_then(|b| ca_bundle(&b)),
            FileKind::Certificate => read(&f.path).and_then(|b| certificate_chain(&b).map(drop)),
            FileKind::PrivateKey => read(&f.path).and_then(|b| private_key(&b).map(drop)),
            FileKind::Kubeconfig => {
                problems.extend(check_kubeconfig(&f.path));
                Ok(())
            }
            FileKind::KubeProxyConfiguration => Ok(()),
        };
        if let Err(e) = result {
            problems.push(at(format!("{}: {}: {e}", f.what, f.path.display())));
            failed.push(&f.path);
            continue;
        }
        // A certificate that is itself wrong was reported already.
        let cert = f.certificate.as_deref().filter(|c| !failed.contains(c));
        if let (FileKind::PrivateKey, Some(cert)) = (f.kind, cert) {
            if let Err(e) = key_matches_certificate(&f.path, cert) {
                problems.push(at(format!("{}: {e}", f.what)));
            }
        }
    }
    problems
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// The PEM sections of `pem`, by kind; a file with none is not PEM.
fn sections(pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let all: Vec<(SectionKind, Vec<u8>)> = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if all.is_empty() {
        return Err("no PEM block in it (expected -----BEGIN ...-----)".into());
    }
    Ok(all)
}

fn kind_name(k: SectionKind) -> &'static str {
    match k {
        SectionKind::Certificate => "a certificate",
        SectionKind::PublicKey => "a public key",
        SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
            "a private key"
        }
        SectionKind::Crl => "a CRL",
        SectionKind::Csr => "a certificate request",
        _ => "another kind of PEM block",
    }
}

/// The certificates of `pem`, each one a parsable X.509 certificate.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for (kind, der) in sections(pem)? {
        if kind != SectionKind::Certificate {
            return Err(format!(
                "holds {} where a certificate is expected",
                kind_name(kind)
            ));
        }
        certs.push(CertificateDer::from(der));
    }
    for (i, c) in certs.iter().enumerate() {
        // A trust anchor is parsed from the certificate's TBS structure:
        // what fails here would fail in every TLS handshake.
        let mut store = rustls::RootCertStore::empty();
        store
            .add(c.clone())
            .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
    }
    Ok(certs)
}

fn ca_bundle(pem: &[u8]) -> Result<(), String> {
    certificates(pem).map(drop)
}

fn certificate_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    certificates(pem)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let all = sections(pem)?;
    let keys = all.iter().filter(|(k, _)| {
        matches!(
            k,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    });
    if keys.count() != 1 {
        let kinds: Vec<&str> = all.iter().map(|(k, _)| kind_name(*k)).collect();
        return Err(format!(
            "expected one private key, found {}",
            kinds.join(", ")
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a private key: {e}"))?;
    rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    Ok(key)
}

/// The key's public half is the certificate's (rustls compares the
/// SubjectPublicKeyInfo).
fn key_matches_certificate(key: &Path, cert: &Path) -> Result<(), String> {
    let chain = read(cert).and_then(|b| certificate_chain(&b))?;
    let key_der = read(key).and_then(|b| private_key(&b))?;
    pair_matches(chain, &key_der).map_err(|e| {
        format!(
            "{} does not belong to the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

fn pair_matches(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<(), String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) => Ok(()),
        // The provider cannot tell for this key type: nothing to report.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("their public keys differ".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

// ------------------------------------------------------------ kubeconfig --

/// One field of a kubeconfig: its text and where it is.
struct Field<'n> {
    value: &'n str,
    at: Pos,
}

/// A mapping of the kubeconfig, read by key.
fn map_get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, n)| n)
            .filter(|n| !matches!(n.value, Value::Null)),
        _ => None,
    }
}

fn text_field<'n>(node: &'n Node, key: &str) -> Option<Field<'n>> {
    let n = map_get(node, key)?;
    match &n.value {
        Value::Str(s) if !s.is_empty() => Some(Field {
            value: s,
            at: n.pos,
        }),
        _ => None,
    }
}

/// `clusters`, `users` or `contexts`: name -> the inner object
/// (`cluster`, `user`, `context`).
fn named_list<'n>(
    root: &'n Node,
    list: &str,
    inner: &str,
) -> Vec<(&'n str, Pos, Option<&'n Node>)> {
    let Some(Node {
        value: Value::Seq(items),
        ..
    }) = map_get(root, list)
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let name = text_field(item, "name")?;
            Some((name.value, item.pos, map_get(item, inner)))
        })
        .collect()
}

/// Everything wrong with the kubeconfig at `path` for the proxy to use it:
/// the current context, its cluster and user, and the certificates, keys
/// and token files they name (relative paths from the kubeconfig's
/// directory, as kubectl resolves them), inline `*-data` too.
pub(super) fn check_kubeconfig(path: &Path) -> Vec<Problem> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![Problem::whole_file(&shown, format!("cannot read: {e}"))],
    };
    let root = match parse_document(&text) {
        Ok(r) => r,
        Err(e) => return vec![Problem::at(&shown, e.pos, e.message)],
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut k = KubeconfigCheck {
        path: &shown,
        dir,
        problems: Vec::new(),
    };
    k.check(&root);
    k.problems
}

struct KubeconfigCheck<'a> {
    path: &'a str,
    dir: &'a Path,
    problems: Vec<Problem>,
}

impl KubeconfigCheck<'_> {
    fn err(&mut self, at: Pos, message: impl Into<String>) {
        self.problems.push(Problem::at(self.path, at, message));
    }

    fn check(&mut self, root: &Node) {
        if !matches!(root.value, Value::Map(_)) {
            self.err(root.pos, "a kubeconfig must be a mapping");
            return;
        }
        let contexts = named_list(root, "contexts", "context");
        let context = match text_field(root, "current-context") {
            Some(cur) => match contexts.iter().find(|(n, _, _)| *n == cur.value) {
                Some(c) => *c,
                None => {
                    self.err(
                        cur.at,
                        format!(
                            "current-context {:?} names no context in contexts",
                            cur.value
                        ),
                    );
                    return;
                }
            },
            None if contexts.len() == 1 => contexts[0],
            None => {
                self.err(
                    root.pos,
                    "current-context is not set: lbd (like kube-proxy) uses the current context",
                );
                return;
            }
        };
        let (name, at, inner) = context;
        let Some(inner) = inner else {
            self.err(
                at,
                format!("context {name:?} has no context: {{cluster, user}}"),
            );
            return;
        };
        match text_field(inner, "cluster") {
            Some(c) => self.cluster(root, &c),
            None => self.err(inner.pos, format!("context {name:?} names no cluster")),
        }
        match text_field(inner, "user") {
            Some(u) => self.user(root, &u),
            None => self.err(
                inner.pos,
                format!("context {name:?} names no user: the proxy would be anonymous"),
            ),
        }
    }

    fn cluster(&mut self, root: &Node, wanted: &Field<'_>) {
        let clusters = named_list(root, "clusters", "cluster");
        let Some((_, at, inner)) = clusters.iter().find(|(n, _, _)| *n == wanted.value) else {
            self.err(
                wanted.at,
                format!("cluster {:?} is not in clusters", wanted.value),
            );
            return;
        };
        let Some(c) = inner else {
            self.err(
                *at,
                format!("cluster {:?} has no cluster: {{server}}", wanted.value),
            );
            return;
        };
        match text_field(c, "server") {
            Some(s) => {
                let ok = s.value.parse::<http::Uri>().is_ok_and(|u| {
                    u.scheme_str() == Some("https") || u.scheme_str() == Some("http")
                });
                if !ok {
                    self.err(s.at, format!("server {:?} is not an https:// URL", s.value));
                }
            }
            None => self.err(c.pos, format!("cluster {:?} has no server", wanted.value)),
        }
        self.pem(
            c,
            "certificate-authority",
            "certificate-authority-data",
            ca_bundle,
        );
    }

    fn user(&mut self, root: &Node, wanted: &Field<'_>) {
        let users = named_list(root, "users", "user");
        let Some((_, at, inner)) = users.iter().find(|(n, _, _)| *n == wanted.value) else {
            self.err(
                wanted.at,
                format!("user {:?} is not in users", wanted.value),
            );
            return;
        };
        let Some(u) = inner else {
            self.err(*at, format!("user {:?} has no user: {{...}}", wanted.value));
            return;
        };
        let cert = self.pem(u, "client-certificate", "client-certificate-data", |b| {
            certificate_chain(b).map(drop)
        });
        let key = self.pem(u, "client-key", "client-key-data", |b| {
            private_key(b).map(drop)
        });
        match (&cert, &key) {
            (Some((cert_pem, cert_at)), Some((key_pem, _))) => {
                let chain = certificate_chain(cert_pem);
                let key = private_key(key_pem);
                if let (Ok(chain), Ok(key)) = (chain, key) {
                    if let Err(e) = pair_matches(chain, &key) {
                        self.err(
                            *cert_at,
                            format!(
                                "user {:?}: client key and certificate do not belong together: {e}",
                                wanted.value
                            ),
                        );
                    }
                }
            }
            (Some((_, at)), None) | (None, Some((_, at))) => self.err(
                *at,
                format!(
                    "user {:?}: client-certificate and client-key go together",
                    wanted.value
                ),
            ),
            (None, None) => {}
        }
        if let Some(t) = text_field(u, "tokenFile") {
            let p = self.resolve(t.value);
            if !p.is_file() {
                self.err(t.at, format!("tokenFile: {} does not exist", p.display()));
            }
        }
        // A non-empty string, or a block (exec, auth-provider).
        let named = |k: &str| {
            text_field(u, k).is_some()
                || map_get(u, k).is_some_and(|n| matches!(n.value, Value::Map(_)))
        };
        let has_credential = [
            "client-certificate",
            "client-certificate-data",
            "token",
            "tokenFile",
            "exec",
            "auth-provider",
            "username",
        ]
        .iter()
        .any(|k| named(k));
        if !has_credential {
            self.err(
                u.pos,
                format!(
                    "user {:?} has no client certificate or token: the apiserver would treat the proxy as anonymous",
                    wanted.value
                ),
            );
        }
    }

    /// `file_key` (a path) or `data_key` (base64 PEM), checked by `check`;
    /// the PEM bytes and where they were named, when they could be read.
    fn pem(
        &mut self,
        obj: &Node,
        file_key: &str,
        data_key: &str,
        check: impl Fn(&[u8]) -> Result<(), String>,
    ) -> Option<(Vec<u8>, Pos)> {
        let (bytes, at, what) = if let Some(d) = text_field(obj, data_key) {
            let cleaned: String = d.value.chars().filter(|c| !c.is_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(cleaned) {
                Ok(b) => (b, d.at, data_key.to_string()),
                Err(e) => {
                    self.err(d.at, format!("{data_key}: not base64: {e}"));
                    return None;
                }
            }
        } else if let Some(f) = text_field(obj, file_key) {
            let p = self.resolve(f.value);
            match std::fs::read(&p) {
                Ok(b) => (b, f.at, format!("{file_key} {}", p.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.err(f.at, format!("{file_key}: {} does not exist", p.display()));
                    return None;
                }
                Err(e) => {
                    self.err(
                        f.at,
                        format!("{file_key}: {}: cannot read: {e}", p.display()),
                    );
                    return None;
                }
            }
        } else {
            return None;
        };
        if let Err(e) = check(&bytes) {
            self.err(at, format!("{what}: {e}"));
            return None;
        }
        Some((bytes, at))
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_kinds_are_told_apart() {
        assert_eq!(
            ca_bundle(b"hello\n").unwrap_err(),
            "no PEM block in it (expected -----BEGIN ...-----)"
        );
        let key = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHkX7RG0mKQYh3S8o1Sx0Q2jz5C0g1q7m7mN1zV1bGcK\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            ca_bundle(key).unwrap_err(),
            "holds a private key where a certificate is expected"
        );
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            ca_bundle(junk)
                .unwrap_err()
                .starts_with("certificate 1 does not parse"),
            "{:?}",
            ca_bundle(junk)
        );
    }
}
