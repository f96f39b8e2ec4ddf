//! The `lbd` command line (SPEC.md): run, check, status, backend, vrrp,
//! manifest, version.

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
    },
    /// Validate a config file; every problem as PATH:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask the running daemon who holds the VIP and which backends are up.
    Status {
        /// Print the JSON object (for scripts).
        #[arg(long)]
        json: bool,
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
    /// Print the static-pod manifest (YAML) for this config.
    Manifest {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Container image; default ghcr.io/lbd/lbd:v<version>.
        #[arg(long)]
        image: Option<String>,
    },
    /// Version, git commit, build target.
    Version,
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
    }
    if parts.is_empty() {
        "admin only".into()
    } else {
        parts.join(", ")
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
        Command::Run { config } => {
            // `lbd run` supervises a worker that is `lbd run` again
            // (src/supervisor.rs).
            let worker = lbd::supervisor::take_worker_role();
            init_logging(cli.log_format);
            if !worker {
                return ExitCode::from(lbd::supervisor::run(&config));
            }
            match runtime().block_on(lbd::app::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config } => match lbd::config::load_with_warnings(&config) {
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
        },
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
        Command::Status {
            json,
            config,
            socket,
        } => {
            let socket = match admin_socket(socket, config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match runtime().block_on(lbd::status::client::fetch(&socket)) {
                Ok(report) => {
                    if json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("lbd: {e}");
                                return ExitCode::from(1);
                            }
                        }
                    } else {
                        print!("{}", lbd::status::client::render_table(&report));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Manifest { config, image } => {
            let image = image.unwrap_or_else(lbd::manifest::default_image);
            match lbd::manifest::render(&config, &image) {
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
