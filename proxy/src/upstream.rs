//! How the proxy reaches a database's server: over the instance's Unix socket when the route
//! names one and it can be opened from here (proxy and server on one host), else over TCP.
//! A Unix socket skips the TCP stack on both sides of every backend read and write.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpStream, UnixStream, tcp, unix};
use tokio_util::either::Either;

use crate::control::Route;

/// A connection to a database's server.
pub type Upstream = Either<TcpStream, UnixStream>;
/// The read half of an [`Upstream`], for a reader and a writer that run side by side.
pub type UpstreamReader = Either<tcp::OwnedReadHalf, unix::OwnedReadHalf>;
/// The write half of an [`Upstream`].
pub type UpstreamWriter = Either<tcp::OwnedWriteHalf, unix::OwnedWriteHalf>;

/// Why the server could not be reached, with the address tried last (TCP).
#[derive(Debug)]
pub struct ConnectError {
    pub addr: String,
    pub source: io::Error,
}

/// Connects to `route`'s server: its socket first, when it has one and the server is on this
/// host's loopback. A socket that is missing, refused or not ours to open (another user,
/// another mount namespace) falls back to TCP, which then decides; so a route is never worse
/// than its TCP address.
pub async fn connect(route: &Route) -> Result<Upstream, ConnectError> {
    if let Some(path) = route.socket.as_ref().filter(|_| is_loopback(&route.host)) {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(Either::Right(stream)),
            // A stopped or restarting server leaves no socket or a dead one: normal.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                tracing::debug!(path = %path.display(), error = %e, "backend socket closed; using TCP");
            }
            // Anything else is how this proxy is set up (say, another user than the agent's):
            // worth saying once, since every backend connection now pays a failed attempt.
            Err(e) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open backend Unix sockets; using TCP");
                }
            }
        }
    }
    let addr = format!("{}:{}", route.host, route.port);
    match TcpStream::connect(&addr).await {
        Ok(stream) => {
            // Replies and pipelined batches are written whole; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            Ok(Either::Left(stream))
        }
        Err(source) => Err(ConnectError { addr, source }),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits a connection into halves that own their side.
pub fn split(stream: Upstream) -> (UpstreamReader, UpstreamWriter) {
    match stream {
        Either::Left(tcp) => {
            let (r, w) = tcp.into_split();
            (Either::Left(r), Either::Left(w))
        }
        Either::Right(unix) => {
            let (r, w) = unix.into_split();
            (Either::Right(r), Either::Right(w))
        }
    }
}

/// Puts halves from [`split`] back together; `None` if they are from different connections.
pub fn reunite(reader: UpstreamReader, writer: UpstreamWriter) -> Option<Upstream> {
    match (reader, writer) {
        (Either::Left(r), Either::Left(w)) => r.reunite(w).ok().map(Either::Left),
        (Either::Right(r), Either::Right(w)) => r.reunite(w).ok().map(Either::Right),
        _ => None,
    }
}

/// Whether an idle connection is still open, without a round trip: a closed one reads as
/// end-of-file, a live one would block.
pub fn is_open(stream: &Upstream) -> bool {
    let mut probe = [0u8; 1];
    let read = match stream {
        Either::Left(tcp) => tcp.try_read(&mut probe),
        Either::Right(unix) => unix.try_read(&mut probe),
    };
    matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BackendSecret, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn route(port: u16, socket: Option<std::path::PathBuf>) -> Route {
        Route {
            protocol: Protocol::Redis,
            host: "127.0.0.1".into(),
            port,
            socket,
            user: "u".into(),
            readonly_user: None,
            info_user: None,
            password: BackendSecret("p".into()),
            limits: Default::default(),
            allowed_cidrs: Default::default(),
        }
    }

    #[tokio::test]
    async fn the_socket_is_used_when_it_answers() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path)?;
        // Port 1 refuses: only the socket can succeed.
        let mut stream = connect(&route(1, Some(path))).await.map_err(|e| e.source)?;
        assert!(matches!(stream, Either::Right(_)));
        let (mut server, _) = listener.accept().await?;
        server.write_all(b"hi").await?;
        let mut got = [0u8; 2];
        stream.read_exact(&mut got).await?;
        assert_eq!(&got, b"hi");
        let (reader, writer) = split(stream);
        let stream = reunite(reader, writer).expect("halves of one connection");
        assert!(is_open(&stream));
        drop(server);
        let Either::Right(unix) = &stream else { unreachable!() };
        unix.readable().await?;
        assert!(!is_open(&stream));
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_socket_falls_back_to_tcp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let stream = connect(&route(port, Some(dir.path().join("gone.sock"))))
            .await
            .map_err(|e| e.source)?;
        assert!(matches!(stream, Either::Left(_)));
        listener.accept().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_socket_left_by_a_dead_server_falls_back_to_tcp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        drop(tokio::net::UnixListener::bind(&path)?);
        assert!(path.exists());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let stream = connect(&route(port, Some(path))).await.map_err(|e| e.source)?;
        assert!(matches!(stream, Either::Left(_)));
        Ok(())
    }

    #[tokio::test]
    async fn the_socket_of_a_server_on_another_host_is_not_tried() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path)?;
        let mut remote = route(1, Some(path));
        remote.host = "192.0.2.1".into();
        // TEST-NET-1 never answers; only the socket could, and it must not be used.
        let attempt = tokio::time::timeout(std::time::Duration::from_millis(200), connect(&remote));
        assert!(!matches!(attempt.await, Ok(Ok(Either::Right(_)))));
        Ok(())
    }

    #[tokio::test]
    async fn when_neither_answers_the_tcp_address_is_reported() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let err = connect(&route(port, Some(dir.path().join("gone.sock")))).await.err();
        assert_eq!(err.map(|e| e.addr), Some(format!("127.0.0.1:{port}")));
        Ok(())
    }
}
