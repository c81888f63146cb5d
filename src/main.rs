//! The berthd binary: command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berthd::config::{Config, LogFormat};
use berthd::daemon::Daemon;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// berth: a Kubernetes CRI container runtime.
#[derive(Parser)]
#[command(name = "berthd", version = berthd::VERSION)]
struct Cli {
    /// Configuration file [default: /etc/berth/config.toml when it exists].
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Overrides the configured log filter (`info`, `debug`, `berthd=trace`, ...).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI (the default when no command is given).
    Run,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the complete default configuration file.
    Default,
    /// Load the configuration (checking it) and print it as berthd sees it.
    Dump,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Config(ConfigCommand::Default)) => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Some(Command::Config(ConfigCommand::Dump)) => {
            let config = Config::load(cli.config.as_deref())?;
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
        None | Some(Command::Run) => {
            let mut config = Config::load(cli.config.as_deref())?;
            if let Some(level) = cli.log_level {
                config.log_level = level;
                config.validate()?;
            }
            init_logging(&config);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    };
    let daemon = Daemon::open(config)?;
    daemon.serve(shutdown).await?;
    Ok(())
}

/// One line per event on stderr (journald adds the time when run by
/// systemd). `RUST_LOG` overrides the configured filter.
fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
