//! One client's session: read commands, answer the ones the proxy owns (AUTH, HELLO, QUIT,
//! RESET, refusals), forward the rest to the session's backend connection, and hand every
//! reply back in request order. One task drives both directions with bounded buffers, so a
//! slow reader on either side slows the other instead of growing memory.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, ProtocolError, Request, RequestLimits};
use super::commands::{Action, CommandTable};
use super::{LoginError, RedisFrontend};
use crate::auth::{AuthError, Identity};
use crate::control::SessionGuard;

/// Before authentication a client may send only small requests (AUTH, HELLO).
const PRE_AUTH_LIMITS: RequestLimits = RequestLimits { max_bytes: 16 * 1024, max_args: 16 };
/// Redis' own cap on arguments per command.
const MAX_ARGS: usize = 1024 * 1024;
/// Stop reading new commands while this many replies are outstanding.
const MAX_PENDING: usize = 16 * 1024;
/// Stop reading from a side while the buffer towards the other side holds this much.
const HIGH_WATER: usize = 1024 * 1024;

const OK: &[u8] = b"+OK\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const NOAUTH_HELLO: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, \
otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
select the RESP protocol version at the same time\r\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
const BACKEND_LOST: &[u8] = b"-ERR Dormouse: lost the connection to the database\r\n";

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("client connection: {0}")]
    Client(std::io::Error),
    #[error("server sent a reply nobody asked for")]
    Desync,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
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

/// Options of a HELLO that authenticates.
struct Hello {
    resp3: bool,
    setname: Option<Bytes>,
}

/// What a RESP2 connection is subscribed to, as its confirmations said. While anything is,
/// arrays from the server may be pushed messages rather than replies.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard_channels: HashSet<Bytes>,
}

impl Subscriptions {
    fn active(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }

    /// How many confirmations the (un)subscribe command `name` with `names` arguments gets.
    fn confirmations(&self, name: &str, names: usize) -> usize {
        let subscribed = match name {
            _ if names > 0 => return names,
            "unsubscribe" => self.channels.len(),
            "punsubscribe" => self.patterns.len(),
            "sunsubscribe" => self.shard_channels.len(),
            _ => 1,
        };
        subscribed.max(1)
    }

    fn confirm(&mut self, kind: &[u8], name: &[u8]) {
        let name = Bytes::copy_from_slice(name);
        match kind {
            b"subscribe" => self.channels.insert(name),
            b"unsubscribe" => self.channels.remove(&name),
            b"psubscribe" => self.patterns.insert(name),
            b"punsubscribe" => self.patterns.remove(&name),
            b"ssubscribe" => self.shard_channels.insert(name),
            b"sunsubscribe" => self.shard_channels.remove(&name),
            _ => false,
        };
    }
}

/// MULTI state: a command the proxy refuses inside a transaction must make its EXEC fail, as
/// the server does for commands it rejects while queueing.
#[derive(Debug, Default)]
struct Transaction {
    open: bool,
    failed: bool,
}

struct BackendReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    scanner: codec::FrameScanner,
}

struct BackendWriter {
    half: OwnedWriteHalf,
    buf: BytesMut,
}

pub(super) struct Session {
    front: Arc<RedisFrontend>,
    peer: SocketAddr,
    /// Bytes from the client not yet parsed, and the parser's progress through them.
    input: BytesMut,
    requests: codec::RequestReader,
    /// Bytes for the client not yet written.
    output: BytesMut,
    reader: Option<BackendReader>,
    writer: Option<BackendWriter>,
    pending: VecDeque<Pending>,
    identity: Option<Identity>,
    table: Option<Arc<CommandTable>>,
    resp3: bool,
    subscriptions: Subscriptions,
    transaction: Transaction,
    /// A command that must wait until every earlier reply is out (re-AUTH, HELLO, RESET).
    deferred: Option<Request>,
    /// Close once every pending reply is written.
    closing: bool,
    /// An unauthenticated session must authenticate by then.
    auth_deadline: Instant,
    /// Counts this session on its database while a backend connection is open.
    activity: Option<SessionGuard>,
}

