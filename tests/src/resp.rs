//! A raw RESP client for tests that compare replies byte for byte: it sends commands as RESP
//! arrays and reads whole reply frames as the bytes that came off the wire, RESP2 or RESP3.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a reply may take: longer than any blocking call the tests make.
const REPLY_WAIT: Duration = Duration::from_secs(15);

pub struct RawRedis {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// `args` as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RawRedis {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::new() })
    }

    /// Connects to the proxy on 127.0.0.1 from `local` (any address in 127/8 is this
    /// machine's), so a test can act as a client from another address.
    pub async fn connect_from(local: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((local, 0)))?;
        let stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::new() })
    }

    /// Sends commands in one write (a pipeline when there are several).
    pub async fn send(&mut self, commands: &[&[&str]]) -> anyhow::Result<()> {
        let wire: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
        Ok(self.stream.write_all(&wire).await?)
    }

    /// Sends one command and reads its one reply.
    pub async fn call(&mut self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        self.send(&[args]).await?;
        self.frame().await
    }

    /// The next whole frame, as received.
    pub async fn frame(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(len) = frame_len(&self.buf)? {
                return Ok(self.buf.drain(..len).collect());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(REPLY_WAIT, self.stream.read(&mut chunk))
                .await
                .context("no reply in time")??;
            if n == 0 {
                bail!("connection closed; unread: {:?}", String::from_utf8_lossy(&self.buf));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Bytes received and not yet read as frames, after waiting `quiet` for more: a test's
    /// check that nothing arrived that it did not expect.
    pub async fn unread(&mut self, quiet: Duration) -> anyhow::Result<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        if let Ok(read) = tokio::time::timeout(quiet, self.stream.read(&mut chunk)).await {
            let n = read?;
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(std::mem::take(&mut self.buf))
    }
}

/// The length of the first whole frame in `buf`, or `None` if it is not all there yet.
pub fn frame_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let mut at = 0;
    // Frames still to read, counting nested aggregates' elements as they are opened.
    let mut pending = 1usize;
    while pending > 0 {
        let Some(kind) = buf.get(at) else { return Ok(None) };
        let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = &buf[at + 1..at + end];
        at += end + 2;
        pending -= 1;
        let number = || -> anyhow::Result<i64> {
            std::str::from_utf8(line)?.parse().context("a RESP length")
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let len = number()?;
                if len >= 0 {
                    let body = usize::try_from(len)? + 2;
                    if buf.len() < at + body {
                        return Ok(None);
                    }
                    at += body;
                }
            }
            b'*' | b'~' | b'>' => pending += usize::try_from(number()?.max(0))?,
            // A map's or an attribute's pairs; an attribute is followed by the reply it annotates.
            b'%' => pending += 2 * usize::try_from(number()?)?,
            b'|' => pending += 2 * usize::try_from(number()?)? + 1,
            other => bail!("not a RESP frame: type byte {other:#04x}"),
        }
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn frames_are_measured_whole_or_not_at_all() -> anyhow::Result<()> {
        assert_eq!(frame_len(b"+OK\r\n+PONG\r\n")?, Some(5));
        assert_eq!(frame_len(b"$5\r\nhel")?, None);
        assert_eq!(frame_len(b"$-1\r\n")?, Some(5));
        assert_eq!(frame_len(b"*-1\r\n")?, Some(5));
        let nested = b"*2\r\n*1\r\n:1\r\n%1\r\n+a\r\n$1\r\nb\r\n";
        assert_eq!(frame_len(nested)?, Some(nested.len()));
        assert_eq!(frame_len(&nested[..nested.len() - 1])?, None);
        let push = b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n";
        assert_eq!(frame_len(&[&push[..], b":1\r\n"].concat())?, Some(push.len()));
        assert!(frame_len(b"?\r\n").is_err());
        Ok(())
    }
}
