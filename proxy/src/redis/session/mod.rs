//! One client's session. Commands are read, answered by the proxy where they concern only the
//! client (AUTH, HELLO, QUIT, RESET, CLIENT SETNAME, refusals), and otherwise forwarded on the
//! client's link: a shared backend connection most of the time, a connection of its own while
//! it holds server-side state (a transaction, a blocking call, subscriptions). Replies come back
//! in request order whatever produced them. One task drives both directions with bounded
//! buffers, so a slow reader on either side slows the other instead of growing memory.
//!
//! Files: `login` (AUTH, HELLO, RESET), `route` (classification, links, local answers),
//! `replies` (reply ordering, pub/sub frames), `heal` (a backend connection that died).

mod heal;
mod login;
mod replies;
mod route;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RedisFrontend;
use super::codec::{FrameScanner, ProtocolError, Request, RequestLimits, RequestReader};
use super::commands::{Action, CommandTable};
use super::pool::{OwnSlot, RedisPool};
use super::shared::{Delivery, Job, ReplySink, SharedConn};
use crate::auth::Identity;
use crate::buffers::make_room;
use crate::control::SessionGuard;
use crate::limits::{ClientSlot, Ticket};
use crate::upstream::{UpstreamReader, UpstreamWriter};

/// Before authentication a client may send only small requests (AUTH, HELLO).
const PRE_AUTH_LIMITS: RequestLimits = RequestLimits { max_bytes: 16 * 1024, max_args: 16 };
/// Redis' own cap on arguments per command.
const MAX_ARGS: usize = 1024 * 1024;
/// Commands with more arguments than this take the general path.
const PASS_MAX_ARGS: usize = 8;
/// Stop reading new commands while this many replies are outstanding.
const MAX_PENDING: usize = 16 * 1024;
/// Stop reading from a side while the buffer towards the other side holds this much.
const HIGH_WATER: usize = 1024 * 1024;

const OK: &[u8] = b"+OK\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const BACKEND_LOST: &[u8] = super::shared::LOST;

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("client connection: {0}")]
    Client(std::io::Error),
    #[error("server sent a reply nobody asked for")]
    Desync,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Commands the session answers itself, before routing.
#[derive(Debug, Clone, Copy)]
enum Own {
    Auth,
    Hello,
    Reset,
    Quit,
    /// PING before authentication.
    Ping,
}

const OWN: [(&[u8], Own); 5] = [
    (b"auth", Own::Auth),
    (b"hello", Own::Hello),
    (b"reset", Own::Reset),
    (b"quit", Own::Quit),
    (b"ping", Own::Ping),
];

/// The command named `name` if the session answers it itself: PING only before
/// authentication.
fn own_command(name: &[u8], authed: bool) -> Option<Own> {
    OWN.iter()
        .find(|(own, _)| name.eq_ignore_ascii_case(own))
        .map(|(_, own)| *own)
        .filter(|own| !(authed && matches!(own, Own::Ping)))
}

/// What the next reply bytes towards the client are.
#[derive(Debug)]
enum Pending {
    /// The backend's next reply.
    Backend,
    /// The backend's next reply is swallowed and this is sent instead.
    Replace(&'static [u8]),
    /// Pub/sub confirmations from a RESP2 (P|S)(UN)SUBSCRIBE: one per channel named, or for a
    /// bare unsubscribe one per channel of its kind (at least one); together they are its reply.
    Subscribe { left: usize },
    /// The reply to a HELLO that switches protocol: the switch holds only if it is not an error.
    Hello { resp3: bool },
    /// A reply made by the proxy, held until the replies before it have gone out.
    Local(Bytes),
}

/// What a connection is subscribed to, as its confirmations said. While anything is, the
/// client keeps its own connection, and on RESP2 arrays from the server may be pushed messages.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard_channels: HashSet<Bytes>,
}

/// MULTI and WATCH state. A command the proxy refuses inside a transaction must make its EXEC
/// fail, as the server does for commands it rejects while queueing.
#[derive(Debug, Default)]
struct Transaction {
    open: bool,
    failed: bool,
    watching: bool,
    /// The connection holding the transaction or the watched keys died: commands are refused
    /// until the client ends the transaction (EXEC, DISCARD, UNWATCH, RESET), so none of them
    /// runs outside the transaction it was meant for.
    lost: bool,
}

/// A backend connection the client has to itself.
struct OwnLink {
    reader: UpstreamReader,
    rbuf: BytesMut,
    scanner: FrameScanner,
    writer: UpstreamWriter,
    wbuf: BytesMut,
    hello: Bytes,
    slot: OwnSlot,
}

