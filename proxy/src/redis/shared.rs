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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::backend::BackendConn;
use super::codec::FrameScanner;

/// Consecutive whole reply frames for one client, as they came off the connection: a
/// pipeline's replies travel as one message, not one per frame.
#[derive(Debug)]
pub struct Replies {
    pub bytes: Bytes,
    pub frames: usize,
}

/// Where a client's replies go.
pub type ReplySink = mpsc::UnboundedSender<Replies>;

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
    dead: Arc<AtomicBool>,
}

impl SharedConn {
    /// Starts the task that drives `conn`.
    pub fn spawn(conn: BackendConn) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(conn, rx, dead.clone()));
        Self { jobs, dead }
    }

    pub fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire) && !self.jobs.is_closed()
    }

    /// Queues a job; false if the connection is gone (the job was not taken).
    pub fn send(&self, job: Job) -> bool {
        self.is_alive() && self.jobs.send(job).is_ok()
    }
}

/// Largest batch written at once; more jobs wait for the next write.
const MAX_BATCH: usize = 256 * 1024;
/// Room made in the read buffer before each read: replies for many clients arrive together.
const READ_CHUNK: usize = 16 * 1024;

async fn drive(conn: BackendConn, mut jobs: mpsc::UnboundedReceiver<Job>, dead: Arc<AtomicBool>) {
    let (mut reader, mut writer) = crate::upstream::split(conn.stream);
    let mut input = conn.leftover;
    let mut scanner = FrameScanner::default();
    let mut output = BytesMut::new();
    // Who is owed the next replies, and how many each.
    let mut owed: VecDeque<(ReplySink, usize)> = VecDeque::new();
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
            written = writer.write(&output), if !output.is_empty() => match written {
                Ok(0) | Err(_) => break Some("write failed"),
                Ok(n) => output.advance(n),
            },
        }
    };
    dead.store(true, Ordering::Release);
    if let Some(why) = failure {
        tracing::debug!(why, owed = owed.len(), "shared backend connection ended");
    }
    // Every reply still owed becomes an error, so no client waits forever.
    for (to, n) in owed {
        let _ = to.send(lost(n));
    }
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        let _ = job.to.send(lost(job.replies));
    }
}

/// `n` errors in place of `n` replies.
fn lost(n: usize) -> Replies {
    Replies { bytes: LOST.repeat(n).into(), frames: n }
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
    output: &mut BytesMut,
    owed: &mut VecDeque<(ReplySink, usize)>,
) {
    while output.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => take(job, output, owed),
            Err(_) => break,
        }
    }
}

fn take(job: Job, output: &mut BytesMut, owed: &mut VecDeque<(ReplySink, usize)>) {
    output.extend_from_slice(&job.wire);
    if job.replies > 0 {
        owed.push_back((job.to, job.replies));
    }
}

/// Hands every complete frame to whoever is owed it next, each client's consecutive frames
/// together.
fn deliver(
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    owed: &mut VecDeque<(ReplySink, usize)>,
) -> Result<(), &'static str> {
    // `input[..end]` holds `frames` whole frames owed to the client at the front of `owed`.
    // The scanner only ever sees `input[end..]`, and `end` is 0 whenever it stops mid-frame.
    let (mut end, mut frames) = (0, 0);
    let hand_over = |input: &mut BytesMut, end: usize, frames: usize, to: &ReplySink| {
        // A client that went away still had its replies read off the connection.
        let _ = to.send(Replies { bytes: input.split_to(end).freeze(), frames });
    };
    loop {
        let scanned = scanner.scan(&input[end..]).map_err(|_| "malformed reply")?;
        let Some(len) = scanned else { break };
        if input[end] == b'>' {
            // A push on a shared connection belongs to nobody (subscriptions and tracking
            // never run on one).
            if let Some((to, _)) = owed.front().filter(|_| frames > 0) {
                hand_over(input, end, frames, to);
            }
            input.advance(len);
            (end, frames) = (0, 0);
            continue;
        }
        let Some((to, left)) = owed.front_mut() else { return Err("reply nobody asked for") };
        end += len;
        frames += 1;
        *left -= 1;
        if *left == 0 {
            hand_over(input, end, frames, to);
            owed.pop_front();
            (end, frames) = (0, 0);
        }
    }
    if let Some((to, _)) = owed.front().filter(|_| frames > 0) {
        hand_over(input, end, frames, to);
    }
    Ok(())
}
