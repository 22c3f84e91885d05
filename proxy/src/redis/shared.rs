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

/// Where a client's replies go.
pub type ReplySink = mpsc::UnboundedSender<Bytes>;

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

async fn drive(conn: BackendConn, mut jobs: mpsc::UnboundedReceiver<Job>, dead: Arc<AtomicBool>) {
    let (mut reader, mut writer) = conn.stream.into_split();
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
            job = jobs.recv(), if accepting && output.len() < MAX_BATCH => match job {
                Some(job) => {
                    take(job, &mut output, &mut owed);
                    // Everything else already queued goes into the same write.
                    while output.len() < MAX_BATCH {
                        match jobs.try_recv() {
                            Ok(job) => take(job, &mut output, &mut owed),
                            Err(_) => break,
                        }
                    }
                }
                None => accepting = false,
            },
            written = writer.write(&output), if !output.is_empty() => match written {
                Ok(0) | Err(_) => break Some("write failed"),
                Ok(n) => output.advance(n),
            },
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => break Some("connection closed"),
                Ok(_) => {
                    if let Err(why) = deliver(&mut input, &mut scanner, &mut owed) {
                        break Some(why);
                    }
                }
            },
        }
    };
    dead.store(true, Ordering::Release);
    if let Some(why) = failure {
        tracing::debug!(why, owed = owed.len(), "shared backend connection ended");
    }
    // Every reply still owed becomes an error, so no client waits forever.
    let lost = Bytes::from_static(LOST);
    for (to, n) in owed {
        for _ in 0..n {
            let _ = to.send(lost.clone());
        }
    }
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        for _ in 0..job.replies {
            let _ = job.to.send(lost.clone());
        }
    }
}

fn take(job: Job, output: &mut BytesMut, owed: &mut VecDeque<(ReplySink, usize)>) {
    output.extend_from_slice(&job.wire);
    if job.replies > 0 {
        owed.push_back((job.to, job.replies));
    }
}

/// Hands every complete frame to whoever is owed it next.
fn deliver(
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    owed: &mut VecDeque<(ReplySink, usize)>,
) -> Result<(), &'static str> {
    while let Some(len) = scanner.scan(input).map_err(|_| "malformed reply")? {
        let frame = input.split_to(len).freeze();
        if frame.first() == Some(&b'>') {
            // A push on a shared connection belongs to nobody (subscriptions and tracking
            // never run on one).
            continue;
        }
        let Some((to, left)) = owed.front_mut() else { return Err("reply nobody asked for") };
        // A client that went away still had its replies read off the connection.
        let _ = to.send(frame);
        *left -= 1;
        if *left == 0 {
            owed.pop_front();
        }
    }
    Ok(())
}