pub(super) struct Session {
    front: Arc<RedisFrontend>,
    peer: SocketAddr,
    /// This session's id (what CLIENT ID answers) and name (CLIENT SETNAME).
    id: u64,
    name: Option<Bytes>,
    /// Bytes from the client not yet parsed, and the parser's progress through them.
    input: BytesMut,
    /// Room made in `input` before a read: small while the client sends little (an idle
    /// client's buffer is memory held for it), larger while it pipelines.
    read_size: usize,
    requests: RequestReader,
    /// Bytes for the client not yet written.
    output: BytesMut,
    pending: VecDeque<Pending>,
    identity: Option<Identity>,
    table: Option<Arc<CommandTable>>,
    resp3: bool,
    subscriptions: Subscriptions,
    transaction: Transaction,
    /// A command that must wait until every earlier reply is out (re-AUTH, HELLO, RESET, and
    /// anything that moves the client to or from a connection of its own).
    deferred: Option<Request>,
    /// Close once every pending reply is written.
    closing: bool,
    /// An unauthenticated session must authenticate by then.
    auth_deadline: Instant,
    /// The database's route, its pool for the session's RESP version, and the session's
    /// shared connection in it.
    route: Option<crate::control::Route>,
    pool: Option<Arc<RedisPool>>,
    shared: Option<SharedConn>,
    /// Commands for the shared connection, sent together once the input is parsed.
    batch: BytesMut,
    batch_replies: usize,
    /// Where the shared connection delivers this session's replies.
    reply_tx: ReplySink,
    reply_rx: mpsc::UnboundedReceiver<Delivery>,
    /// Commands a dead shared connection never wrote, to send again on the next one (their
    /// replies are still pending), and how many replies they owe.
    resend: BytesMut,
    resend_replies: usize,
    own: Option<OwnLink>,
    /// Counts this session on its database (for idle suspension and the client limit).
    activity: Option<(SessionGuard, ClientSlot)>,
    /// The connection's place: pending until its first login, then a logged-in client.
    ticket: Ticket,
}

