//! The `lbd` command line (SPEC.md): run, check, status, reload, backend,
//! vrrp, manifest, import, doctor, proxy, version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

const DEFAULT_CONFIG: &str = "/etc/lbd/lbd.yaml";

#[derive(Parser)]
#[command(name = "lbd", about = "VRRP VIP, TCP balancer with health checks and IPVS service proxy for Kubernetes control-plane nodes", version = env!("CARGO_PKG_VERSION"))]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a RUST_LOG filter such
    /// as `info,lbd::vrrp=debug`; overrides RUST_LOG. Default: RUST_LOG, else
    /// info.
    #[arg(long, global = true, value_parser = parse_log_filter)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendAction {
    Drain,
    Enable,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (SIGHUP reloads, SIGTERM stops).
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The proxy's kubeconfig, over proxy.kubeconfig and the
        /// KubeProxyConfiguration's clientConnection.kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// This node's name, over node.name (the DaemonSet passes the
        /// Node's, as kube-proxy's --hostname-override).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Validate a config file; every problem as PATH:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check as `lbd run --kubeconfig PATH` would load it.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Ask the running daemon who holds the VIP and which backends are up.
    /// Exit 0: healthy, 1: unreachable, 3: answered but degraded.
    Status {
        /// Print the JSON object (for scripts).
        #[arg(long)]
        json: bool,
        /// Ask again every second until interrupted: the table redrawn, or
        /// (with --json) one object per line.
        #[arg(long)]
        watch: bool,
        /// Exit 0 whenever lbd answers, degraded or not (for liveness
        /// probes: a backend down must not restart lbd).
        #[arg(long)]
        answered: bool,
        /// Config file whose admin.socket to use.
        #[arg(short, long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// Admin socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Take a backend out of rotation (drain: no new sessions, established
    /// ones kept) or put it back (enable), at once.
    Backend {
        #[arg(value_enum)]
        action: BackendAction,
        /// Listener name, as in `lbd status`.
        listener: String,
        /// Backend ADDRESS:PORT, as in `lbd status`.
        backend: String,
        /// Config file whose admin.socket to use.
        #[arg(short, long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// Admin socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Maintenance of the VRRP instances: give up the VIP, take part again.
    Vrrp {
        #[command(subcommand)]
        action: VrrpCommand,
    },
    /// Validate the config file, then ask the running daemon to reload it;
    /// prints the outcome. Exit 0: applied, 1: invalid, refused or no daemon.
    Reload {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Admin socket path; default the file's admin.socket.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Print the static-pod manifest (YAML) for this config.
    Manifest {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Container image; default localhost/lbd:v<version>.
        #[arg(long)]
        image: Option<String>,
        /// The proxy-only DaemonSet, its ConfigMap and RBAC, for the nodes
        /// without a control plane (instead of the static pod).
        #[arg(long)]
        daemonset: bool,
        /// With --daemonset: the apiserver address the nodes' proxies use;
        /// default proxy.api_server, else https://VIP:PORT from the config.
        #[arg(long, requires = "daemonset", value_name = "URL")]
        api_server: Option<String>,
    },
    /// Write an lbd.yaml (on stdout) from keepalived.conf, haproxy.cfg and a
    /// KubeProxyConfiguration; a comment for each thing not mapped.
    Import {
        /// keepalived.conf (its track scripts are read too).
        #[arg(long, value_name = "FILE")]
        keepalived: Option<PathBuf>,
        /// haproxy.cfg.
        #[arg(long, value_name = "FILE")]
        haproxy: Option<PathBuf>,
        /// A KubeProxyConfiguration (kube-proxy's config.conf).
        #[arg(long = "kube-proxy", value_name = "FILE")]
        kube_proxy: Option<PathBuf>,
    },
    /// Check this node for lbd, before and after installing it: modules,
    /// sysctls, keepalived/haproxy/kube-proxy, ports, the VIP on the LAN,
    /// files; a fix for each finding. Exit 0: no problem, 1: problems.
    Doctor {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The service proxy's maintenance commands.
    Proxy {
        #[command(subcommand)]
        action: ProxyCommand,
    },
    /// Version, git commit, build target.
    Version,
}

#[derive(Subcommand)]
enum ProxyCommand {
    /// Remove what kube-proxy left that lbd does not use: its iptables
    /// chains and jump rules (nat, filter, mangle; IPv4 and IPv6; nft and
    /// legacy backends), its ipsets, its nftables tables (ip/ip6
    /// kube-proxy); with --ipvs also its IPVS services and kube-ipvs0.
    /// Exit 0: done or nothing to do, 1: refused or something failed.
    CleanupKubeProxy {
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also the IPVS services on kube-ipvs0 and the NodePorts, and
        /// kube-ipvs0 itself (dropping the proxy entirely; refused while
        /// lbd's proxy is configured).
        #[arg(long)]
        ipvs: bool,
        /// Run even though a kube-proxy process runs on this host.
        #[arg(long)]
        force: bool,
        /// With --ipvs: the NodePort range (the apiserver's
        /// --service-node-port-range).
        #[arg(long, default_value = "30000-32767", value_name = "FIRST-LAST")]
        node_port_range: lbd::proxy::cleanup::PortRange,
        /// The lbd config whose proxy section --ipvs checks (an absent file
        /// configures no proxy).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// `lbd proxy ...`.
fn proxy_command(action: ProxyCommand) -> ExitCode {
    match action {
        ProxyCommand::CleanupKubeProxy {
            dry_run,
            ipvs,
            force,
            node_port_range,
            config,
        } => {
            let opts = lbd::proxy::cleanup::edge::Options {
                dry_run,
                ipvs,
                force,
                node_ports: node_port_range,
                config,
            };
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            let code =
                runtime().block_on(lbd::proxy::cleanup::edge::run(&opts, &mut out, &mut err));
            ExitCode::from(code)
        }
    }
}

#[derive(Subcommand)]
enum VrrpCommand {
    /// Give up the VIP (priority 0: a backup takes over at once) and stay
    /// backup until resumed, across reloads and restarts.
    Release(VrrpTarget),
    /// Take part in the election again.
    Resume(VrrpTarget),
}

#[derive(clap::Args)]
struct VrrpTarget {
    /// The instance; none: every instance.
    instance: Option<String>,
    /// Config file whose admin.socket to use.
    #[arg(short, long, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// Admin socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// The admin socket named by `--socket`, by the config's `admin.socket`,
/// or the default config's (else /run/lbd/lbd.sock).
fn admin_socket(socket: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    match (socket, config) {
        (Some(s), _) => Ok(s),
        (None, Some(c)) => lbd::config::load(&c)
            .map(|cfg| cfg.admin.socket)
            .map_err(|e| {
                eprintln!("{e}");
                ExitCode::from(1)
            }),
        (None, None) => Ok(lbd::config::load(std::path::Path::new(DEFAULT_CONFIG))
            .map(|c| c.admin.socket)
            .unwrap_or_else(|_| PathBuf::from("/run/lbd/lbd.sock"))),
    }
}

/// `lbd vrrp release|resume`: 0 done, 1 refused or unreachable.
fn vrrp_command(action: VrrpCommand) -> ExitCode {
    use lbd::status::vrrp_control::{render, send, VrrpAnswer};
    use lbd::vrrp::Verb;
    let (verb, t) = match action {
        VrrpCommand::Release(t) => (Verb::Release, t),
        VrrpCommand::Resume(t) => (Verb::Resume, t),
    };
    let socket = match admin_socket(t.socket, t.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match runtime().block_on(send(&socket, verb, t.instance.as_deref())) {
        Ok(VrrpAnswer::Done(r)) => {
            print!("{}", render(verb, &r));
            ExitCode::SUCCESS
        }
        Ok(VrrpAnswer::Refused(why)) => {
            eprintln!("lbd vrrp {}: refused: {why}", verb.as_str());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// A `--log-level` that tracing's filter accepts (else a usage error, exit 2).
fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log level or filter: {e}"))
}

/// Logs on stderr: `--log-level`, else RUST_LOG, else info. Colour only when
/// stderr is a terminal: journald and `kubectl logs` would show the escape
/// codes as text.
fn init_logging(format: LogFormat, level: Option<&str>) {
    use std::io::IsTerminal;
    let from_env = || tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let filter = level
        .and_then(|l| tracing_subscriber::EnvFilter::builder().parse(l).ok())
        .or_else(from_env)
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A panic anywhere, in any task, stops the whole process: logged, then
/// abort, whatever the build's panic strategy. Otherwise tokio would end
/// only the task, and lbd would run on without its VRRP driver or an accept
/// loop, holding the VIP without serving; aborted, it loses the VIP (the
/// backups take over, the address expires) and its supervisor starts it
/// again.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "lbd panicked; aborting so that its supervisor restarts it");
        default(info);
        std::process::abort();
    }));
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbd: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// What `lbd check` found in a valid config, in a few words.
fn check_summary(c: &lbd::config::Config) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &c.vrrp {
        parts.push(format!("{} VRRP instance(s)", v.instances.len()));
    }
    if let Some(t) = &c.tcplb {
        parts.push(format!("{} listener(s)", t.listeners.len()));
    }
    if let Some(p) = &c.proxy {
        parts.push(format!("proxy mode {:?}", p.mode).to_lowercase());
        // The loader merged it: say so, as its fields override the file's.
        if let Some(kpc) = &p.kube_proxy_config {
            parts.push(format!("KubeProxyConfiguration {} merged", kpc.display()));
        }
        if p.mode != lbd::config::ProxyMode::None {
            parts.push(lbd::config::describe_credentials(p));
        }
    }
    if parts.is_empty() {
        "admin only".into()
    } else {
        parts.join(", ")
    }
}

/// `lbd doctor -c PATH`: the config (its problems are findings), the node's
/// facts, the running lbd's status when its socket answers.
fn doctor(path: &std::path::Path) -> ExitCode {
    let (config, problems) = match lbd::config::load(path) {
        Ok(c) => (Some(c), Vec::new()),
        Err(e) => (None, e.problems.iter().map(|p| p.to_string()).collect()),
    };
    let mut facts = lbd::doctor::facts::gather(config.as_ref());
    if let Some(c) = &config {
        if c.admin.socket.exists() {
            facts.status = runtime()
                .block_on(lbd::status::client::fetch(&c.admin.socket))
                .ok();
        }
    }
    let findings = lbd::doctor::diagnose(config.as_ref(), &problems, &facts);
    print!("{}", lbd::doctor::render(&findings));
    if findings
        .iter()
        .any(|f| f.severity == lbd::doctor::Severity::Problem)
    {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `lbd reload`: the file must pass `lbd check` before the daemon is
/// asked, so that a bad edit is reported here, at its line, and the
/// daemon's own refusal (a port it cannot bind, say) comes back too.
fn reload(path: &std::path::Path, socket: Option<PathBuf>) -> ExitCode {
    let config = match lbd::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: not reloaded (the running config stays)",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    let socket = socket.unwrap_or(config.admin.socket);
    match runtime().block_on(lbd::status::client::reload(&socket)) {
        Ok(lbd::status::client::ReloadOutcome::Applied) => {
            println!("{}: reloaded", path.display());
            ExitCode::SUCCESS
        }
        Ok(lbd::status::client::ReloadOutcome::Refused(why)) => {
            eprintln!("{why}");
            eprintln!(
                "{}: reload refused (the running config stays)",
                path.display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap exits 2 on usage errors and 0 for --help/--version.
            e.exit();
        }
    };
    match cli.command {
        Command::Run {
            config,
            kubeconfig,
            node_name,
        } => {
            // `lbd run` supervises a worker that is `lbd run` again, with
            // the same arguments (src/supervisor.rs).
            let worker = lbd::supervisor::take_worker_role();
            init_logging(cli.log_format, cli.log_level.as_deref());
            if !worker {
                return ExitCode::from(lbd::supervisor::run(&config));
            }
            abort_on_panic();
            let opts = lbd::config::LoadOptions {
                kubeconfig,
                node_name,
            };
            match runtime().block_on(lbd::app::run(config, opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Backend {
            action,
            listener,
            backend,
            config,
            socket,
        } => {
            let socket = match admin_socket(socket, config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let drain = matches!(action, BackendAction::Drain);
            match runtime().block_on(lbd::status::backend_control::request(
                &socket, drain, &listener, &backend,
            )) {
                Ok(a) if a.ok => {
                    println!("{}", a.message);
                    ExitCode::SUCCESS
                }
                Ok(a) => {
                    eprintln!("lbd: refused: {}", a.message);
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Vrrp { action } => vrrp_command(action),
        Command::Check { config, kubeconfig } => {
            match lbd::config::load_with_warnings(
                &config,
                &lbd::config::LoadOptions {
                    kubeconfig,
                    ..Default::default()
                },
            ) {
                Ok((c, warnings)) => {
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: ok ({})", config.display(), check_summary(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status {
            json,
            watch,
            answered,
            config,
            socket,
        } => {
            let socket = match admin_socket(socket, config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let show = lbd::status::client::Show {
                json,
                watch,
                answered,
            };
            ExitCode::from(runtime().block_on(lbd::status::client::show(&socket, show)))
        }
        Command::Reload { config, socket } => reload(&config, socket),
        Command::Manifest {
            config,
            image,
            daemonset,
            api_server,
        } => {
            let image = image.unwrap_or_else(lbd::manifest::default_image);
            let rendered = if daemonset {
                lbd::manifest::render_daemonset(&config, &image, api_server.as_deref())
            } else {
                lbd::manifest::render(&config, &image).map(|r| {
                    for n in &r.notes {
                        eprintln!("{n}");
                    }
                    r.yaml
                })
            };
            match rendered {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Import {
            keepalived,
            haproxy,
            kube_proxy,
        } => {
            let sources = match lbd::import::read_sources(
                keepalived.as_deref(),
                haproxy.as_deref(),
                kube_proxy.as_deref(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            match lbd::import::import(&sources) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(lbd::import::ImportError::NothingToImport) => {
                    eprintln!("{}", lbd::import::ImportError::NothingToImport);
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Doctor { config } => doctor(&config),
        Command::Proxy { action } => proxy_command(action),
        Command::Version => {
            println!(
                "lbd {} (commit {}, target {})",
                env!("CARGO_PKG_VERSION"),
                env!("LBD_GIT_COMMIT"),
                env!("LBD_BUILD_TARGET")
            );
            ExitCode::SUCCESS
        }
    }
}
