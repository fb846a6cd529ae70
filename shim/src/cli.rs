//! Command line of the `lazarus` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, FileConfig, Overrides};

/// lazarus — a CRI proxy that checkpoints and restores Kubernetes containers.
#[derive(Debug, Parser)]
#[command(name = "lazarus", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CRI on a unix socket in front of the runtime (the node daemon).
    Serve(ServeArgs),
}

/// `lazarus serve` flags; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (unknown keys are an error).
    #[arg(long, env = "LAZARUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unix socket kubelet connects to [default: /run/lazarus/cri.sock].
    #[arg(long)]
    pub listen: Option<PathBuf>,
    /// The runtime's CRI endpoint [default: unix:///run/containerd/containerd.sock].
    #[arg(long)]
    pub upstream: Option<String>,
    /// Persistent state directory [default: /var/lib/lazarus].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Runtime state directory [default: /run/lazarus].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or per-module directives [default: info].
    #[arg(long, env = "LAZARUS_LOG")]
    pub log_level: Option<String>,
    /// Log format: plain or json [default: plain].
    #[arg(long)]
    pub log_format: Option<String>,
}

impl ServeArgs {
    /// The effective configuration: file (if any) overridden by flags.
    pub fn resolve(&self) -> Result<Config, config::ConfigError> {
        let file = match &self.config {
            Some(path) => config::load(path)?,
            None => FileConfig::default(),
        };
        Config::resolve(
            file,
            Overrides {
                listen: self.listen.clone(),
                upstream: self.upstream.clone(),
                state_dir: self.state_dir.clone(),
                run_dir: self.run_dir.clone(),
                log_level: self.log_level.clone(),
                log_format: self.log_format.clone(),
            },
        )
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lazarus: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(&config.log);
    // One event-loop thread: a CRI call through lazarus is I/O, and keeping
    // both HTTP/2 legs of a call on one thread avoids cross-thread wake-ups
    // (measured: ~40 µs less added latency per call than two workers, see
    // docs/benchmarks.md). Blocking work goes to tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::serve(&config, crate::server::termination_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "lazarus cannot serve");
            ExitCode::FAILURE
        }
    }
}