/// How long an unauthenticated client past its deadline has to read what it is owed.
const UNREAD_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl Session {
    /// A session for a client that must authenticate by `auth_deadline`, holding `ticket`
    /// (its place among the listener's pending or logged-in connections).
    pub(super) fn new(
        front: Arc<RedisFrontend>,
        peer: SocketAddr,
        ticket: Ticket,
        auth_deadline: Instant,
    ) -> Self {
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        Self {
            id: front.next_client_id(),
            front,
            peer,
            name: None,
            input: BytesMut::new(),
            read_size: MIN_READ,
            requests: RequestReader::default(),
            output: BytesMut::new(),
            pending: VecDeque::new(),
            identity: None,
            table: None,
            resp3: false,
            subscriptions: Subscriptions::default(),
            transaction: Transaction::default(),
            deferred: None,
            closing: false,
            auth_deadline,
            route: None,
            pool: None,
            shared: None,
            batch: BytesMut::new(),
            batch_replies: 0,
            reply_tx,
            reply_rx,
            resend: BytesMut::new(),
            resend_replies: 0,
            own: None,
            activity: None,
            ticket,
        }
    }

    pub(super) async fn run<S>(
        mut self,
        stream: S,
        shutdown: CancellationToken,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let (mut client_r, mut client_w) = tokio::io::split(stream);
        let result = loop {
            if self.closing && self.pending.is_empty() && self.output.is_empty() {
                let _ = client_w.shutdown().await;
                break Ok(());
            }
            let own_full = self.own.as_ref().is_some_and(|o| o.wbuf.len() >= HIGH_WATER);
            let read_client = !self.closing
                && self.deferred.is_none()
                && self.pending.len() < MAX_PENDING
                && self.output.len() < HIGH_WATER
                && !own_full;
            let take_replies = self.output.len() < HIGH_WATER;
            let own_has_output = self.own.as_ref().is_some_and(|o| !o.wbuf.is_empty());
            // Reading and writing the own connection borrow different fields of it.
            let spare = make_room(&mut self.input, self.read_size);
            let (own_reader, own_writer) = match self.own.as_mut() {
                Some(o) => (Some((&mut o.reader, &mut o.rbuf)), Some((&mut o.writer, &mut o.wbuf))),
                None => (None, None),
            };
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep_until(self.auth_deadline), if self.identity.is_none() && !self.closing => {
                    self.reply(b"-ERR Dormouse: authentication timeout\r\n");
                    self.closing = true;
                }
                // A client that does not read (its `PING` echoes filled the socket) gets a
                // moment to take the timeout error, then is dropped unflushed.
                () = tokio::time::sleep_until(self.auth_deadline + UNREAD_GRACE), if self.identity.is_none() && self.closing => {
                    break Ok(());
                }
                written = client_w.write(&self.output), if !self.output.is_empty() => {
                    match written {
                        Ok(n) => self.output.advance(n),
                        Err(e) => break Err(SessionError::Client(e)),
                    }
                }
                delivery = self.reply_rx.recv(), if take_replies => {
                    // The session holds a sender itself, so the channel never closes.
                    if let Some(delivery) = delivery
                        && let Err(e) = self.on_delivery(delivery)
                    {
                        break Err(e);
                    }
                    if !self.resend.is_empty() {
                        // The client may be waiting for those replies, sending nothing.
                        self.on_client_input().await;
                    }
                }
                written = write_own(own_writer), if own_has_output => {
                    if let Err(e) = written {
                        tracing::debug!(peer = %self.peer, error = %e, "backend write failed");
                        self.own_lost();
                    }
                }
                read = read_own(own_reader), if take_replies => match read {
                    Ok(0) | Err(_) => self.own_lost(),
                    Ok(_) => {
                        if let Err(e) = self.on_own_input() {
                            break Err(e);
                        }
                    }
                },
                read = client_r.read_buf(&mut self.input), if read_client => {
                    match read {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            self.read_size = next_read_size(self.read_size, n, spare);
                            self.on_client_input().await;
                        }
                        Err(e) => break Err(SessionError::Client(e)),
                    }
                }
            }
            if self.pending.is_empty() {
                self.release_own_if_done();
                if self.deferred.is_some() {
                    self.on_client_input().await;
                }
            }
        };
        self.end();
        result
    }

    /// Parses and handles every complete command in the input buffer, then sends the shared
    /// connection's batch.
    async fn on_client_input(&mut self) {
        self.heal_shared().await;
        while !self.closing {
            if self.deferred.is_none() && self.pass_through() {
                continue;
            }
            let limits = self.limits();
            let request = match self.deferred.take() {
                Some(r) => r,
                None => match self.requests.take(&mut self.input, limits) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        // Like Redis: report the protocol error and close.
                        self.reply(format!("-ERR {e}\r\n").as_bytes());
                        self.closing = true;
                        break;
                    }
                },
            };
            if request.args.is_empty() {
                continue;
            }
            if !self.dispatch(request).await {
                break;
            }
        }
        self.flush_batch();
        if !self.resend.is_empty() || !self.batch.is_empty() {
            // The shared connection died under this batch before writing it.
            self.heal_shared().await;
            self.flush_batch();
        }
    }

    /// The common case, without making a [`Request`]: a whole command for the shared
    /// connection that the proxy has nothing to do with is copied from the input into the
    /// batch. False when the next command takes the general path (the scan is kept for it).
    fn pass_through(&mut self) -> bool {
        let transaction = self.transaction.open || self.transaction.lost;
        if self.own.is_some() || self.shared.is_none() || transaction {
            return false;
        }
        let limits = self.limits();
        let (Some(table), Some(identity)) = (self.table.as_deref(), self.identity.as_ref()) else {
            return false;
        };
        let Ok(Some(len)) = self.requests.scan(&self.input, limits) else { return false };
        let places = self.requests.args();
        if places.is_empty() || places.len() > PASS_MAX_ARGS {
            return false;
        }
        let mut args: [&[u8]; PASS_MAX_ARGS] = [&[]; PASS_MAX_ARGS];
        for (arg, place) in args.iter_mut().zip(places) {
            *arg = &self.input[place.clone()];
        }
        let args = &args[..places.len()];
        if own_command(args[0], true).is_some()
            || table.classify(args, identity.role) != Action::Forward
        {
            return false;
        }
        self.batch.extend_from_slice(&self.input[..len]);
        self.input.advance(len);
        self.requests.done();
        self.batch_replies += 1;
        self.pending.push_back(Pending::Backend);
        true
    }

    fn limits(&self) -> RequestLimits {
        if self.identity.is_some() {
            RequestLimits { max_bytes: self.front.config.max_request_bytes, max_args: MAX_ARGS }
        } else {
            PRE_AUTH_LIMITS
        }
    }

    /// Handles one command; false when it had to be put off until earlier replies are out.
    async fn dispatch(&mut self, request: Request) -> bool {
        let authed = self.identity.is_some();
        // Only a few names are the session's own; everything else is routed without a copy.
        let own = own_command(&request.args[0], authed);
        if matches!(own, Some(Own::Auth | Own::Hello | Own::Reset)) && !self.quiet() {
            self.deferred = Some(request);
            return false;
        }
        match own {
            Some(Own::Auth) => self.auth(&request.args[1..]).await,
            Some(Own::Hello) => self.hello(&request.args[1..]).await,
            Some(Own::Quit) => {
                self.reply(OK);
                self.closing = true;
            }
            Some(Own::Reset) => self.reset(),
            Some(Own::Ping) => match request.args.get(1) {
                Some(msg) => self.reply(&bulk(msg)),
                None => self.reply(b"+PONG\r\n"),
            },
            _ if !authed => self.reply(NOAUTH),
            _ => return self.route(request).await,
        }
        true
    }

    /// No reply is owed and nothing waits to be sent: the session may change link.
    fn quiet(&self) -> bool {
        self.pending.is_empty() && self.batch.is_empty()
    }

    /// Queues a reply made by the proxy behind any reply still owed by the backend.
    fn reply(&mut self, bytes: &[u8]) {
        if self.pending.is_empty() && self.batch_replies == 0 {
            self.output.extend_from_slice(bytes);
        } else {
            self.pending.push_back(Pending::Local(Bytes::copy_from_slice(bytes)));
        }
    }

    /// Sends a command on the session's link and records what it will be answered with.
    fn send(&mut self, request: &Request, expect: Pending) {
        if self.own.is_none() && self.shared.is_none() {
            return self.reply_unlinked();
        }
        self.send_unanswered(request);
        if self.own.is_none() {
            self.batch_replies += match expect {
                Pending::Subscribe { left } => left,
                Pending::Local(_) => 0,
                _ => 1,
            };
        }
        self.pending.push_back(expect);
    }

    /// Sends a command whose answer does not come as a reply (RESP3 subscriptions).
    fn send_unanswered(&mut self, request: &Request) {
        if let Some(own) = self.own.as_mut() {
            own.wbuf.extend_from_slice(&request.wire);
        } else if self.shared.is_some() {
            self.batch.extend_from_slice(&request.wire);
        } else {
            self.reply_unlinked();
        }
    }

    /// The answer to a command while the session has no backend connection: linking afresh
    /// after the backend died did not work (yet); the next command tries again.
    fn reply_unlinked(&mut self) {
        let error = self.unavailable();
        self.reply(&error);
    }

    /// The error for a command the database cannot take right now.
    fn unavailable(&self) -> Bytes {
        let database = self.identity.as_ref().map_or("", |i| i.database.as_str());
        format!("-ERR Dormouse: database '{database}' is unavailable right now, try again\r\n")
            .into()
    }

    /// Hands the batch to the shared connection.
    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let job = Job {
            wire: self.batch.split().freeze(),
            replies: self.batch_replies,
            to: self.reply_tx.clone(),
        };
        self.batch_replies = 0;
        let refused = match self.shared.as_ref() {
            Some(shared) => shared.send(job).err(),
            None => Some(job),
        };
        if let Some(job) = refused {
            // It died since `heal_shared` looked: the batch waits for the next link.
            self.batch.extend_from_slice(&job.wire);
            self.batch_replies = job.replies;
        }
    }

    /// Lets go of every backend connection; an own connection goes back only if clean.
    fn drop_links(&mut self) {
        self.own = None;
        self.shared = None;
        self.pool = None;
        self.subscriptions = Subscriptions::default();
        self.transaction = Transaction::default();
        self.activity = None;
    }

    /// At the end of the session: an own connection with nothing outstanding goes back.
    fn end(&mut self) {
        if self.pending.is_empty() {
            self.release_own_if_done();
        }
        self.drop_links();
    }
}

fn bulk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

async fn write_own(own: Option<(&mut UpstreamWriter, &mut BytesMut)>) -> std::io::Result<()> {
    match own {
        Some((writer, buf)) => {
            let n = writer.write(buf).await?;
            buf.advance(n);
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// Smallest and largest room made for a client's next read.
const MIN_READ: usize = 512;
const MAX_READ: usize = 16 * 1024;

/// Grows the read size while reads fill the room given, shrinks it while they use little.
fn next_read_size(size: usize, read: usize, room: usize) -> usize {
    if read >= room {
        (size * 2).min(MAX_READ)
    } else if read < size / 4 {
        (size / 2).max(MIN_READ)
    } else {
        size
    }
}

async fn read_own(own: Option<(&mut UpstreamReader, &mut BytesMut)>) -> std::io::Result<usize> {
    match own {
        Some((reader, buf)) => {
            make_room(buf, MAX_READ);
            reader.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}
