//! The `node` and `admin` sections.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::super::model::{AdminConfig, NodeConfig};
use super::super::yaml::{Node, Value};
use super::{Cx, Environment};

impl Cx<'_> {
    pub(super) fn node_section(&mut self, n: &Node, env: &Environment) -> NodeConfig {
        let Some(mut o) = self.obj(n, "node") else {
            return NodeConfig {
                name: env.hostname.clone(),
            };
        };
        let name = o
            .get("name")
            .and_then(|n| self.nonempty_string(n, "node.name"))
            .unwrap_or_else(|| env.hostname.clone());
        self.finish(o, "node", &["name"]);
        NodeConfig { name }
    }

    pub(super) fn admin(&mut self, n: &Node) -> AdminConfig {
        let mut out = default_admin();
        let Some(mut o) = self.obj(n, "admin") else {
            return out;
        };
        if let Some(n) = o.get("socket") {
            if let Some(s) = self.nonempty_string(n, "admin.socket") {
                out.socket = PathBuf::from(s);
            }
        }
        if o.has("listen") {
            // `listen: null` (or "") turns the TCP listener off.
            out.listen = match o.get("listen") {
                Some(n) if matches!(&n.value, Value::Str(s) if s.is_empty()) => None,
                Some(n) => self.socket_addr(n, "admin.listen"),
                None => None,
            };
        }
        self.finish(o, "admin", &["socket", "listen"]);
        out
    }
}

pub(super) fn default_admin() -> AdminConfig {
    AdminConfig {
        socket: PathBuf::from("/run/lbd/lbd.sock"),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 9440))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn admin_listen_empty_or_null_is_off() {
        for text in ["admin:\n  listen: \"\"\n", "admin:\n  listen: null\n"] {
            assert_eq!(check(text).unwrap().admin.listen, None, "{text}");
        }
        let c = check("admin:\n  socket: /tmp/x.sock\n  listen: \"[::1]:9440\"\n").unwrap();
        assert_eq!(c.admin.socket, std::path::Path::new("/tmp/x.sock"));
        assert_eq!(c.admin.listen, Some("[::1]:9440".parse().unwrap()));
    }

    #[test]
    fn node_and_admin_problems() {
        assert_eq!(
            problems("node:\n  name: \" \"\n  nmae: x\nadmin:\n  listen: 9440\n  socket: []\n"),
            [
                "t.yaml:2:9: node.name must not be empty",
                "t.yaml:3:3: unknown key \"nmae\" in node (did you mean \"name\"?)",
                "t.yaml:5:11: admin.listen: invalid \"9440\" (expected ADDRESS:PORT, e.g. 0.0.0.0:8443 or [::]:8443)",
                "t.yaml:6:11: expected a string, not a list",
            ]
        );
    }
}
