//! A shared backend connection: one task owns it, writes whatever its clients queued as one
//! batch, and hands every reply frame, in order, to the client that asked. Clients stick to
//! one shared connection, so each client's replies come back in the order it sent commands.
//!
//! ```text
//!  client A ──job(bytes, 2 replies)──┐                ┌──▶ A: reply, reply
//!  client B ──job(bytes, 1 reply)────┼─▶ task ═══ redis ═╪──▶ B: reply
//!  client A ──job(bytes, 1 reply)────┘   (FIFO of       └──▶ A: reply
//!                                         who asked)
//! ```

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::backend::BackendConn;
use super::codec::FrameScanner;

/// Consecutive whole reply frames for one client, as they came off the connection: a
/// pipeline's replies travel as one message, not one per frame.
#[derive(Debug)]
pub struct Replies {
    pub bytes: Bytes,
    pub frames: usize,
}

/// What a shared connection hands a client.
#[derive(Debug)]
pub enum Delivery {
    Replies(Replies),
    /// Commands of the client's that the connection died before writing any byte of, so the
    /// server never saw them, and how many replies they owe: the client may send them again on
    /// another connection.
    Unsent {
        wire: Bytes,
        replies: usize,
    },
}

/// Where a client's replies go.
pub type ReplySink = mpsc::UnboundedSender<Delivery>;

/// Commands of one client for the shared connection, and how many replies they get.
pub struct Job {
    pub wire: Bytes,
    pub replies: usize,
    pub to: ReplySink,
}

/// Sent to each client in place of every reply still owed when the connection fails.
pub const LOST: &[u8] = b"-ERR Dormouse: lost the connection to the database\r\n";

/// A handle to a shared connection's task.
#[derive(Clone)]
pub struct SharedConn {
    jobs: mpsc::UnboundedSender<Job>,
    /// Becomes true (or closes, if the task is dropped) once the task has handed every client
    /// all it will ever send it.
    ended: watch::Receiver<bool>,
}

impl SharedConn {
    /// Starts the task that drives `conn`.
    pub fn spawn(conn: BackendConn) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (ended_tx, ended) = watch::channel(false);
        tokio::spawn(drive(conn, rx, ended_tx));
        Self { jobs, ended }
    }

    pub fn is_alive(&self) -> bool {
        !*self.ended.borrow() && !self.jobs.is_closed()
    }

    /// Queues a job; gives it back if the connection is gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        if !self.is_alive() {
            return Err(job);
        }
        self.jobs.send(job).map_err(|e| e.0)
    }

    /// Waits until the task has sent its clients everything it ever will: after a failure,
    /// each client then has every reply, error and unsent command owed to it in its channel.
    pub async fn ended(&self) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }
}

/// A client owed replies, and where the job they answer lies in everything ever queued for
/// the connection.
struct Owed {
    to: ReplySink,
    left: usize,
    start: u64,
    len: usize,
}

/// Largest batch written at once; more jobs wait for the next write.
const MAX_BATCH: usize = 256 * 1024;
/// Room made in the read buffer before each read: replies for many clients arrive together.
const READ_CHUNK: usize = 16 * 1024;

async fn drive(
    conn: BackendConn,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ended: watch::Sender<bool>,
) {
    let (mut reader, mut writer) = crate::upstream::split(conn.stream);
    let mut input = conn.leftover;
    let mut scanner = FrameScanner::default();
    let mut output = Output::default();
    // Who is owed the next replies, and how many each.
    let mut owed: VecDeque<Owed> = VecDeque::new();
    let mut accepting = true;
    let failure = loop {
        if !accepting && owed.is_empty() && output.is_empty() {
            break None;
        }
        tokio::select! {
            // Jobs first, so a write carries what clients queued meanwhile; then replies,
            // before writing, so no client's replies wait behind a large batch.
            biased;
            job = jobs.recv(), if accepting && output.len() < MAX_BATCH => match job {
                Some(job) => {
                    take(job, &mut output, &mut owed);
                    // Everything else already queued goes into the same write; and the
                    // clients that are ready now get to queue theirs too first, so they share
                    // this write instead of each costing a syscall.
                    take_queued(&mut jobs, &mut output, &mut owed);
                    tokio::task::yield_now().await;
                    take_queued(&mut jobs, &mut output, &mut owed);
                }
                None => accepting = false,
            },
            read = read_some(&mut reader, &mut input) => match read {
                Ok(0) | Err(_) => break Some("connection closed"),
                Ok(_) => {
                    if let Err(why) = deliver(&mut input, &mut scanner, &mut owed) {
                        break Some(why);
                    }
                }
            },
            written = writer.write(&output.bytes), if !output.is_empty() => match written {
                Ok(0) | Err(_) => break Some("write failed"),
                Ok(n) => output.advance(n),
            },
        }
    };
    if let Some(why) = failure {
        tracing::debug!(why, owed = owed.len(), "shared backend connection ended");
    }
    // No client waits forever: a reply still owed for a command the server may have seen
    // becomes an error; commands it never saw go back to their clients. In order, then the
    // jobs never taken, and only then is the connection marked ended.
    jobs.close();
    let written = output.written;
    let unwritten = output.bytes.freeze();
    for Owed { to, left, start, len } in owed {
        let delivery = match usize::try_from(start.saturating_sub(written)) {
            Ok(at) if start >= written && at + len <= unwritten.len() => {
                Delivery::Unsent { wire: unwritten.slice(at..at + len), replies: left }
            }
            _ => lost(left),
        };
        let _ = to.send(delivery);
    }
    while let Ok(job) = jobs.try_recv() {
        let _ = job.to.send(Delivery::Unsent { wire: job.wire, replies: job.replies });
    }
    let _ = ended.send(true);
}

