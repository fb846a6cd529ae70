//! Command line of the `lazarus` binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::checkpoint::{CheckpointRequest, Checkpointer, CheckpointerConfig};
use crate::config::{self, Config, FileConfig, Overrides};
use crate::upstream::Upstream;
use lazarus_registry::Reference;
use lazarus_store::Store;
pub(crate) mod export;
mod listing;

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
    /// Checkpoint a running container now; prints the new checkpoint's reference (and the registry's, when pushed),
    /// then those of the pod's other checkpointed containers taken in the same cut.
    Checkpoint(CheckpointArgs),
    /// Look at the checkpoints in the node-local store.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Print lazarus's version, the runtime's, CRIU's and whether `criu check` passes (exit 1 if any failed).
    Version {
        /// Shared settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Settings shared by every subcommand; each overrides the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (unknown keys are an error).
    #[arg(long, env = "LAZARUS_CONFIG")]
    pub config: Option<PathBuf>,
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

/// `lazarus serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Unix socket kubelet connects to [default: /run/lazarus/cri.sock].
    #[arg(long)]
    pub listen: Option<PathBuf>,
}

/// `lazarus checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// Container id, or namespace/pod/container.
    pub container: String,
    /// Checkpoints to keep for this container, locally and in the registry [default: the pod's lazarus.dev/checkpoint-keep, else 3].
    #[arg(long)]
    pub keep: Option<usize>,
    /// Push to this OCI repository (host[:port]/path) [default: the pod's lazarus.dev/checkpoint-repository].
    #[arg(long, value_name = "REF")]
    pub repository: Option<String>,
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `lazarus checkpoints …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointsCommand {
    /// List checkpoints, oldest first (all, or one container's: namespace/pod/container).
    List {
        /// namespace/pod/container.
        container: Option<String>,
        /// Shared settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Show one checkpoint: metadata, sizes, CRIU freeze and dump times.
    Inspect {
        /// local:namespace/pod/container:tag[@digest], namespace/pod/container[:tag], or a manifest digest.
        reference: String,
        /// Shared settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Write one checkpoint as a kubelet-style archive: an uncompressed tar in checkpointctl's layout
    /// (never overwrites FILE).
    Export {
        /// local:namespace/pod/container:tag[@digest], namespace/pod/container[:tag] (its newest), or a manifest digest.
        reference: String,
        /// The archive to create (must not exist; mode 0600).
        file: PathBuf,
        /// Shared settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

impl CommonArgs {
    fn resolve(&self, listen: Option<PathBuf>) -> Result<Config, config::ConfigError> {
        let file = match &self.config {
            Some(path) => config::load(path)?,
            None => FileConfig::default(),
        };
        Config::resolve(
            file,
            Overrides {
                listen,
                upstream: self.upstream.clone(),
                state_dir: self.state_dir.clone(),
                run_dir: self.run_dir.clone(),
                log_level: self.log_level.clone(),
                log_format: self.log_format.clone(),
            },
        )
    }
}

impl ServeArgs {
    /// The effective configuration: file (if any) overridden by flags.
    pub fn resolve(&self) -> Result<Config, config::ConfigError> {
        self.common.resolve(self.listen.clone())
    }
}

/// Raises the soft limit of open files to the hard one: a checkpoint holds a lease (an open file)
/// on each of its chunks until it is committed, thousands for GiBs of memory, and a shell's soft
/// limit is often 1024. The systemd unit sets both limits high already.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit; large checkpoints may fail");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, listen) = match &cli.command {
        Command::Serve(args) => (&args.common, args.listen.clone()),
        Command::Checkpoint(args) => (&args.common, None),
        Command::Checkpoints(
            CheckpointsCommand::List { common, .. }
            | CheckpointsCommand::Inspect { common, .. }
            | CheckpointsCommand::Export { common, .. },
        ) => (common, None),
        Command::Version { common } => (common, None),
    };
    let config = match common.resolve(listen) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lazarus: {e}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        // Its report goes to stdout; only warnings to stderr unless asked.
        Command::Version { common } if common.log_level.is_none() => {
            crate::logging::init(&crate::logging::LogSettings { filter: "warn".into(), ..config.log.clone() });
        }
        _ => crate::logging::init(&config.log),
    }
    raise_open_files_limit();
    // One event-loop thread: a CRI call through lazarus is I/O, and keeping
    // both HTTP/2 legs of a call on one thread avoids cross-thread wake-ups
    // (measured: ~40 µs less added latency per call than two workers, see
    // docs/benchmarks.md). Blocking work goes to tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lazarus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Serve(_) => {
                check_criu(&config).map_err(|e| format!("cannot serve: {e}"))?;
                crate::server::serve(&config, crate::server::termination_signal())
                    .await
                    .map_err(|e| format!("cannot serve: {e}"))
            }
            Command::Version { .. } => crate::version::run(&config).await,
            Command::Checkpoint(args) => checkpoint(&config, args).await,
            Command::Checkpoints(CheckpointsCommand::List { container, .. }) => {
                listing::list(&open_store(&config)?, container.as_deref())
            }
            Command::Checkpoints(CheckpointsCommand::Inspect { reference, .. }) => {
                listing::inspect(&open_store(&config)?, reference)
            }
            Command::Checkpoints(CheckpointsCommand::Export { reference, file, .. }) => {
                let exported = export::export(open_store(&config)?, reference.clone(), file.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{} → {} ({} bytes)", exported.reference, file.display(), exported.bytes);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lazarus: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `lazarus serve` needs a usable CRIU unless `require_criu = false`.
fn check_criu(config: &Config) -> Result<(), String> {
    if !config.require_criu {
        tracing::info!("require_criu = false: not looking for CRIU; checkpoints and restores fail without it");
        return Ok(());
    }
    let (criu, version) = crate::version::check_criu_at_start()?;
    tracing::info!(criu = %criu.display(), version = %version, "CRIU found");
    if let Ok(false) = crate::version::sys_resource_capability() {
        tracing::warn!(
            hint = %crate::version::sys_resource_hint(),
            "CAP_SYS_RESOURCE is missing: containers running as a non-root user cannot be checkpointed"
        );
    }
    Ok(())
}

fn open_store(config: &Config) -> Result<Store, String> {
    Store::open(&config.state_dir.join("store")).map_err(|e| e.to_string())
}

/// The checkpoint engine for a configuration.
pub fn checkpointer(config: &Config) -> Result<Checkpointer, String> {
    let upstream = Upstream::new(config).map_err(|e| e.to_string())?;
    let store = Arc::new(open_store(config)?);
    Ok(Checkpointer::new(Arc::new(upstream), store, CheckpointerConfig::from(config)))
}

async fn checkpoint(config: &Config, args: &CheckpointArgs) -> Result<(), String> {
    if args.keep == Some(0) {
        return Err("--keep must be at least 1".into());
    }
    let repository = match &args.repository {
        None => None,
        Some(text) => {
            let reference = Reference::parse(text).map_err(|e| format!("--repository: {e}"))?;
            if reference.tag.is_some() || reference.digest.is_some() {
                return Err(format!(
                    "--repository {text:?}: expected a repository without tag or digest (lazarus chooses the tags)"
                ));
            }
            Some(reference)
        }
    };
    let engine = checkpointer(config)?;
    let request =
        CheckpointRequest { keep: args.keep, repository, trigger: crate::metrics::Trigger::Manual, thawed: None };
    let checkpoint = engine.checkpoint_with(&args.container, request).await.map_err(|e| e.to_string())?;
    // The asked container's first, then those of the pod's other containers
    // taken in the same cut (same tag).
    let mut push_errors = Vec::new();
    for taken in std::iter::once(&checkpoint).chain(&checkpoint.pod_cut) {
        println!("{}", taken.reference);
        if let Some(pushed) = &taken.pushed {
            println!("{pushed}");
        }
        if let Some(error) = &taken.push_error {
            // The local checkpoint stays; the exit status tells the push failed.
            push_errors.push(format!("{error} (the local checkpoint {} is kept)", taken.reference));
        }
    }
    if push_errors.is_empty() { Ok(()) } else { Err(push_errors.join("\n")) }
}
