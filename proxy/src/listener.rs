//! The accept loop shared by every protocol: a connection-limit permit moves into each
//! session's task, a client over the limit gets its protocol's "too many connections" error,
//! and on shutdown the loop stops accepting and waits for sessions to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A protocol front end: what to do with an accepted connection.
#[async_trait]
pub trait Frontend: Send + Sync + 'static {
    /// Runs one client session to its end.
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    );
    /// Tells a client over the connection limit so, in its protocol, and closes.
    async fn reject_busy(&self, stream: TcpStream);
}

pub async fn serve<F: Frontend>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
    frontend: Arc<F>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (frontend, shutdown) = (frontend.clone(), shutdown.clone());
                tasks.spawn(async move {
                    frontend.handle(stream, peer, shutdown).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, max_connections, "connection limit reached");
                let frontend = frontend.clone();
                tasks.spawn(async move { frontend.reject_busy(stream).await });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}
