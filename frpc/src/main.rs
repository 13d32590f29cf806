//! frpc — the frp client, frp-uring edition. Parses frp's command line, loads the config,
//! runs the client (and its admin API); everything else lives in the `control` and
//! `dataplane` crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};
use control::admin::api_client::{AdminClient, parse_go_duration};
use control::config::ClientConfig;

mod quick;

#[derive(Parser)]
#[command(
    name = "frpc",
    about = "frpc is the client of frp (https://github.com/fatedier/frp)",
    disable_version_flag = true
)]
struct Cli {
    /// config file of frpc
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "./frpc.ini"
    )]
    config: PathBuf,
    /// config directory, run one frpc service for each file in config directory
    #[arg(long = "config_dir", alias = "config-dir", global = true)]
    config_dir: Option<PathBuf>,
    /// strict config parsing mode, unknown fields will cause an errors
    #[arg(long = "strict_config", alias = "strict-config", global = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = true,
          action = ArgAction::Set)]
    strict_config: bool,
    /// allowed unsafe features, one or more of: TokenSourceExec
    #[arg(long = "allow-unsafe", global = true, value_delimiter = ',')]
    allow_unsafe: Vec<String>,
    /// version of frpc
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Timeout for admin API calls
    #[arg(long = "api-timeout", default_value = "30s", value_parser = parse_go_duration)]
    api_timeout: Duration,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify that the configures is valid
    Verify,
    /// Hot-Reload frpc configuration
    Reload(AdminArgs),
    /// Overview of all proxies status
    Status(AdminArgs),
    /// Stop the running frpc
    Stop(AdminArgs),
    /// Run frpc with a single tcp proxy
    Tcp(quick::TcpArgs),
    /// Run frpc with a single udp proxy
    Udp(quick::TcpArgs),
    /// Run frpc with a single tcpmux proxy
    Tcpmux(quick::TcpmuxArgs),
    /// Run frpc with a single http proxy
    Http(quick::HttpArgs),
    /// Run frpc with a single https proxy
    Https(quick::HttpsArgs),
    /// Run frpc with a single stcp proxy
    Stcp(quick::SecretArgs),
    /// Run frpc with a single sudp proxy
    Sudp(quick::SecretArgs),
    /// Run frpc with a single xtcp proxy
    Xtcp(quick::SecretArgs),
    /// Actions about nathole
    Nathole(NatholeArgs),
}

#[derive(clap::Args)]
struct NatholeArgs {
    /// STUN server address for nathole
    #[arg(long = "nat_hole_stun_server", global = true, default_value = "")]
    stun_server: String,
    /// local address to connect STUN server
    #[arg(
        short = 'l',
        long = "nat_hole_local_addr",
        global = true,
        default_value = ""
    )]
    local_addr: String,
    #[command(subcommand)]
    cmd: NatholeCmd,
}

#[derive(Subcommand)]
enum NatholeCmd {
    /// Discover nathole information from stun server
    Discover,
}