/// `n` errors in place of `n` replies.
fn lost(n: usize) -> Delivery {
    Delivery::Replies(Replies { bytes: LOST.repeat(n).into(), frames: n })
}

/// Bytes queued for the connection, and how far writing got in everything ever queued.
#[derive(Default)]
struct Output {
    bytes: BytesMut,
    /// Bytes ever queued, and ever written.
    queued: u64,
    written: u64,
}

impl Output {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn advance(&mut self, n: usize) {
        self.bytes.advance(n);
        self.written += n as u64;
    }
}

async fn read_some(
    reader: &mut crate::upstream::UpstreamReader,
    input: &mut BytesMut,
) -> std::io::Result<usize> {
    crate::buffers::make_room(input, READ_CHUNK);
    reader.read_buf(input).await
}

/// Takes the jobs already queued, up to a batch.
fn take_queued(
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    output: &mut Output,
    owed: &mut VecDeque<Owed>,
) {
    while output.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => take(job, output, owed),
            Err(_) => break,
        }
    }
}

fn take(job: Job, output: &mut Output, owed: &mut VecDeque<Owed>) {
    let start = output.queued;
    output.bytes.extend_from_slice(&job.wire);
    output.queued += job.wire.len() as u64;
    if job.replies > 0 {
        owed.push_back(Owed { to: job.to, left: job.replies, start, len: job.wire.len() });
    }
}

/// Hands every complete frame to whoever is owed it next, each client's consecutive frames
/// together.
fn deliver(
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    owed: &mut VecDeque<Owed>,
) -> Result<(), &'static str> {
    // `input[..end]` holds `frames` whole frames owed to the client at the front of `owed`.
    // The scanner only ever sees `input[end..]`, and `end` is 0 whenever it stops mid-frame.
    let (mut end, mut frames) = (0, 0);
    let hand_over = |input: &mut BytesMut, end: usize, frames: usize, to: &ReplySink| {
        // A client that went away still had its replies read off the connection.
        let _ = to.send(Delivery::Replies(Replies { bytes: input.split_to(end).freeze(), frames }));
    };
    loop {
        let scanned = scanner.scan(&input[end..]).map_err(|_| "malformed reply")?;
        let Some(len) = scanned else { break };
        if input[end] == b'>' {
            // A push on a shared connection belongs to nobody (subscriptions and tracking
            // never run on one).
            if let Some(o) = owed.front().filter(|_| frames > 0) {
                hand_over(input, end, frames, &o.to);
            }
            input.advance(len);
            (end, frames) = (0, 0);
            continue;
        }
        let Some(o) = owed.front_mut() else { return Err("reply nobody asked for") };
        end += len;
        frames += 1;
        o.left -= 1;
        if o.left == 0 {
            hand_over(input, end, frames, &o.to);
            owed.pop_front();
            (end, frames) = (0, 0);
        }
    }
    if let Some(o) = owed.front().filter(|_| frames > 0) {
        hand_over(input, end, frames, &o.to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixStream;
    use tokio_util::either::Either;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn job(wire: impl Into<Bytes>, replies: usize, to: &ReplySink) -> Job {
        Job { wire: wire.into(), replies, to: to.clone() }
    }

    #[tokio::test]
    async fn a_dead_connection_fails_what_it_wrote_and_gives_back_what_it_did_not() -> TestResult {
        let (ours, mut server) = UnixStream::pair()?;
        let conn = BackendConn {
            stream: Either::Right(ours),
            hello: Bytes::new(),
            leftover: BytesMut::new(),
        };
        let shared = SharedConn::spawn(conn);
        let (to, mut rx) = mpsc::unbounded_channel();

        // Answered before the failure.
        shared.send(job(&b"*1\r\n$4\r\nPING\r\n"[..], 1, &to)).map_err(|_| "refused")?;
        let mut ping = [0u8; 14];
        server.read_exact(&mut ping).await?;
        server.write_all(b"+PONG\r\n").await?;
        match rx.recv().await {
            Some(Delivery::Replies(r)) => assert_eq!(&r.bytes[..], b"+PONG\r\n"),
            other => panic!("expected the reply, got {other:?}"),
        }

        // Far more than the socket holds: its writing has begun, and stalls, before the next
        // job is sent, which then waits behind a full batch.
        shared.send(job(vec![b'x'; 8 << 20], 1, &to)).map_err(|_| "refused")?;
        let mut some = [0u8; 1024];
        assert!(server.read(&mut some).await? > 0);
        shared.send(job(&b"*1\r\n$4\r\nPING\r\n"[..], 1, &to)).map_err(|_| "refused")?;
        drop(server);
        shared.ended().await;

        assert!(!shared.is_alive());
        match rx.recv().await {
            Some(Delivery::Replies(r)) => assert_eq!((&r.bytes[..], r.frames), (LOST, 1)),
            other => panic!("expected an error for the partly written job, got {other:?}"),
        }
        match rx.recv().await {
            Some(Delivery::Unsent { wire, replies }) => {
                assert_eq!((&wire[..], replies), (&b"*1\r\n$4\r\nPING\r\n"[..], 1));
            }
            other => panic!("expected the unwritten job back, got {other:?}"),
        }
        assert!(shared.send(job(&b"*1\r\n$4\r\nPING\r\n"[..], 1, &to)).is_err());
        Ok(())
    }
}