impl Session {
    pub(super) fn new(front: Arc<RedisFrontend>, peer: SocketAddr) -> Self {
        Self {
            front,
            peer,
            input: BytesMut::with_capacity(4096),
            requests: codec::RequestReader::default(),
            output: BytesMut::with_capacity(4096),
            reader: None,
            writer: None,
            pending: VecDeque::new(),
            identity: None,
            table: None,
            resp3: false,
            subscriptions: Subscriptions::default(),
            transaction: Transaction::default(),
            deferred: None,
            closing: false,
            auth_deadline: Instant::now(),
            activity: None,
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
        self.auth_deadline = Instant::now() + self.front.config.auth_timeout;
        loop {
            if self.closing && self.pending.is_empty() && self.output.is_empty() {
                let _ = client_w.shutdown().await;
                return Ok(());
            }
            let backend_full = self.writer.as_ref().is_some_and(|w| w.buf.len() >= HIGH_WATER);
            let read_client = !self.closing
                && self.deferred.is_none()
                && self.pending.len() < MAX_PENDING
                && self.output.len() < HIGH_WATER
                && !backend_full;
            let read_backend = self.output.len() < HIGH_WATER;
            let write_backend = self.writer.as_ref().is_some_and(|w| !w.buf.is_empty());
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(self.auth_deadline), if self.identity.is_none() && !self.closing => {
                    self.reply(b"-ERR Dormouse: authentication timeout\r\n");
                    self.closing = true;
                }
                written = client_w.write(&self.output), if !self.output.is_empty() => {
                    let n = written.map_err(SessionError::Client)?;
                    self.output.advance(n);
                }
                written = write_backend_half(self.writer.as_mut()), if write_backend => {
                    if let Err(e) = written {
                        tracing::debug!(peer = %self.peer, error = %e, "backend write failed");
                        self.backend_lost();
                    }
                }
                read = read_backend_half(self.reader.as_mut()), if read_backend => match read {
                    Ok(0) | Err(_) => self.backend_lost(),
                    Ok(_) => self.on_backend_input()?,
                },
                read = client_r.read_buf(&mut self.input), if read_client => {
                    if read.map_err(SessionError::Client)? == 0 {
                        return Ok(());
                    }
                    self.on_client_input().await?;
                }
            }
            if self.deferred.is_some() && self.pending.is_empty() {
                self.on_client_input().await?;
            }
        }
    }

    /// Parses and handles every complete command in the input buffer.
    async fn on_client_input(&mut self) -> Result<(), SessionError> {
        while !self.closing {
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
            let Some(name) = request.args.first() else {
                continue;
            };
            let waits =
                [&b"auth"[..], b"hello", b"reset"].iter().any(|n| name.eq_ignore_ascii_case(n));
            if waits && !self.pending.is_empty() {
                self.deferred = Some(request);
                break;
            }
            self.dispatch(request).await;
        }
        Ok(())
    }

    fn limits(&self) -> RequestLimits {
        if self.identity.is_some() {
            RequestLimits { max_bytes: self.front.config.max_request_bytes, max_args: MAX_ARGS }
        } else {
            PRE_AUTH_LIMITS
        }
    }

    async fn dispatch(&mut self, request: Request) {
        let name = request.args[0].to_ascii_lowercase();
        let authed = self.identity.is_some();
        match name.as_slice() {
            b"auth" => self.auth(&request.args[1..]).await,
            b"hello" => self.hello(&request.args[1..]).await,
            b"quit" => {
                self.reply(OK);
                self.closing = true;
            }
            b"reset" => self.reset(),
            b"ping" if !authed => match request.args.get(1) {
                Some(msg) => self.reply(&bulk(msg)),
                None => self.reply(b"+PONG\r\n"),
            },
            _ if !authed => self.reply(NOAUTH),
            _ => self.forward(request),
        }
    }

