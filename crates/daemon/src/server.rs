//! Serving the CRI on the unix socket, and shutting down gracefully.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;

use crate::config::Config;
use crate::error::ProxyError;
use crate::listener::{self, ListenError};
use crate::proxy::Proxy;
use crate::upstream::Upstream;

/// Concurrent calls one client connection may have open.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The upstream endpoint is unusable.
    #[error(transparent)]
    Upstream(#[from] ProxyError),
    /// The checkpoint store could not be opened.
    #[error("opening the checkpoint store: {0}")]
    Store(lazarus_store::StoreError),
    /// The restore engine could not start (restore dir).
    #[error("starting the restore engine: {0}")]
    Restore(crate::restore::RestoreError),
    /// The registry settings are unusable (CA files).
    #[error("registry settings: {0}")]
    Registry(lazarus_registry::RegistryError),
    /// The metrics endpoint's address (`metrics_listen`) could not be bound.
    #[error("metrics_listen {address}: cannot listen: {source}")]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A state directory could not be created.
    #[error("creating directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the daemon until `shutdown` resolves: binds the socket, serves every
/// connection, then drains in-flight calls for at most
/// `config.shutdown_timeout` and removes the socket (unless systemd passed it).
pub async fn serve(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    for dir in [&config.state_dir, &config.run_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ServeError::Directory { path: dir.clone(), source })?;
    }
    let upstream = Upstream::new(config)?;
    let metrics_socket = match config.metrics_listen {
        Some(address) => Some(bind_metrics(address).map_err(|source| ServeError::Metrics { address, source })?),
        None => None,
    };
    // Before anything spawns threads: adopting systemd's socket unsets LISTEN_* variables.
    let listener = listener::listen(&config.listen)?;
    let store = lazarus_store::Store::open(&config.state_dir.join("store")).map_err(ServeError::Store)?;
    let store = std::sync::Arc::new(store);
    let metrics = crate::metrics::Metrics::new();
    let runtime: std::sync::Arc<dyn crate::runtime::Runtime> = std::sync::Arc::new(upstream.clone());
    let engine = crate::checkpoint::Checkpointer::new(
        runtime.clone(),
        store.clone(),
        crate::checkpoint::CheckpointerConfig::from(config),
    )
    .with_metrics(metrics.clone());
    // Built now (system and registry_ca_files certificates): unusable CA files stop the daemon at start.
    let registry = engine.registry_client().await.map_err(ServeError::Registry)?;
    let restorer =
        crate::restore::Restorer::new(runtime, store.clone(), crate::restore::RestorerConfig::from(config), registry)
            .map_err(ServeError::Restore)?
            .with_metrics(metrics.clone());
    tokio::spawn({
        let restorer = restorer.clone();
        async move { restorer.sweep_stale_plans().await }
    });
    tokio::spawn({
        let engine = engine.clone();
        async move {
            let thawed = engine.thaw_abandoned().await;
            if thawed > 0 {
                tracing::warn!(thawed, "thawed containers that interrupted checkpoints had left frozen");
            }
        }
    });
    let scheduler = tokio::spawn(crate::checkpoint::schedule::Scheduler::new(engine.clone()).run());
    let mut background = Vec::new();
    if let (Some(socket), Some(address)) = (metrics_socket, config.metrics_listen) {
        let socket =
            tokio::net::TcpListener::from_std(socket).map_err(|source| ServeError::Metrics { address, source })?;
        let endpoint = crate::metrics_server::Endpoint::new(metrics.clone(), upstream.clone());
        background.push(tokio::spawn(crate::metrics_server::run(socket, endpoint)));
        let refresh = crate::metrics_server::refresh_store_metrics(store, metrics.clone(), STORE_METRICS_PERIOD);
        background.push(tokio::spawn(refresh));
        tracing::info!(address = %address, "serving /metrics, /healthz and /readyz");
    }
    let proxy = Proxy::new(upstream).with_checkpointer(engine).with_restorer(restorer).with_metrics(metrics);
    tracing::info!(
        listen = %listener.path.display(),
        upstream = %config.upstream,
        version = env!("CARGO_PKG_VERSION"),
        "lazarus serving the CRI"
    );
    let mut shutdown = std::pin::pin!(async {
        shutdown.await;
        notify_systemd("STOPPING=1");
    });
    // One poll installs the signal handlers, so a SIGTERM right after READY=1 is a clean stop.
    let stopped_already = tokio::select! { biased; () = &mut shutdown => true, () = std::future::ready(()) => false };
    if !stopped_already {
        // Type=notify: systemd starts kubelet (After=lazarus.service) only now.
        notify_systemd(&format!("READY=1\nSTATUS=serving the CRI on {}", listener.path.display()));
        run(listener.socket, proxy, shutdown, config.shutdown_timeout).await;
    }
    scheduler.abort();
    background.iter().for_each(tokio::task::JoinHandle::abort);
    // systemd owns an activated socket and keeps it open for the next lazarus.
    if !listener.activated {
        listener::remove(&listener.path);
    }
    tracing::info!("lazarus stopped");
    Ok(())
}

/// How often the store's size and newest checkpoints are read for the metrics.
const STORE_METRICS_PERIOD: Duration = Duration::from_secs(60);

/// Binds the metrics endpoint's TCP address (plain std: no runtime threads yet).
fn bind_metrics(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = std::net::TcpListener::bind(address)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Tells systemd about the daemon's state (nothing happens outside systemd).
fn notify_systemd(state: &str) {
    if let Err(e) = crate::sd_notify::notify(state) {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}

/// Accepts connections on `socket` until `shutdown`, then waits up to `grace`
/// for open calls to finish.
pub async fn run(socket: UnixListener, proxy: Proxy, shutdown: impl Future<Output = ()>, grace: Duration) {
    let graceful = GracefulShutdown::new();
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => {
                    let proxy = proxy.clone();
                    let service = hyper::service::service_fn(move |request| {
                        let proxy = proxy.clone();
                        // An Err resets the client's stream with the upstream's code.
                        async move { proxy.handle(request).await }
                    });
                    let connection = graceful.watch(http2.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "client connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(socket);
    tracing::info!(grace = %crate::duration::format(grace), "shutting down: no new connections, draining open calls");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all calls finished"),
        () = tokio::time::sleep(grace) => tracing::warn!("calls still open after the grace period; closing them"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; lazarus will only stop when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
    }
}
