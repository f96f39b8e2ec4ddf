//! The I/O of `lbd proxy cleanup-kube-proxy`: the refusals (/proc, the lbd
//! config), the tools that list and remove (`*tables-save`/`-restore`,
//! `ipset`, `nft`, each with a deadline), IPVS over lbd's netlink client and
//! kube-ipvs0 over rtnetlink. What to remove is [`super::plan`]'s.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use tokio::io::AsyncWriteExt;

use super::{
    parse_ipset_names, parse_nft_tables, parse_save, plan, Action, Backend, Family, Inventory,
    IpvsInventory, PlanOptions, PortRange, Tool,
};
use crate::proxy::kernel::dummy::KUBE_IPVS0;
use crate::proxy::kernel::ipvs::{IpvsError, IpvsHandle, NetlinkIpvs};
use crate::sys::rtnl::{address_of, errno, link_by_name};

/// Longest a tool may take: a save of a 10k-Service iptables-mode node
/// takes seconds; one that hangs (a held xtables lock) must not hang us.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Most /proc entries read looking for kube-proxy.
const MAX_PROC_ENTRIES: usize = 1 << 20;

/// Where the tools live when PATH misses the sbin directories (sudo, cron).
const SBIN: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub ipvs: bool,
    pub force: bool,
    pub node_ports: PortRange,
    pub config: PathBuf,
}

/// Why a tool gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program}: cannot run it: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program}: {status}: {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{program}: no answer within {}s", TOOL_TIMEOUT.as_secs())]
    Timeout { program: String },
    #[error("{program}: {source}")]
    Parse {
        program: String,
        #[source]
        source: super::ParseError,
    },
}

/// What went wrong removing one thing.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    #[error("rtnetlink: {0}")]
    Rtnetlink(String),
    #[error("{0}")]
    Gone(String),
}

/// `lbd proxy cleanup-kube-proxy`; the exit code (0 done or nothing to do,
/// 1 refused or something failed). What it finds and does goes to `out`,
/// a refusal to `err`.
pub async fn run(opts: &Options, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match run_inner(opts, out, err).await {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "lbd proxy cleanup-kube-proxy: cannot write: {e}");
            1
        }
    }
}

