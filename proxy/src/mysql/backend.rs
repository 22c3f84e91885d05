//! Backend connections: a socket to the instance, then the client side of the handshake as the
//! internal user (`mysql_native_password`) with the database's schema as default and the
//! client's own format flags and collation, so every packet relays unchanged. Reset for reuse
//! with COM_RESET_CONNECTION and COM_INIT_DB, sent together.

use std::time::Duration;

use bytes::Bytes;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakePacket;
use mysql_common::proto::MyDeserialize;
use mysql_common::scramble::scramble_native;

use super::errors::MyError;
use super::packet::{BACKEND_CHUNK, Packet, PacketStream};
use super::prepared::Prepared;
use super::response::{Response, Role, Shape};
use super::state::{CLEAR_DIAGNOSTICS, SessionVars, SyncPlan};
use crate::control::Route;
use crate::upstream::{self, Upstream};

/// Flags every backend connection uses, whatever the client. Session tracking is always on:
/// it is how the proxy knows what state a connection holds (OK packets are rewritten for
/// clients that did not ask for it).
pub const BASE_CAPS: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS)
    .union(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
    .union(CapabilityFlags::CLIENT_SESSION_TRACK);

/// Client flags that change packet formats or statement semantics; a backend connection takes
/// the client's values of these, and they are part of its pool key.
pub const FORMAT_CAPS: CapabilityFlags = CapabilityFlags::CLIENT_FOUND_ROWS
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_NO_SCHEMA)
    .union(CapabilityFlags::CLIENT_ODBC)
    .union(CapabilityFlags::CLIENT_IGNORE_SPACE)
    .union(CapabilityFlags::CLIENT_INTERACTIVE)
    .union(CapabilityFlags::CLIENT_MULTI_STATEMENTS)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_DEPRECATE_EOF);

/// Largest packet the proxy asks the server to accept.
const MAX_PACKET: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    /// The server answered with an error (too many connections, ...), to pass on.
    #[error("server refused: {0}")]
    Refused(MyError),
    #[error("{0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

impl BackendError {
    /// A refused address or login: the route may be stale.
    pub fn may_be_stale(&self) -> bool {
        match self {
            BackendError::Connect { .. } => true,
            BackendError::Refused(e) => e.code == 1045,
            _ => false,
        }
    }

    /// The server refused the internal account's login (wrong password).
    pub fn is_login_refused(&self) -> bool {
        matches!(self, BackendError::Refused(e) if e.code == 1045)
    }
}

fn io_err(e: std::io::Error) -> BackendError {
    BackendError::Protocol(e.to_string())
}

/// Reads an ERR payload into the error it carries.
pub fn parse_err(payload: &[u8]) -> MyError {
    let code = payload.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    let (state, message) = if payload.get(3) == Some(&b'#') {
        let state = match payload.get(4..9) {
            Some(b"08004") => "08004",
            Some(b"28000") => "28000",
            Some(b"42000") => "42000",
            Some(b"08S01") => "08S01",
            _ => "HY000",
        };
        (state, payload.get(9..).unwrap_or_default())
    } else {
        ("HY000", payload.get(3..).unwrap_or_default())
    };
    MyError::new(code, state, String::from_utf8_lossy(message).into_owned())
}

/// An authenticated connection to a database's server, and the session state the proxy
/// knows it holds.
pub struct BackendConn {
    pub stream: PacketStream<Upstream>,
    /// The server's id for this session (what `CONNECTION_ID()` returns).
    pub thread_id: u32,
    pub server_version: String,
    /// Capabilities in effect (`BASE_CAPS` and the client's format flags).
    pub caps: CapabilityFlags,
    pub state: BackendState,
}

/// What a backend session holds: the replayable session state, and the statements prepared
/// on it.
#[derive(Debug, Default)]
pub struct BackendState {
    pub vars: SessionVars,
    pub prepared: Prepared,
    /// The server may hold warnings or an error of the last client: cleared before the
    /// connection serves another, so that `SHOW WARNINGS` never shows them someone else.
    pub diagnostics: bool,
}

