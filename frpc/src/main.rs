//! frpc — the frp client, frp-uring edition. Parses frp's command line, loads the config,
//! runs the client; everything else lives in the `control` and `dataplane` crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};

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
    /// strict config parsing mode, unknown fields will cause an errors
    #[arg(long = "strict_config", global = true, default_value_t = true, action = ArgAction::Set)]
    strict_config: bool,
    /// version of frpc
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify that the configures is valid
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", control::FRP_VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(Cmd::Verify) = cli.cmd {
        return match control::config::load_client_config(&cli.config, cli.strict_config) {
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = control::config::load_client_config(&cli.config, cli.strict_config)?;
    control::log::init(&cfg.log.to, &cfg.log.level, cfg.log.disable_print_color)
        .with_context(|| format!("open log file {}", cfg.log.to))?;
    tracing::info!(
        "start frpc service for config file [{}]",
        cli.config.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = Arc::new(control::client::Client::new(cfg)?);
        let result = client.run(shutdown_signal()).await;
        if let Err(e) = &result {
            tracing::warn!("{e}");
        }
        result?;
        tracing::info!(
            "frpc service for config file [{}] stopped",
            cli.config.display()
        );
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