    async fn auth(&mut self, args: &[Bytes]) {
        match args {
            [token] => self.login(None, token, None).await,
            [user, token] => self.login(Some(user), token, None).await,
            _ => self.reply(b"-ERR wrong number of arguments for 'auth' command\r\n"),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    async fn hello(&mut self, args: &[Bytes]) {
        let mut args = args.iter();
        let mut resp3 = self.resp3;
        let mut explicit_version = None;
        if let Some(v) = args.next() {
            match std::str::from_utf8(v).ok().and_then(|v| v.parse::<i64>().ok()) {
                Some(2) => resp3 = false,
                Some(3) => resp3 = true,
                Some(_) => return self.reply(b"-NOPROTO unsupported protocol version\r\n"),
                None => {
                    return self
                        .reply(b"-ERR Protocol version is not an integer or out of range\r\n");
                }
            }
            explicit_version = Some(v.clone());
        }
        let mut credentials = None;
        let mut setname = None;
        while let Some(option) = args.next() {
            let option_lc = option.to_ascii_lowercase();
            match (option_lc.as_slice(), args.len()) {
                (b"auth", n) if n >= 2 => credentials = args.next().zip(args.next()),
                (b"setname", n) if n >= 1 => setname = args.next().cloned(),
                _ => {
                    let msg = format!(
                        "-ERR Syntax error in HELLO option '{}'\r\n",
                        String::from_utf8_lossy(option)
                    );
                    return self.reply(msg.as_bytes());
                }
            }
        }
        match credentials {
            Some((user, token)) => {
                let (user, token) = (user.clone(), token.clone());
                self.login(Some(&user), &token, Some(Hello { resp3, setname })).await;
            }
            None if self.identity.is_none() => self.reply(NOAUTH_HELLO),
            None => {
                // Authenticated already: the server answers HELLO itself, in the new protocol.
                let mut forwarded: Vec<Bytes> = vec![Bytes::from_static(b"HELLO")];
                forwarded.extend(explicit_version);
                if let Some(name) = setname {
                    forwarded.extend([Bytes::from_static(b"SETNAME"), name]);
                }
                self.send(&Request::from_args(&forwarded), Pending::Hello { resp3 });
            }
        }
    }

    /// Authenticates with a token, switching backend connection if the database changes.
    async fn login(&mut self, user: Option<&Bytes>, token: &Bytes, hello: Option<Hello>) {
        let user = user
            .filter(|u| !u.eq_ignore_ascii_case(b"default"))
            .map(|u| String::from_utf8_lossy(u).into_owned());
        if self.front.throttle.is_blocked(self.peer.ip()) {
            return self.reply(
                b"-ERR Dormouse: too many failed logins from this address; try again shortly\r\n",
            );
        }
        let Ok(token) = std::str::from_utf8(token) else {
            self.front.throttle.record_failure(self.peer.ip());
            return self.reply(WRONGPASS);
        };
        let (identity, route, guard) = match self.front.authenticate(user.as_deref(), token).await {
            Ok(found) => found,
            Err(e) => return self.refuse_login(e),
        };
        let same_database = self.reader.is_some()
            && self
                .identity
                .as_ref()
                .is_some_and(|i| i.tenant == identity.tenant && i.database == identity.database);
        if same_database {
            // Keep the connection: only the role (and maybe the protocol) changes.
            self.identity = Some(identity);
            match hello {
                None => self.reply(OK),
                Some(h) => {
                    let version: &[u8] = if h.resp3 { b"3" } else { b"2" };
                    let mut args =
                        vec![Bytes::from_static(b"HELLO"), Bytes::copy_from_slice(version)];
                    if let Some(name) = h.setname {
                        args.extend([Bytes::from_static(b"SETNAME"), name]);
                    }
                    self.send(&Request::from_args(&args), Pending::Hello { resp3: h.resp3 });
                }
            }
            return;
        }
        self.drop_backend();
        let resp3 = hello.as_ref().map_or(self.resp3, |h| h.resp3);
        let setname = hello.as_ref().and_then(|h| h.setname.clone());
        match self.front.open_backend(&identity, route, resp3, setname.as_deref()).await {
            Ok((conn, table)) => {
                let (half_r, half_w) = conn.stream.into_split();
                self.reader = Some(BackendReader {
                    half: half_r,
                    buf: conn.leftover,
                    scanner: Default::default(),
                });
                self.writer = Some(BackendWriter { half: half_w, buf: BytesMut::new() });
                self.activity = Some(guard);
                tracing::debug!(peer = %self.peer, tenant = %identity.tenant, db = %identity.database, "redis client authenticated");
                self.identity = Some(identity);
                self.table = Some(table);
                self.resp3 = resp3;
                match hello {
                    Some(_) => self.reply(&conn.hello),
                    None => self.reply(OK),
                }
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, db = %identity.database, error = %e, "backend unavailable");
                self.unauthenticate();
                let msg = format!(
                    "-ERR Dormouse: database '{}' is unavailable right now, try again\r\n",
                    identity.database
                );
                self.reply(msg.as_bytes());
            }
        }
    }

    fn refuse_login(&mut self, error: LoginError) {
        match error {
            LoginError::Auth(AuthError::Refused(why)) => {
                tracing::debug!(peer = %self.peer, why, "redis login refused");
                self.front.throttle.record_failure(self.peer.ip());
                self.reply(WRONGPASS);
            }
            LoginError::Auth(AuthError::NeedsDatabase) => self.reply(
                b"-ERR this token is not limited to one database: use AUTH <database> <token>\r\n",
            ),
            LoginError::Auth(AuthError::Control(e)) => {
                tracing::warn!(peer = %self.peer, error = %e, "cannot verify a login");
                self.reply(b"-ERR Dormouse: cannot verify credentials right now, try again\r\n");
            }
            LoginError::WrongProtocol(db) => {
                let msg =
                    format!("-ERR database '{db}' is not a Redis database; use the MySQL port\r\n");
                self.reply(msg.as_bytes());
            }
            LoginError::Unavailable { database, error } => {
                tracing::warn!(peer = %self.peer, db = %database, %error, "redis login: database unavailable");
                let msg = format!(
                    "-ERR Dormouse: database '{database}' is unavailable ({error}); try again\r\n"
                );
                self.reply(msg.as_bytes());
            }
        }
    }

    /// `RESET`: back to a fresh, unauthenticated RESP2 connection, as the server does.
    fn reset(&mut self) {
        self.drop_backend();
        self.unauthenticate();
        self.resp3 = false;
        self.reply(b"+RESET\r\n");
    }

    fn forward(&mut self, request: Request) {
        let Some(table) = self.table.clone() else {
            return self.reply(NOAUTH);
        };
        let role = self.identity.as_ref().map(|i| i.role).unwrap_or(crate::claims::Role::Readonly);
        let (action, name) = table.classify(&request.args, role);
        match action {
            Action::Forward => self.send(&request, Pending::Backend),
            // Answered here, so it cannot be queued in a transaction like a server command.
            Action::LocalOk if self.transaction.open => {
                self.refuse(&format!("-ERR Dormouse: '{name}' is not supported inside MULTI\r\n"))
            }
            Action::LocalOk => self.reply(OK),
            Action::Denied => self
                .refuse(&format!("-NOPERM this command is not allowed on Dormouse: '{name}'\r\n")),
            Action::ReadOnly => {
                self.refuse(&format!("-NOPERM this token is read-only and '{name}' writes\r\n"))
            }
            Action::Subscribe if self.transaction.open => {
                self.refuse("-ERR Dormouse: (P|S)SUBSCRIBE inside MULTI is not supported\r\n")
            }
            Action::Subscribe => {
                let unsubscribe = name.contains("unsubscribe");
                if !unsubscribe && request.args.len() < 2 {
                    // Wrong arity: the server answers with a plain error.
                    self.send(&request, Pending::Backend);
                } else if self.resp3 {
                    // RESP3 confirmations are push frames: no reply to wait for.
                    self.send_unanswered(&request);
                } else {
                    let left = self.subscriptions.confirmations(&name, request.args.len() - 1);
                    self.send(&request, Pending::Subscribe { left });
                }
            }
            Action::Multi => {
                self.send(&request, Pending::Backend);
                self.transaction.open = true;
            }
            Action::Exec | Action::Discard => {
                if action == Action::Exec && self.transaction.failed {
                    let discard = Request::from_args(&["DISCARD"]);
                    self.send(&discard, Pending::Replace(EXECABORT));
                } else {
                    self.send(&request, Pending::Backend);
                }
                self.transaction = Transaction::default();
            }
        }
    }

    /// Refuses a command; inside MULTI that dooms the transaction.
    fn refuse(&mut self, error: &str) {
        if self.transaction.open {
            self.transaction.failed = true;
        }
        self.reply(error.as_bytes());
    }

    fn send(&mut self, request: &Request, expect: Pending) {
        self.send_unanswered(request);
        self.pending.push_back(expect);
    }

    fn send_unanswered(&mut self, request: &Request) {
        match self.writer.as_mut() {
            Some(w) => w.buf.extend_from_slice(&request.wire),
            None => self.reply(BACKEND_LOST),
        }
    }

    /// Queues a reply made by the proxy behind any reply still owed by the backend.
    fn reply(&mut self, bytes: &[u8]) {
        if self.pending.is_empty() {
            self.output.extend_from_slice(bytes);
        } else {
            self.pending.push_back(Pending::Local(Bytes::copy_from_slice(bytes)));
        }
    }

    /// Moves every complete backend frame to the client, in the order replies are owed.
    fn on_backend_input(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(());
            };
            let Some(len) = reader.scanner.scan(&reader.buf)? else {
                return Ok(());
            };
            let frame = reader.buf.split_to(len).freeze();
            if frame[0] == b'>' {
                // RESP3 push: out of band, straight through.
                self.output.extend_from_slice(&frame);
                continue;
            }
            let expecting_pubsub = self.subscriptions.active()
                || matches!(self.pending.front(), Some(Pending::Subscribe { .. }));
            if !self.resp3 && expecting_pubsub && self.on_pubsub_frame(&frame) {
                continue;
            }
            match self.pending.pop_front() {
                Some(Pending::Backend | Pending::Subscribe { .. }) => {
                    self.output.extend_from_slice(&frame)
                }
                Some(Pending::Hello { resp3 }) => {
                    if frame[0] != b'-' {
                        self.resp3 = resp3;
                    }
                    self.output.extend_from_slice(&frame)
                }
                Some(Pending::Replace(with)) => self.output.extend_from_slice(with),
                Some(Pending::Local(_)) | None => return Err(SessionError::Desync),
            }
            self.flush_local_replies();
        }
    }

    /// A RESP2 array that is a pub/sub message or (un)subscribe confirmation goes straight to
    /// the client; confirmations update the subscription counts. Returns false for other frames.
    fn on_pubsub_frame(&mut self, frame: &Bytes) -> bool {
        let Some(elements) = codec::array_elements(frame) else {
            return false;
        };
        let kind = elements.first().map(|k| k.to_ascii_lowercase()).unwrap_or_default();
        let confirmation =
            elements.len() == 3 && elements.get(2).and_then(|c| codec::integer(c)).is_some();
        match kind.as_slice() {
            b"message" | b"pmessage" | b"smessage" => {}
            b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" | b"ssubscribe"
            | b"sunsubscribe"
                if confirmation =>
            {
                self.subscriptions.confirm(&kind, elements[1]);
                self.confirmed_subscription();
            }
            _ => return false,
        }
        self.output.extend_from_slice(frame);
        true
    }

    /// Counts a confirmation against the (un)subscribe waiting for them; the last one
    /// completes its reply.
    fn confirmed_subscription(&mut self) {
        if let Some(Pending::Subscribe { left }) = self.pending.front_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.pending.pop_front();
                self.flush_local_replies();
            }
        }
    }

    fn flush_local_replies(&mut self) {
        while let Some(Pending::Local(_)) = self.pending.front() {
            if let Some(Pending::Local(bytes)) = self.pending.pop_front() {
                self.output.extend_from_slice(&bytes);
            }
        }
    }

    /// The backend closed or failed: every reply still owed becomes an error, then the client
    /// connection closes, as it would if the server itself had gone away.
    fn backend_lost(&mut self) {
        tracing::debug!(peer = %self.peer, owed = self.pending.len(), "backend connection lost");
        for pending in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Local(bytes) => self.output.extend_from_slice(&bytes),
                _ => self.output.extend_from_slice(BACKEND_LOST),
            }
        }
        self.drop_backend();
        self.closing = true;
    }

    /// Back to unauthenticated (RESET, a failed re-login): the pre-auth clock starts again.
    fn unauthenticate(&mut self) {
        self.identity = None;
        self.auth_deadline = Instant::now() + self.front.config.auth_timeout;
    }

    fn drop_backend(&mut self) {
        self.reader = None;
        self.writer = None;
        self.activity = None;
        self.subscriptions = Subscriptions::default();
        self.transaction = Transaction::default();
    }
}

fn bulk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

async fn write_backend_half(writer: Option<&mut BackendWriter>) -> std::io::Result<()> {
    match writer {
        Some(w) => {
            let n = w.half.write(&w.buf).await?;
            w.buf.advance(n);
            Ok(())
        }
        None => std::future::pending().await,
    }
}

async fn read_backend_half(reader: Option<&mut BackendReader>) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.half.read_buf(&mut r.buf).await,
        None => std::future::pending().await,
    }
}
