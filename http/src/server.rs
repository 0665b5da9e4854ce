//! The sidecar's HTTP/1.1 server: an accept loop on hyper with bounds that keep slow,
//! half-open and idle connections from starving real clients.
//!
//! - **At most `connections_max` connections.** A permit is taken before `accept`, so
//!   past the bound new connections wait in the kernel's listen backlog instead of
//!   taking file descriptors the ledger needs; the bound is lowered to fit the process's
//!   open-file limit.
//! - **A request head must arrive within `header_read_timeout_ms`.** hyper starts this
//!   clock whenever a connection waits for a request head: after `accept`, and again
//!   after each answer on a keep-alive connection. So it is also the idle keep-alive
//!   timeout: a connection with no request in progress for that long is closed (a test
//!   checks both).
//! - **Graceful shutdown.** On the shutdown signal the listener closes, idle connections
//!   close, and requests in flight finish and are answered before `serve` returns.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The connection bounds; `serve` sets each from a flag of the same name.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once, at most (lowered to the open-file limit, less
    /// [`ConnectionLimits::FILES_RESERVED`]).
    pub connections_max: usize,
    /// How long a connection may take to send a complete request head, counted from
    /// `accept` or from the previous answer: both the header read timeout and the idle
    /// keep-alive timeout.
    pub header_read_timeout_ms: u64,
}

impl ConnectionLimits {
    /// Gateways keep a pool of keep-alive connections, tens to hundreds each; 4,096
    /// serves dozens of gateway processes while each connection costs one file
    /// descriptor and a few KiB.
    pub const CONNECTIONS_MAX: usize = 4_096;
    /// A client on the same host or network sends a request head in under a millisecond:
    /// 10 s tolerates a stalled client yet frees a slot held by a half-sent head within
    /// seconds, and closes an idle keep-alive connection while a gateway's pool under
    /// steady traffic reuses its connections every few milliseconds. A client that
    /// keeps idle connections longer finds them closed and reconnects; a retried
    /// authorize or settle is safe, being idempotent by transaction id.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// File descriptors kept for everything but connections: the ledger's files (log,
    /// views, their WAL and shared memory, the lock), the compile cache, temporary files
    /// of policy uploads, PostgreSQL connections, the listener and the runtime's own.
    pub const FILES_RESERVED: u64 = 128;

    /// These limits with `connections_max` lowered to what `open_files_max` (the
    /// process's soft limit on open files) leaves after [`Self::FILES_RESERVED`].
    pub fn fitted_to(self, open_files_max: u64) -> Self {
        let room = open_files_max.saturating_sub(Self::FILES_RESERVED).max(1);
        Self {
            connections_max: self
                .connections_max
                .min(usize::try_from(room).unwrap_or(usize::MAX)),
            ..self
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            connections_max: Self::CONNECTIONS_MAX,
            header_read_timeout_ms: Self::HEADER_READ_TIMEOUT_MS,
        }
    }
}

/// Connections accepted by the kernel and waiting for `accept`, at most: where clients
/// wait while the server is at `connections_max` (std's and tokio's default, 128, would
/// leave a burst of clients retrying their SYN after 1, 3, 7 seconds).
pub const LISTEN_BACKLOG: u32 = 1_024;

/// A listener on `address` with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does at
/// start) and returns the soft limit in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let Some((stream, permit)) = accepted else {
            break;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection, once a connection permit is free (`None` if the permits were
/// closed, which `serve` never does). Errors of one connection (aborted before
/// `accept`) are skipped; others (out of file descriptors or memory) are logged and
/// retried after a pause rather than spinning.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = Arc::clone(connections).acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return Some((stream, permit)),
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    )
}