/// `frpc nathole discover`: like frp, a config that does not load is no error (the default
/// STUN server, or the flag's, is used); the report or the error goes to stdout.
fn nathole(cli: &Cli, a: &NatholeArgs) -> ExitCode {
    let NatholeCmd::Discover = a.cmd;
    let mut server = match control::config::load_client_config(&cli.config, cli.strict_config) {
        Ok(c) => c.nat_hole_stun_server,
        Err(_) => control::client::xtcp::DEFAULT_STUN_SERVER.to_string(),
    };
    if !a.stun_server.is_empty() {
        server = a.stun_server.clone();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(control::client::xtcp::discover_report(
        &server,
        &a.local_addr,
    )) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", control::FRP_VERSION);
        return ExitCode::SUCCESS;
    }
    let features = control::config::UnsafeFeatures::new(cli.allow_unsafe.iter().cloned());
    match &cli.cmd {
        Some(Cmd::Verify) => {
            return match control::config::load_client_config(&cli.config, cli.strict_config) {
                Ok(c) if !validated(&c, &features, Some(&cli.config)) => ExitCode::FAILURE,
                Ok(_) => {
                    println!(
                        "frpc: the configuration file {} syntax is ok",
                        cli.config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Nathole(a)) => return nathole(&cli, a),
        Some(Cmd::Reload(a) | Cmd::Status(a) | Cmd::Stop(a)) => {
            // frp prints the error on stdout and exits 1.
            return match admin_command(&cli, a.api_timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("{e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    if cli.cmd.is_none()
        && let Some(dir) = &cli.config_dir
    {
        return run_dir(dir, cli.strict_config, &features);
    }
    let quick = match &cli.cmd {
        Some(Cmd::Tcp(a)) => Some(quick::tcp_config("tcp", a)),
        Some(Cmd::Udp(a)) => Some(quick::tcp_config("udp", a)),
        Some(Cmd::Tcpmux(a)) => Some(quick::tcpmux_config(a)),
        Some(Cmd::Http(a)) => Some(quick::http_config(a)),
        Some(Cmd::Https(a)) => Some(quick::https_config(a)),
        Some(Cmd::Stcp(a)) => Some(quick::secret_config("stcp", a)),
        Some(Cmd::Sudp(a)) => Some(quick::secret_config("sudp", a)),
        Some(Cmd::Xtcp(a)) => Some(quick::secret_config("xtcp", a)),
        _ => None,
    };
    let cfg = match quick {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            println!("{e:#}");
            return ExitCode::FAILURE;
        }
        None => match control::config::load_client_config(&cli.config, cli.strict_config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    // Quick proxies have no file: nothing to reload from.
    let config_file = cli.cmd.is_none().then(|| cli.config.clone());
    // `store.path`: the store's proxies and visitors join the file's.
    let sources = match control::client::store::ConfigSources::open(cfg, config_file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = sources.merged();
    // frp sets its feature gates first (`frpc verify` does not).
    if let Err(e) = cfg.check_feature_gates() {
        println!("{e}");
        return ExitCode::FAILURE;
    }
    // frp validates the config (common part, then each proxy and visitor it would start)
    // before it starts logging, whether it came from a file or from flags.
    if !validated(&cfg, &features, config_file.as_deref()) {
        return ExitCode::FAILURE;
    }
    match run(cfg, sources, config_file, cli.strict_config, features) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // frp prints why it stopped on stdout.
            println!("{}", control::log::error_text(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// frp's `ValidateAllClientConfig` as `frpc` and `frpc verify` run it: warnings printed as
/// `WARNING: …`, an error printed on stdout; returns whether the config is valid.
fn validated(
    cfg: &ClientConfig,
    features: &control::config::UnsafeFeatures,
    file: Option<&Path>,
) -> bool {
    let warnings = cfg.warnings();
    if !warnings.is_empty() {
        println!("WARNING: {}", warnings.join("\n"));
    }
    match cfg.validate_for_run_with(features) {
        Ok(()) => true,
        Err(e) => {
            // Prefixed with the line of its key in the file, when known.
            match file {
                Some(f) => println!("{}", control::config::validation_with_lines(f, &e.0)),
                None => println!("{e}"),
            }
            false
        }
    }
}

/// `frpc reload|status|stop`: calls the admin API of the config's `webServer`.
fn admin_command(cli: &Cli, timeout: Duration) -> anyhow::Result<()> {
    let cfg = control::config::load_client_config(&cli.config, cli.strict_config)?;
    if cfg.web_server.port == 0 {
        anyhow::bail!("web server port should be set if you want to use this feature");
    }
    let api = AdminClient::new(&cfg.web_server, timeout);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match &cli.cmd {
            Some(Cmd::Reload(_)) => {
                api.reload(cli.strict_config).await?;
                println!("reload success");
            }
            Some(Cmd::Status(_)) => {
                let status = api.status().await?;
                print!("{}", control::admin::format_status(&status));
            }
            Some(Cmd::Stop(_)) => {
                api.stop().await?;
                println!("stop success");
            }
            _ => unreachable!("not an admin command"),
        }
        anyhow::Ok(())
    })
}

/// What every run does once per process before serving: logging, limits, memory trimming.
fn init_process(cfg: &ClientConfig) -> anyhow::Result<()> {
    control::log::init_logger(
        &cfg.log.to,
        &cfg.log.level,
        cfg.log.max_days,
        cfg.log.disable_print_color,
    )
    .with_context(|| format!("open log file {}", cfg.log.to))?;
    // Like Go's runtime (frp's binaries): the soft descriptor limit goes up to the hard one.
    if let Err(e) = dataplane::sys::raise_nofile_limit() {
        tracing::warn!("raise the open files limit: {e}");
    }
    // Memory freed after a burst of clients or connections goes back to the kernel.
    dataplane::trim::start();
    Ok(())
}

fn run(
    cfg: ClientConfig,
    sources: control::client::store::ConfigSources,
    config_file: Option<PathBuf>,
    strict: bool,
    features: control::config::UnsafeFeatures,
) -> anyhow::Result<()> {
    init_process(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // A spawned task rather than the blocking thread: the control loop's wake-ups and the
    // work-connection tasks it spawns stay on the runtime's workers (see frps's main).
    let served = rt.spawn(serve(cfg, sources, config_file, strict, features));
    rt.block_on(served).context("frpc main task")?
}

/// `frpc --config_dir DIR`: one frpc service per file under DIR (recursively), all in this
/// process, as frp runs them. A file that fails to load or validate, or a service that
/// stops on an error, prints frp's `frpc service error for config file [...]`; the others
/// go on. Returns once every service has stopped.
fn run_dir(dir: &Path, strict: bool, features: &control::config::UnsafeFeatures) -> ExitCode {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut cfgs = Vec::new();
    for f in files {
        let sources = control::config::load_client_config(&f, strict)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                control::client::store::ConfigSources::open(c, Some(&f)).map_err(|e| e.to_string())
            });
        match sources {
            Ok(s) => {
                let c = s.merged();
                if validated(&c, features, Some(&f)) {
                    cfgs.push((f, c, s));
                } else {
                    println!("frpc service error for config file [{}]", f.display());
                }
            }
            Err(e) => {
                println!("{e}");
                println!("frpc service error for config file [{}]", f.display());
            }
        }
    }
    let Some((_, first, _)) = cfgs.first() else {
        return ExitCode::SUCCESS;
    };
    if let Err(e) = init_process(first) {
        println!("{e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let services: Vec<_> = cfgs
        .into_iter()
        .map(|(f, c, s)| {
            let features = features.clone();
            rt.spawn(async move {
                if let Err(e) = serve(c, s, Some(f.clone()), strict, features).await {
                    println!("{}", control::log::error_text(e.as_ref()));
                    println!("frpc service error for config file [{}]", f.display());
                }
            })
        })
        .collect();
    rt.block_on(async {
        for s in services {
            let _ = s.await;
        }
    });
    ExitCode::SUCCESS
}

/// One frpc service (and its admin API) until it stops.
async fn serve(
    cfg: ClientConfig,
    sources: control::client::store::ConfigSources,
    config_file: Option<PathBuf>,
    strict: bool,
    features: control::config::UnsafeFeatures,
) -> anyhow::Result<()> {
    let label = config_file
        .as_deref()
        .unwrap_or(Path::new("<command line>"))
        .display()
        .to_string();
    tracing::info!("start frpc service for config file [{label}]");
    let stop = Arc::new(tokio::sync::Notify::new());
    let web = cfg.web_server.clone();
    let client = Arc::new(control::client::Client::new(cfg)?.with_unsafe_features(features));
    if web.port != 0 {
        let admin = control::admin::AdminServer::bind(
            &web,
            client.clone(),
            config_file.clone().unwrap_or_default(),
            strict,
            stop.clone(),
            sources,
        )
        .await?;
        tracing::info!("admin server listen on {}", admin.local_addr()?);
        tokio::spawn(admin.run());
    }
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stop.notified() => tracing::info!("stop requested through the admin API"),
        }
    };
    let result = client.run(shutdown).await;
    if let Err(e) = &result {
        tracing::warn!("{e}");
    }
    result?;
    tracing::info!("frpc service for config file [{label}] stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
