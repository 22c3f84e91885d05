//! MySQL packets: a 3-byte little-endian length, a 1-byte sequence id, the payload. A payload
//! chunk of exactly 0xFFFFFF bytes means the logical packet continues in the next one.
//! `PacketStream` reads whole chunks without copying and batches writes.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest chunk payload; a chunk this long is continued by the next.
pub const MAX_CHUNK: usize = 0xFF_FFFF;

/// One chunk as it came off the wire, header included.
#[derive(Debug, Clone)]
pub struct Packet {
    pub bytes: Bytes,
}

impl Packet {
    pub fn seq(&self) -> u8 {
        self.bytes[3]
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[4..]
    }

    /// Whether the logical packet goes on in the next chunk.
    pub fn is_continued(&self) -> bool {
        self.payload().len() == MAX_CHUNK
    }
}

/// Appends `payload` as packets starting at `seq`, split into chunks as the protocol requires;
/// returns the next sequence id.
pub fn encode(out: &mut BytesMut, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_CHUNK);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        out.extend_from_slice(&[seq]);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        // A payload that fills the last chunk exactly is closed by an empty chunk.
        if n < MAX_CHUNK {
            return seq;
        }
    }
}

/// Read size towards a client: commands are small, and an idle client's buffer is memory
/// the proxy holds for it (a larger packet announces its size and gets room for it).
pub const CLIENT_CHUNK: usize = 512;
/// Read size towards a server, whose result sets are streamed through.
pub const BACKEND_CHUNK: usize = 16 * 1024;
/// A buffer grown past this by one large packet is given back once it is drained.
const SHRINK_ABOVE: usize = 64 * 1024;

/// A byte stream read and written as packets.
pub struct PacketStream<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    chunk: usize,
    /// Longest payload accepted; a longer one is refused on its header.
    max_payload: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketStream<S> {
    /// A stream read `chunk` bytes at a time (at least).
    pub fn new(stream: S, chunk: usize) -> Self {
        Self { stream, rbuf: BytesMut::new(), wbuf: BytesMut::new(), chunk, max_payload: MAX_CHUNK }
    }

    /// Refuses chunks longer than `max_payload` (`InvalidData`) as soon as their header is read.
    pub fn limit(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// The next chunk; `None` on a clean end of stream between packets.
    pub async fn read(&mut self) -> std::io::Result<Option<Packet>> {
        loop {
            if self.rbuf.len() >= 4 {
                let len =
                    u32::from_le_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], 0]) as usize;
                if self.rbuf.len() >= 4 + len {
                    return Ok(Some(Packet { bytes: self.rbuf.split_to(4 + len).freeze() }));
                }
                if len > self.max_payload {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                // Room for the rest of the packet as it arrives, doubling at most: a header
                // alone must not make the proxy set aside the 16 MiB it may announce.
                let missing = 4 + len - self.rbuf.len();
                self.rbuf.reserve(missing.min(self.rbuf.len().max(self.chunk)));
            } else if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
                self.rbuf = BytesMut::new();
            }
            crate::buffers::make_room(&mut self.rbuf, self.chunk);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Whether bytes were read past the last packet returned (so the peer is not idle).
    pub fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Queues a chunk exactly as received.
    pub fn queue_raw(&mut self, packet: &Packet) {
        self.wbuf.extend_from_slice(&packet.bytes);
    }

    /// Queues a payload as packets from `seq`; returns the next sequence id.
    pub fn queue(&mut self, seq: u8, payload: &[u8]) -> u8 {
        encode(&mut self.wbuf, seq, payload)
    }

    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        while self.wbuf.has_remaining() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.wbuf.advance(n);
        }
        if self.wbuf.capacity() > SHRINK_ABOVE {
            self.wbuf = BytesMut::new();
        }
        self.stream.flush().await
    }

    /// Queues and flushes one payload.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<u8> {
        let next = self.queue(seq, payload);
        self.flush().await?;
        Ok(next)
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packets_round_trip_including_split_payloads() -> std::io::Result<()> {
        let big = vec![7u8; MAX_CHUNK + 10];
        let exact = vec![8u8; MAX_CHUNK];
        let mut wire = BytesMut::new();
        assert_eq!(encode(&mut wire, 0, b"\x03SELECT 1"), 1);
        assert_eq!(encode(&mut wire, 5, &big), 7);
        assert_eq!(encode(&mut wire, 0, &exact), 2, "an exact multiple ends with an empty chunk");
        let mut stream = PacketStream::new(std::io::Cursor::new(wire.to_vec()), 7);
        let p = stream.read().await?.expect("packet");
        assert_eq!((p.seq(), p.payload()), (0, &b"\x03SELECT 1"[..]));
        let first = stream.read().await?.expect("chunk");
        assert!(first.is_continued());
        let second = stream.read().await?.expect("chunk");
        assert_eq!((second.seq(), second.payload().len(), second.is_continued()), (6, 10, false));
        assert!(stream.read().await?.expect("chunk").is_continued());
        assert_eq!(stream.read().await?.expect("chunk").payload().len(), 0);
        assert!(stream.read().await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn room_grows_with_the_bytes_not_with_the_header() {
        // Found by fuzzing: a 4-byte header announcing 16 MiB had that much reserved at once.
        let mut wire = vec![0xff, 0xff, 0xff, 0];
        wire.extend_from_slice(&[1; 100]);
        let mut stream = PacketStream::new(std::io::Cursor::new(wire), CLIENT_CHUNK);
        assert!(stream.read().await.is_err(), "truncated");
        assert!(stream.rbuf.capacity() < 64 * 1024, "{} bytes reserved", stream.rbuf.capacity());
    }

    #[tokio::test]
    async fn a_limited_stream_refuses_a_long_packet_on_its_header() {
        let mut stream = PacketStream::new(std::io::Cursor::new(vec![0, 1, 0, 0]), CLIENT_CHUNK);
        stream.limit(255);
        let e = stream.read().await.err().map(|e| e.kind());
        assert_eq!(e, Some(std::io::ErrorKind::InvalidData));
        let mut stream =
            PacketStream::new(std::io::Cursor::new(vec![1, 0, 0, 0, 0x0e]), CLIENT_CHUNK);
        stream.limit(1);
        assert!(stream.read().await.is_ok_and(|p| p.is_some()));
    }

    #[tokio::test]
    async fn a_truncated_packet_is_an_error() {
        let mut stream =
            PacketStream::new(std::io::Cursor::new(vec![5, 0, 0, 0, 1, 2]), CLIENT_CHUNK);
        assert!(stream.read().await.is_err());
    }
}
