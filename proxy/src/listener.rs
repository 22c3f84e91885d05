//! The accept loop shared by every protocol: each connection gets a place from the shared
//! [`Admission`] (pending until it logs in) that moves into its session's task; a client over
//! a cap gets its protocol's "too many connections" error, and on shutdown the loop stops
//! accepting and waits for sessions to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::{Admission, Ticket};

/// A protocol front end: what to do with an accepted connection.
#[async_trait]
pub trait Frontend: Send + Sync + 'static {
    /// Runs one client session to its end. The session calls [`Ticket::logged_in`] (through
    /// [`crate::auth::log_in`]) once its client has authenticated.
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        shutdown: CancellationToken,
    );
    /// Tells a client over a connection cap so, in its protocol, and closes.
    async fn reject_busy(&self, stream: TcpStream);
}

/// How long telling a refused client so may take: it holds a descriptor meanwhile.
const REJECT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn serve<F: Frontend>(
    listener: TcpListener,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
    frontend: Arc<F>,
) {
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
        match admission.arrive(peer.ip()) {
            Ok(ticket) => {
                let (frontend, shutdown) = (frontend.clone(), shutdown.clone());
                tasks.spawn(async move { frontend.handle(stream, peer, ticket, shutdown).await });
            }
            Err(why) => {
                admission.log_refusal(peer.ip(), why);
                let frontend = frontend.clone();
                tasks.spawn(async move {
                    let _ =
                        tokio::time::timeout(REJECT_TIMEOUT, frontend.reject_busy(stream)).await;
                });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}