async fn run_inner(
    opts: &Options,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let me = "lbd proxy cleanup-kube-proxy";
    if !opts.force {
        let pids = kube_proxy_pids();
        if !pids.is_empty() {
            writeln!(
                err,
                "{me}: refused: kube-proxy is running on this host (pid {}): it would put \
                 its rules back at its next sync, and the flap disturbs traffic; stop it \
                 first (its DaemonSet or unit), or pass --force",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            return Ok(1);
        }
    }
    if opts.ipvs {
        match lbd_proxy_configured(&opts.config) {
            Ok(None) => {}
            Ok(Some(mode)) => {
                writeln!(
                    err,
                    "{me}: refused: --ipvs: lbd's proxy is configured in {} (proxy.mode {mode}): \
                     the IPVS services and {KUBE_IPVS0} are lbd's now",
                    opts.config.display()
                )?;
                return Ok(1);
            }
            Err(e) => {
                writeln!(
                    err,
                    "{me}: refused: --ipvs: cannot tell whether lbd's proxy is configured: {e}"
                )?;
                return Ok(1);
            }
        }
    }

    let mut failures = 0usize;
    let (inv, kernel) = inventory(opts, out, &mut failures).await?;
    let p = plan(
        &inv,
        &PlanOptions {
            ipvs: opts.ipvs,
            node_ports: opts.node_ports,
        },
    );
    for k in &p.kept {
        writeln!(out, "kept: {k}")?;
    }
    if p.actions.is_empty() {
        writeln!(out, "nothing to remove: no kube-proxy leftovers found")?;
        return Ok(u8::from(failures > 0));
    }
    if opts.dry_run {
        for a in &p.actions {
            for item in a.items() {
                writeln!(out, "would remove: {item}")?;
            }
        }
        writeln!(
            out,
            "summary: dry run, {} would be removed, nothing changed",
            p.count()
        )?;
        return Ok(u8::from(failures > 0));
    }
    let mut removed = 0usize;
    for a in &p.actions {
        let items = a.items();
        match apply(a, &kernel).await {
            Ok(()) => {
                for item in &items {
                    writeln!(out, "removed: {item}")?;
                }
                removed += items.len();
            }
            Err(e) => {
                for item in &items {
                    writeln!(out, "failed: {item}: {e}")?;
                }
                failures += items.len();
            }
        }
    }
    writeln!(out, "summary: {removed} removed, {failures} failed")?;
    Ok(u8::from(failures > 0))
}

/// IPVS and rtnetlink, opened once for listing and removing.
#[derive(Default)]
struct Kernel {
    ipvs: Option<Arc<dyn IpvsHandle>>,
    rtnl: Option<rtnetlink::Handle>,
    link: Option<u32>,
}

/// Lists everything; a tool that is absent is a `skipped:` line, one that
/// fails a `failed:` line (counted in `failures`) and its part is empty.
async fn inventory(
    opts: &Options,
    out: &mut dyn Write,
    failures: &mut usize,
) -> std::io::Result<(Inventory, Kernel)> {
    let mut inv = Inventory::default();
    for family in [Family::V4, Family::V6] {
        let tools = iptables_tools(family);
        if tools.is_empty() {
            let name = Tool {
                family,
                backend: Backend::Default,
            };
            writeln!(out, "skipped: {name} not installed")?;
        }
        for tool in tools {
            match tool_output(&tool.save(), &[], None).await.and_then(|text| {
                parse_save(&text).map_err(|source| ToolError::Parse {
                    program: tool.save(),
                    source,
                })
            }) {
                Ok(tables) => inv.iptables.push((tool, tables)),
                Err(e) => {
                    writeln!(out, "failed: list {tool}: {e}")?;
                    *failures += 1;
                }
            }
        }
    }
    if find_program("ipset").is_none() {
        writeln!(out, "skipped: ipset not installed")?;
    } else {
        match tool_output("ipset", &["list", "-n"], None).await {
            Ok(text) => inv.ipsets = Some(parse_ipset_names(&text)),
            Err(e) => {
                writeln!(out, "failed: list ipsets: {e}")?;
                *failures += 1;
            }
        }
    }
    if find_program("nft").is_none() {
        writeln!(out, "skipped: nft not installed")?;
    } else {
        let listed = tool_output("nft", &["-j", "list", "tables"], None)
            .await
            .and_then(|text| {
                parse_nft_tables(&text).map_err(|source| ToolError::Parse {
                    program: "nft".into(),
                    source,
                })
            });
        match listed {
            Ok(t) => inv.nft = t,
            Err(e) => {
                writeln!(out, "failed: list nft tables: {e}")?;
                *failures += 1;
            }
        }
    }
    let mut kernel = Kernel::default();
    if opts.ipvs {
        match ipvs_inventory(&mut kernel).await {
            Ok((ipvs, notes)) => {
                for n in notes {
                    writeln!(out, "{n}")?;
                }
                inv.ipvs = Some(ipvs);
            }
            Err(e) => {
                writeln!(out, "failed: list IPVS and {KUBE_IPVS0}: {e}")?;
                *failures += 1;
            }
        }
    }
    Ok((inv, kernel))
}

/// The virtual services, kube-ipvs0's addresses and the host's others;
/// notes when the kernel has no IPVS (then there is nothing of it to
/// remove) or kube-ipvs0 is not a dummy.
async fn ipvs_inventory(kernel: &mut Kernel) -> Result<(IpvsInventory, Vec<String>), RemoveError> {
    let mut inv = IpvsInventory::default();
    let mut notes = Vec::new();
    let listed = tokio::task::spawn_blocking(|| {
        let h = NetlinkIpvs::new()?;
        let services = h.list_services()?;
        Ok::<_, IpvsError>((h, services))
    })
    .await
    .map_err(|e| RemoveError::Gone(format!("IPVS listing task: {e}")))?;
    match listed {
        Ok((h, services)) => {
            inv.services = services.iter().map(|(vs, _)| vs.key()).collect();
            kernel.ipvs = Some(Arc::new(h));
        }
        Err(IpvsError::FamilyNotFound) => {
            notes.push("skipped: IPVS is not in this kernel (no services to remove)".into());
        }
        Err(e) => return Err(e.into()),
    }
    let handle = crate::sys::rtnl::connect().map_err(|e| RemoveError::Rtnetlink(e.to_string()))?;
    let link = link_by_name(&handle, KUBE_IPVS0)
        .await
        .map_err(|e| RemoveError::Rtnetlink(format!("find link {KUBE_IPVS0}: {e}")))?;
    // kube-proxy's is a dummy; a real interface of that name is someone's.
    let link = match link {
        Some(l) if is_dummy(&l) => Some(l.header.index),
        Some(_) => {
            notes.push(format!(
                "kept: link {KUBE_IPVS0}: not a dummy link, so not kube-proxy's"
            ));
            None
        }
        None => None,
    };
    let msgs: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| RemoveError::Rtnetlink(format!("list addresses: {e}")))?;
    let mut on_link = Vec::new();
    for m in &msgs {
        let Some(a) = address_of(m) else { continue };
        if Some(m.header.index) == link {
            on_link.push(a);
        } else {
            inv.host.push(a);
        }
    }
    inv.link = link.map(|_| on_link);
    kernel.link = link;
    kernel.rtnl = Some(handle);
    Ok((inv, notes))
}

fn is_dummy(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Dummy))),
        _ => false,
    })
}

