//! Backend connections: a socket to the instance, then one `HELLO <proto> AUTH <user> <pass>` round
//! trip that authenticates as the internal user and picks the client's RESP version. Also
//! fetches the `COMMAND` table the classifier is built from.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::codec::{self, Request};
use super::commands::CommandTable;
use crate::control::Route;
use crate::upstream::{self, Upstream};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("the server refused the internal user: {0}")]
    Refused(String),
    /// The connection failed before the login's reply: a server going away (killed, or
    /// stopping) does that.
    #[error("the server closed the connection: {0}")]
    Closed(String),
    #[error("{0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

impl BackendError {
    /// A refused address or login, or a server that went away while logging in: the route
    /// may be stale.
    pub fn may_be_stale(&self) -> bool {
        matches!(
            self,
            BackendError::Connect { .. } | BackendError::Refused(_) | BackendError::Closed(_)
        )
    }
}

/// An authenticated backend connection and the server's reply to `HELLO`.
pub struct BackendConn {
    pub stream: Upstream,
    pub hello: Bytes,
    /// Bytes read past the HELLO reply (none in practice; kept so nothing is lost).
    pub leftover: BytesMut,
}

impl BackendConn {
    /// Whether the server still holds the idle connection open, without a round trip.
    pub fn is_alive(&self) -> bool {
        self.leftover.is_empty() && upstream::is_open(&self.stream)
    }
}

pub async fn connect(
    route: &Route,
    resp3: bool,
    setname: Option<&[u8]>,
    timeout: Duration,
) -> Result<BackendConn, BackendError> {
    let attempt = async {
        let mut stream = upstream::connect(route)
            .await
            .map_err(|e| BackendError::Connect { addr: e.addr, source: e.source })?;
        let proto: &[u8] = if resp3 { b"3" } else { b"2" };
        let mut args: Vec<&[u8]> =
            vec![b"HELLO", proto, b"AUTH", route.user.as_bytes(), route.password.0.as_bytes()];
        if let Some(name) = setname {
            args.extend([&b"SETNAME"[..], name]);
        }
        stream
            .write_all(&Request::from_args(&args).wire)
            .await
            .map_err(|e| BackendError::Closed(e.to_string()))?;
        let (hello, leftover) = read_frame(&mut stream, BytesMut::new()).await?;
        if hello.first() == Some(&b'-') {
            return Err(BackendError::Refused(String::from_utf8_lossy(&hello).trim().to_owned()));
        }
        Ok(BackendConn { stream, hello, leftover })
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(BackendError::Timeout))
}

/// Reads one complete frame; returns it and whatever followed it.
pub(super) async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    mut buf: BytesMut,
) -> Result<(Bytes, BytesMut), BackendError> {
    loop {
        match codec::frame_len(&buf) {
            Ok(Some(len)) => {
                let frame = buf.split_to(len).freeze();
                return Ok((frame, buf));
            }
            Ok(None) => {}
            Err(e) => return Err(BackendError::Protocol(e.to_string())),
        }
        let n = stream.read_buf(&mut buf).await.map_err(|e| BackendError::Closed(e.to_string()))?;
        if n == 0 {
            return Err(BackendError::Closed("end of stream".into()));
        }
    }
}

/// Asks the server for its command table over a connection of its own (RESP2).
pub async fn fetch_command_table(
    route: &Route,
    timeout: Duration,
) -> Result<CommandTable, BackendError> {
    let mut conn = connect(route, false, None, timeout).await?;
    let attempt = async {
        conn.stream
            .write_all(&Request::from_args(&["COMMAND"]).wire)
            .await
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let (reply, _) = read_frame(&mut conn.stream, conn.leftover).await?;
        let (frame, _) = redis_protocol::resp2::decode::decode(&reply)
            .map_err(|e| BackendError::Protocol(e.to_string()))?
            .ok_or_else(|| BackendError::Protocol("incomplete COMMAND reply".into()))?;
        CommandTable::from_command_reply(&frame).map_err(|e| BackendError::Protocol(e.to_string()))
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(BackendError::Timeout))
}