impl BackendState {
    pub fn new(schema: &str) -> Self {
        Self { vars: SessionVars::new(schema), ..Self::default() }
    }
}

/// The HandshakeResponse41 for the internal user, written out because the collation must be
/// the client's (the library's constructor fixes it).
fn handshake_response(
    caps: CapabilityFlags,
    collation: u8,
    user: &str,
    auth: &[u8],
    schema: &str,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(&caps.bits().to_le_bytes());
    p.extend_from_slice(&MAX_PACKET.to_le_bytes());
    p.push(collation);
    p.extend_from_slice(&[0u8; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(auth.len() as u8);
    p.extend_from_slice(auth);
    p.extend_from_slice(schema.as_bytes());
    p.push(0);
    p.extend_from_slice(b"mysql_native_password\0");
    p
}

/// Opens a connection as `user` (the route's read-write or read-only internal user).
pub async fn connect(
    route: &Route,
    user: &str,
    schema: &str,
    client_caps: CapabilityFlags,
    collation: u8,
    timeout: Duration,
) -> Result<BackendConn, BackendError> {
    let attempt = async {
        let socket = upstream::connect(route)
            .await
            .map_err(|e| BackendError::Connect { addr: e.addr, source: e.source })?;
        let mut stream = PacketStream::new(socket, BACKEND_CHUNK);
        let greeting = read(&mut stream).await?;
        if greeting.payload().first() == Some(&0xff) {
            return Err(BackendError::Refused(parse_err(greeting.payload())));
        }
        let hello = HandshakePacket::deserialize((), &mut ParseBuf(greeting.payload()))
            .map_err(|e| BackendError::Protocol(format!("bad greeting: {e}")))?;
        let password = route.password.0.as_bytes();
        let scramble = scramble_native(&hello.nonce(), password).unwrap_or_default();
        let caps = BASE_CAPS | (client_caps & FORMAT_CAPS);
        let payload = handshake_response(caps, collation, user, &scramble, schema);
        let mut seq =
            stream.send(greeting.seq().wrapping_add(1), &payload).await.map_err(io_err)?;
        loop {
            let reply = read(&mut stream).await?;
            let payload = reply.payload();
            match payload.first() {
                Some(0x00) => break,
                Some(0xff) => return Err(BackendError::Refused(parse_err(payload))),
                // AuthSwitchRequest: only to the plugin the internal user has.
                Some(0xfe) if payload.starts_with(b"\xfemysql_native_password\0") => {
                    let nonce = &payload[22..payload.len().saturating_sub(1)];
                    let scramble = scramble_native(nonce, password).unwrap_or_default();
                    seq = stream
                        .send(reply.seq().wrapping_add(1), &scramble)
                        .await
                        .map_err(io_err)?;
                }
                _ => {
                    return Err(BackendError::Protocol(
                        "unexpected authentication exchange".into(),
                    ));
                }
            }
        }
        let _ = seq;
        Ok(BackendConn {
            stream,
            thread_id: hello.connection_id(),
            server_version: String::from_utf8_lossy(hello.server_version_ref()).into_owned(),
            caps,
            state: BackendState::new(schema),
        })
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(BackendError::Timeout))
}

/// A command payload: its byte, then `body`.
fn command(byte: u8, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + body.len());
    p.push(byte);
    p.extend_from_slice(body);
    p
}

async fn read(stream: &mut PacketStream<Upstream>) -> Result<Packet, BackendError> {
    stream
        .read()
        .await
        .map_err(io_err)?
        .ok_or_else(|| BackendError::Protocol("the server closed the connection".into()))
}

impl BackendConn {
    /// Back to a fresh session on `schema`: session variables, user variables, temporary
    /// tables, prepared statements, locks and any open transaction are gone.
    pub async fn reset(&mut self, schema: &str) -> Result<(), BackendError> {
        if self.stream.has_buffered_input() {
            return Err(BackendError::Protocol("unread data from the server".into()));
        }
        self.stream.queue(0, &[0x1f]);
        self.stream.queue(0, &command(0x02, schema.as_bytes()));
        self.stream.flush().await.map_err(io_err)?;
        for _ in 0..2 {
            let reply = read(&mut self.stream).await?;
            match reply.payload().first() {
                Some(0x00) => {}
                Some(0xff) => return Err(BackendError::Refused(parse_err(reply.payload()))),
                _ => return Err(BackendError::Protocol("unexpected reply to a reset".into())),
            }
        }
        self.state = BackendState::new(schema);
        Ok(())
    }

    fn deprecate_eof(&self) -> bool {
        self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    }

    /// Reads a reply that is one OK or ERR.
    async fn read_ok(&mut self) -> Result<Result<(), MyError>, BackendError> {
        let reply = read(&mut self.stream).await?;
        match reply.payload().first() {
            Some(0x00) => Ok(Ok(())),
            Some(0xff) => Ok(Err(parse_err(reply.payload()))),
            _ => Err(BackendError::Protocol("expected OK or ERR".into())),
        }
    }

    /// Puts a client's session state on this connection as `plan` says, in one round trip.
    /// A refusal (a schema that is gone, a value the server rejects) is returned for the
    /// client to see; the connection's state is then unknown and it must be reset.
    pub async fn sync(
        &mut self,
        plan: &SyncPlan,
        home: &str,
        client: &SessionVars,
    ) -> Result<(), BackendError> {
        if plan.is_empty() {
            return Ok(());
        }
        let mut replies = 0;
        if plan.reset {
            self.stream.queue(0, &[0x1f]);
            self.stream.queue(0, &command(0x02, home.as_bytes()));
            replies += 2;
        }
        if let Some(schema) = &plan.schema {
            self.stream.queue(0, &command(0x02, schema.as_bytes()));
            replies += 1;
        }
        if let Some(set) = &plan.set {
            self.stream.queue(0, &command(0x03, set.as_bytes()));
            replies += 1;
        }
        // Last, so that no warning of the replay is left either.
        if plan.clear_diagnostics {
            self.stream.queue(0, &command(0x03, CLEAR_DIAGNOSTICS.as_bytes()));
            replies += 1;
        }
        self.stream.flush().await.map_err(io_err)?;
        let mut refused = None;
        for _ in 0..replies {
            if let Err(e) = self.read_ok().await? {
                refused.get_or_insert(e);
            }
        }
        if plan.reset {
            self.state = BackendState::new(home);
        }
        if plan.clear_diagnostics && refused.is_none() {
            self.state.diagnostics = false;
        }
        if let Some(e) = refused {
            return Err(BackendError::Refused(e));
        }
        let vars = &mut self.state.vars;
        vars.schema.clone_from(&client.schema);
        vars.variables.clone_from(&client.variables);
        if plan.insert_id {
            vars.last_insert_id = client.last_insert_id;
        }
        Ok(())
    }

    /// Gives the session the last insert id `id` if the proxy knows it to have another: for a
    /// connection a client already holds, whose insert may have run on another connection.
    pub async fn sync_insert_id(&mut self, id: u64) -> Result<(), BackendError> {
        if self.state.vars.last_insert_id == id {
            return Ok(());
        }
        let set = format!("SET @@SESSION.last_insert_id = {id}");
        self.stream.send(0, &command(0x03, set.as_bytes())).await.map_err(io_err)?;
        self.read_ok().await?.map_err(BackendError::Refused)?;
        self.state.vars.last_insert_id = id;
        Ok(())
    }

    async fn init_db(&mut self, schema: &str) -> Result<(), BackendError> {
        self.stream.send(0, &command(0x02, schema.as_bytes())).await.map_err(io_err)?;
        self.read_ok().await?.map_err(BackendError::Refused)?;
        self.state.vars.schema = schema.to_owned();
        Ok(())
    }

    /// A statement for `sql` against `schema` that no client statement holds a cursor or
    /// parameter data on: the cached one, else one prepared now (in `schema`, switching the
    /// session there and back when it is elsewhere), cached, or kept apart when the cached
    /// one is held.
    pub async fn prepare(&mut self, sql: &Bytes, schema: &str) -> Result<u32, BackendError> {
        let cache = match self.state.prepared.lookup(sql, schema) {
            Some(id) if !self.state.prepared.is_held(id) => return Ok(id),
            Some(_) => false,
            None => true,
        };
        let current = self.state.vars.schema.clone();
        if current != schema {
            self.init_db(schema).await?;
        }
        let prepared = self.prepare_here(sql).await;
        if current != schema {
            self.init_db(&current).await?;
        }
        let id = prepared?;
        if !cache {
            self.state.prepared.detach(id);
            return Ok(id);
        }
        for old in self.state.prepared.remember(sql.clone(), schema, id) {
            self.close_statement(old);
        }
        Ok(id)
    }

    /// Closes a backend statement. No reply comes; it goes out with the next command.
    pub fn close_statement(&mut self, id: u32) {
        self.stream.queue(0, &command(0x19, &id.to_le_bytes()));
    }

    async fn prepare_here(&mut self, sql: &[u8]) -> Result<u32, BackendError> {
        self.stream.send(0, &command(0x16, sql)).await.map_err(io_err)?;
        let mut response = Response::new(Shape::Prepare, self.deprecate_eof());
        let first = read(&mut self.stream).await?;
        let payload = first.payload();
        if payload.first() == Some(&0xff) {
            return Err(BackendError::Refused(parse_err(payload)));
        }
        let id = super::statements::stmt_id(payload)
            .filter(|_| payload.first() == Some(&0x00))
            .ok_or_else(|| BackendError::Protocol("bad prepare reply".into()))?;
        let malformed = |_| BackendError::Protocol("bad prepare reply".into());
        response.feed(payload).map_err(malformed)?;
        while !response.is_done() {
            let packet = read(&mut self.stream).await?;
            response.feed(packet.payload()).map_err(malformed)?;
        }
        Ok(id)
    }

    /// Runs a query of the proxy's own and returns the first column of its first row.
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.stream.send(0, &command(0x03, sql.as_bytes())).await.map_err(io_err)?;
        let mut response = Response::new(Shape::Results, self.deprecate_eof());
        let mut value = None;
        while !response.is_done() {
            let packet = read(&mut self.stream).await?;
            let payload = packet.payload();
            if payload.first() == Some(&0xff) {
                return Err(BackendError::Refused(parse_err(payload)));
            }
            let role = response
                .feed(payload)
                .map_err(|_| BackendError::Protocol("bad reply to a query".into()))?;
            if role == Role::Row && value.is_none() {
                value = Some(super::ok::first_text_value(payload));
            }
        }
        Ok(value.flatten())
    }

    /// Whether the server still holds the connection open, without a round trip: a closed
    /// socket reads as end-of-file, a live idle one would block.
    pub fn is_alive(&self) -> bool {
        upstream::is_open(self.stream.get_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_response_layout() {
        let p = handshake_response(BASE_CAPS, 8, "dormouse", &[1; 20], "db");
        assert_eq!(&p[..4], &BASE_CAPS.bits().to_le_bytes());
        assert_eq!(p[8], 8, "the client's collation");
        assert_eq!(&p[32..41], b"dormouse\0");
        assert_eq!(p[41], 20);
        assert!(p.ends_with(b"db\0mysql_native_password\0"));
    }

    #[test]
    fn err_payloads_are_parsed() {
        let e = parse_err(b"\xff\x10\x04#08004Too many connections");
        assert_eq!((e.code, e.state, e.message.as_str()), (1040, "08004", "Too many connections"));
    }
}
