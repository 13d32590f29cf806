//! frps — the frp server, frp-uring edition. Parses frp's command line, loads the config,
//! starts the server; everything else lives in the `control` and `dataplane` crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};

mod flags;

#[derive(Parser)]
#[command(
    name = "frps",
    about = "frps is the server of frp (https://github.com/fatedier/frp)",
    disable_version_flag = true
)]
struct Cli {
    /// config file of frps
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// strict config parsing mode, unknown fields will cause an error
    #[arg(long = "strict_config", alias = "strict-config", global = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = true,
          action = ArgAction::Set)]
    strict_config: bool,
    /// allowed unsafe features, one or more of: TokenSourceExec
    #[arg(long = "allow-unsafe", global = true, value_delimiter = ',')]
    allow_unsafe: Vec<String>,
    /// version of frps
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The config as flags, for a run without `-c`.
    #[command(flatten)]
    flags: flags::ServerFlags,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify that the configures is valid
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let features = control::config::UnsafeFeatures::new(cli.allow_unsafe.iter().cloned());
    if cli.version {
        println!("{}", control::FRP_VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(Cmd::Verify) = cli.cmd {
        let Some(path) = &cli.config else {
            println!("frps: the configuration file is not specified");
            return ExitCode::FAILURE;
        };
        return match control::config::load_server_config(path, cli.strict_config) {
            Ok(c) if !validated(&c, &features, Some(path)) => ExitCode::FAILURE,
            Ok(_) => {
                println!(
                    "frps: the configuration file {} syntax is ok",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match &cli.config {
        Some(path) => match control::config::load_server_config(path, cli.strict_config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => match cli.flags.to_config() {
            Ok(c) => c,
            Err(e) => {
                println!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    // frp validates the config before it starts logging and exits 1 on an error.
    if !validated(&cfg, &features, cli.config.as_deref()) {
        return ExitCode::FAILURE;
    }
    match run(cfg, cli.config.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // frp prints why it stopped on stdout.
            println!("{}", control::log::error_text(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// frp's `ValidateServerConfig` as `frps` and `frps verify` run it: the error printed on
/// stdout (prefixed with its line in `file`, when known); returns whether the config is valid.
fn validated(
    cfg: &control::config::ServerConfig,
    features: &control::config::UnsafeFeatures,
    file: Option<&std::path::Path>,
) -> bool {
    match cfg.validate_with(features) {
        Ok(()) => true,
        Err(e) => {
            match file {
                Some(f) => println!("{}", control::config::validation_with_lines(f, &e.0)),
                None => println!("{e}"),
            }
            false
        }
    }
}

fn run(
    cfg: control::config::ServerConfig,
    config_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    control::log::init_logger(
        &cfg.log.to,
        &cfg.log.level,
        cfg.log.max_days,
        cfg.log.disable_print_color,
    )
    .with_context(|| format!("open log file {}", cfg.log.to))?;
    match config_file {
        Some(path) => tracing::info!("frps uses config file: {}", path.display()),
        None => tracing::info!("frps uses command line arguments for config"),
    }
    // Like Go's runtime (frp's binaries): the soft descriptor limit goes up to the hard one.
    if let Err(e) = dataplane::sys::raise_nofile_limit() {
        tracing::warn!("raise the open files limit: {e}");
    }
    // Memory freed after a burst of clients or connections goes back to the kernel.
    dataplane::trim::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The server runs as a spawned task, not on the thread that blocks on it: the accept loop
    // and everything it spawns then stay on the runtime's workers instead of waking the main
    // thread for every connection and hopping from it to a worker (one context switch less
    // per new connection).
    let served = rt.spawn(async move {
        let web = cfg.web_server.clone();
        let dashboard_cfg = (web.port != 0).then(|| cfg.clone());
        let server = control::server::Server::bind(cfg).await?;
        if let Some(cfg) = dashboard_cfg {
            let dashboard = control::dashboard::Dashboard::bind(&cfg, server.stats()).await?;
            tracing::info!("dashboard listen on {}", dashboard.local_addr()?);
            if cfg.enable_prometheus {
                tracing::info!("prometheus metrics enabled at /metrics");
            }
            tokio::spawn(dashboard.run());
        }
        tokio::select! {
            _ = server.run() => {}
            _ = shutdown_signal() => tracing::info!("frps received a stop signal, exiting"),
        }
        anyhow::Ok(())
    });
    rt.block_on(served).context("frps main task")?
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
