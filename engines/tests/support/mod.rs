//! What the engines' integration tests share: a temporary directory the servers' own users
//! can pass through, and byte streams that break part way, as a full disk or a dropped
//! connection would.
#![allow(dead_code)]

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A temporary directory the servers' own users may pass through, whatever mode tempfile
/// gives it.
pub fn searchable_tempdir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

/// Takes `room` bytes, then fails, as a full disk or a dropped upload would.
pub struct FailsAfter {
    pub room: usize,
}

impl AsyncWrite for FailsAfter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.room == 0 {
            return Poll::Ready(Err(std::io::Error::other("no space left")));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Yields the first `limit` bytes of `data`, then fails, as a dropped download would.
pub struct BreaksAfter {
    pub data: Vec<u8>,
    pub at: usize,
    pub limit: usize,
}

impl AsyncRead for BreaksAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at >= self.limit {
            return Poll::Ready(Err(std::io::Error::other("connection reset")));
        }
        let end = self.limit.min(self.at + buf.remaining()).min(self.at + 65536);
        let chunk = self.data[self.at..end].to_vec();
        buf.put_slice(&chunk);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}