async fn apply(a: &Action, kernel: &Kernel) -> Result<(), RemoveError> {
    match a {
        Action::Iptables(t) => {
            let doc = t.document();
            tool_output(&t.tool.restore(), &["--noflush", "-w", "5"], Some(&doc)).await?;
        }
        Action::DestroyIpset(s) => {
            tool_output("ipset", &["destroy", s], None).await?;
        }
        Action::DeleteNftTable(t) => {
            tool_output("nft", &["delete", "table", &t.family, &t.name], None).await?;
        }
        Action::DeleteIpvsService(k) => {
            let h = kernel
                .ipvs
                .clone()
                .ok_or_else(|| RemoveError::Gone("no IPVS handle".into()))?;
            let k = *k;
            let r = tokio::task::spawn_blocking(move || h.delete_service(&k))
                .await
                .map_err(|e| RemoveError::Gone(format!("IPVS task: {e}")))?;
            match r {
                // Gone meanwhile: what was asked holds.
                Err(e) if e.is_not_found() => {}
                r => r?,
            }
        }
        Action::DeleteLink(name) => {
            let (Some(h), Some(index)) = (&kernel.rtnl, kernel.link) else {
                return Err(RemoveError::Gone(format!("link {name} was not listed")));
            };
            match h.link().del(index).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                Err(e) => return Err(RemoveError::Rtnetlink(format!("delete link {name}: {e}"))),
            }
        }
    }
    Ok(())
}

/// The iptables of `family` installed here: both backends when their
/// binaries exist, else the plain name. The plain `iptables-save` is one of
/// the two through alternatives, so it is only used alone.
fn iptables_tools(family: Family) -> Vec<Tool> {
    let tool = |backend| Tool { family, backend };
    let found: Vec<Tool> = [Backend::Nft, Backend::Legacy]
        .into_iter()
        .map(tool)
        .filter(|t| find_program(&t.save()).is_some() && find_program(&t.restore()).is_some())
        .collect();
    if !found.is_empty() {
        return found;
    }
    let plain = tool(Backend::Default);
    if find_program(&plain.save()).is_some() && find_program(&plain.restore()).is_some() {
        vec![plain]
    } else {
        Vec::new()
    }
}

/// The program's path: PATH first, then the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `program` to completion within [`TOOL_TIMEOUT`], `stdin` fed to
/// it; its stdout.
async fn tool_output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ToolError> {
    let spawn_err = |source| ToolError::Spawn {
        program: program.to_string(),
        source,
    };
    let path = find_program(program).ok_or_else(|| {
        spawn_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not installed",
        ))
    })?;
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let run = async {
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that stops reading has failed: its exit status and
            // stderr say why, better than our EPIPE would. The pipe is
            // dropped here, so the tool sees the end of its input.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        child.wait_with_output().await.map_err(spawn_err)
    };
    let output = tokio::time::timeout(TOOL_TIMEOUT, run)
        .await
        .map_err(|_| ToolError::Timeout {
            program: program.to_string(),
        })??;
    if !output.status.success() {
        return Err(ToolError::Failed {
            program: program.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The pids of processes named kube-proxy. /proc is the host's even inside
/// a network namespace, which is what we want: kube-proxy runs in the
/// host's.
fn kube_proxy_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.take(MAX_PROC_ENTRIES)
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| super::is_kube_proxy_comm(&c))
        })
        .collect()
}

/// The mode of lbd's own proxy if `path` configures one: then the IPVS
/// table and kube-ipvs0 are lbd's. An absent file configures nothing; one
/// that does not load cannot tell (an error: the caller refuses).
fn lbd_proxy_configured(path: &Path) -> Result<Option<String>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let config = crate::config::load(path).map_err(|e| e.to_string())?;
    Ok(config
        .proxy
        .filter(|p| p.mode != crate::config::ProxyMode::None)
        .map(|p| format!("{:?}", p.mode).to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::kernel::ipvs::FakeIpvs;
    use crate::proxy::model::{Protocol, ServiceKey, VirtualServer};

    #[tokio::test]
    async fn an_ipvs_service_is_deleted_once_and_gone_is_done() {
        let fake = Arc::new(FakeIpvs::new());
        let vs = VirtualServer::new("10.96.0.1".parse().unwrap(), 443, Protocol::Tcp, "rr");
        fake.add_service(&vs).unwrap();
        let kernel = Kernel {
            ipvs: Some(fake.clone()),
            ..Default::default()
        };
        let key: ServiceKey = vs.key();
        apply(&Action::DeleteIpvsService(key), &kernel)
            .await
            .unwrap();
        assert!(fake.snapshot().is_empty());
        // Deleted meanwhile (a second run, kube-proxy's own cleanup): done.
        apply(&Action::DeleteIpvsService(key), &kernel)
            .await
            .unwrap();
        // A real failure is reported.
        fake.add_service(&vs).unwrap();
        fake.fail_next(libc::EPERM);
        assert!(apply(&Action::DeleteIpvsService(key), &kernel)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_link_that_was_not_listed_is_a_failure_not_a_panic() {
        let e = apply(&Action::DeleteLink(KUBE_IPVS0.into()), &Kernel::default()).await;
        assert!(matches!(e, Err(RemoveError::Gone(_))), "{e:?}");
    }
}
