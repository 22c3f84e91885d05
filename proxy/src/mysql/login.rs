//! The connection phase, server side: greeting, optional TLS upgrade, the client's handshake
//! response, then `caching_sha2_password`: a scramble of a token that logged in before passes
//! by the fast path (`fastauth`); otherwise "perform full authentication" has the client hand
//! over its token in cleartext inside TLS (or when it deems the channel secure), RSA-encrypted
//! otherwise. Clients that open with `mysql_clear_password` send it
//! directly; any other plugin is switched to `caching_sha2_password` with a fresh nonce.
//! COM_CHANGE_USER runs the same exchange in the command phase.

use std::net::SocketAddr;

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize, MySerialize};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::MysqlFrontend;
use super::errors::{MyError, ok_payload};
use super::packet::{CLIENT_CHUNK, MAX_CHUNK, Packet, PacketStream, encode};
use crate::tls::ClientStream;

/// Collation announced in the greeting: utf8mb4_general_ci, MariaDB's default.
const DEFAULT_COLLATION: u8 = 45;
const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;

/// What the proxy offers. Never compression (it would have to be terminated here), local
/// files (not relayed), query attributes or optional metadata (MariaDB lacks them), or
/// multi-factor auth. Bit 0 set presents a MySQL-compatible server, so no MariaDB extensions.
pub const OFFERED_CAPS: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_FOUND_ROWS)
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
    .union(CapabilityFlags::CLIENT_NO_SCHEMA)
    .union(CapabilityFlags::CLIENT_ODBC)
    .union(CapabilityFlags::CLIENT_IGNORE_SPACE)
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_INTERACTIVE)
    .union(CapabilityFlags::CLIENT_IGNORE_SIGPIPE)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS)
    .union(CapabilityFlags::CLIENT_RESERVED)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_MULTI_STATEMENTS)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_CONNECT_ATTRS)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    .union(CapabilityFlags::CLIENT_SESSION_TRACK)
    .union(CapabilityFlags::CLIENT_DEPRECATE_EOF);

/// A client that has presented credentials, not yet checked.
pub struct Login {
    pub client: PacketStream<ClientStream>,
    /// Next sequence id towards the client.
    pub seq: u8,
    pub peer: SocketAddr,
    pub user: String,
    pub schema: Option<String>,
    /// Capabilities in effect for the session (the client's, masked by what was offered).
    pub caps: CapabilityFlags,
    pub collation: u8,
    /// The password as sent; two readings when it came RSA-encrypted (see `rsa.rs`).
    pub passwords: Vec<Vec<u8>>,
    pub tls: bool,
    /// The greeting's nonce: a COM_CHANGE_USER's scramble is computed from it.
    pub nonce: [u8; 20],
}

impl Login {
    /// Ends the login with an error.
    pub async fn fail(mut self, error: &MyError) {
        let _ = self.client.send(self.seq, &error.payload()).await;
        self.client.shutdown().await;
    }

    /// Ends the login successfully; the command phase follows.
    pub async fn succeed(&mut self) -> std::io::Result<()> {
        let session_track = self.caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        self.client.send(self.seq, &ok_payload(SERVER_STATUS_AUTOCOMMIT, session_track)).await?;
        Ok(())
    }
}

fn nonce() -> [u8; 20] {
    // Printable, never NUL: some clients treat the scramble as a C string.
    let mut rng = rand::rng();
    std::array::from_fn(|_| rng.random_range(0x21..0x7f))
}

fn greeting(front: &MysqlFrontend, connection_id: u32, nonce: &[u8; 20]) -> Vec<u8> {
    let mut caps = OFFERED_CAPS;
    if front.tls.is_some() {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let mut scramble_2 = nonce[8..].to_vec();
    scramble_2.push(0); // the length byte counts the NUL: 13 bytes
    let mut scramble_1 = [0u8; 8];
    scramble_1.copy_from_slice(&nonce[..8]);
    let version = front.server_version();
    let packet = HandshakePacket::new(
        10,
        version.as_bytes(),
        connection_id,
        scramble_1,
        Some(scramble_2),
        caps,
        DEFAULT_COLLATION,
        StatusFlags::from_bits_truncate(SERVER_STATUS_AUTOCOMMIT),
        Some(&b"caching_sha2_password"[..]),
    );
    let mut out = Vec::with_capacity(96);
    packet.serialize(&mut out);
    out
}

/// Longest packet read before authentication: nothing legitimate is large (a handshake
/// response, a token, an RSA ciphertext).
const PRE_AUTH_MAX_PAYLOAD: usize = 64 * 1024;

/// Reads one packet straight off the socket, never past its end: a TLS ClientHello may follow
/// an SSLRequest in the same segment and must be left for the TLS layer.
async fn read_exact_packet(tcp: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    tcp.read_exact(&mut header).await?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    if len > PRE_AUTH_MAX_PAYLOAD {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await?;
    Ok((header[3], payload))
}

async fn send_raw(tcp: &mut TcpStream, seq: u8, payload: &[u8]) {
    let mut out = bytes::BytesMut::new();
    encode(&mut out, seq, payload);
    let _ = tcp.write_all(&out).await;
}

/// Runs the connection phase up to the point where credentials are known. Sends the client an
/// ERR and returns `None` on any failure.
pub async fn accept(front: &MysqlFrontend, mut tcp: TcpStream, peer: SocketAddr) -> Option<Login> {
    let deadline = Instant::now() + front.config.handshake_timeout;
    let nonce = nonce();
    send_raw(&mut tcp, 0, &greeting(front, front.next_connection_id(), &nonce)).await;
    let (seq, payload) = match timeout_at(deadline, read_exact_packet(&mut tcp)).await {
        Ok(Ok(first)) => first,
        Ok(Err(_)) => {
            send_raw(&mut tcp, 2, &MyError::bad_handshake().payload()).await;
            return None;
        }
        Err(_) => {
            send_raw(&mut tcp, 2, &MyError::bad_handshake().payload()).await;
            return None;
        }
    };
    let ssl_request = is_ssl_request(&payload);
    let (mut stream, seq, payload, tls) = if ssl_request {
        let Some(acceptor) = front.tls.clone() else {
            send_raw(&mut tcp, seq.wrapping_add(1), &MyError::bad_handshake().payload()).await;
            return None;
        };
        let tls = crate::tls::accept(&acceptor, tcp, deadline).await?;
        let mut stream = PacketStream::new(tls, CLIENT_CHUNK);
        stream.limit(PRE_AUTH_MAX_PAYLOAD);
        let mut conn = Conn { stream: &mut stream, seq: 0, deadline };
        match conn.read().await {
            Ok(response) => {
                let (seq, payload) = (conn.seq, response.payload().to_vec());
                (stream, seq, payload, true)
            }
            Err(e) => {
                conn.fail(&e).await;
                return None;
            }
        }
    } else {
        let mut stream = PacketStream::new(ClientStream::Plain(tcp), CLIENT_CHUNK);
        stream.limit(PRE_AUTH_MAX_PAYLOAD);
        (stream, seq.wrapping_add(1), payload, false)
    };
    let mut conn = Conn { stream: &mut stream, seq, deadline };
    match conn.credentials(front, peer, &nonce, &payload).await {
        Ok((user, schema, caps, collation, passwords)) => {
            let seq = conn.seq;
            stream.limit(MAX_CHUNK);
            Some(Login {
                client: stream,
                seq,
                peer,
                user,
                schema,
                caps,
                collation,
                passwords,
                tls,
                nonce,
            })
        }
        Err(e) => {
            conn.fail(&e).await;
            None
        }
    }
}

/// A COM_CHANGE_USER's authentication exchange, in the command phase: the client proves the
/// token it now presents as at login. Returns the password readings, or the error to send,
/// with the sequence id the final OK or ERR takes.
#[allow(clippy::too_many_arguments)]
pub async fn reauthenticate(
    front: &MysqlFrontend,
    client: &mut PacketStream<ClientStream>,
    seq: u8,
    peer: SocketAddr,
    nonce: &[u8; 20],
    user: &str,
    plugin: &[u8],
    scramble: &[u8],
) -> (Result<Vec<Vec<u8>>, MyError>, u8) {
    let deadline = Instant::now() + front.config.handshake_timeout;
    let mut conn = Conn { stream: client, seq, deadline };
    let plugin = AuthPlugin::from_bytes(plugin);
    let passwords = conn.exchange(front, peer, nonce, user, Some(plugin), scramble).await;
    (passwords, conn.seq)
}

/// The client connection during an authentication exchange.
struct Conn<'s> {
    stream: &'s mut PacketStream<ClientStream>,
    seq: u8,
    deadline: Instant,
}

impl Conn<'_> {
    async fn read(&mut self) -> Result<Packet, MyError> {
        match timeout_at(self.deadline, self.stream.read()).await {
            Ok(Ok(Some(p))) => {
                self.seq = p.seq().wrapping_add(1);
                Ok(p)
            }
            _ => Err(MyError::bad_handshake()),
        }
    }

    async fn send(&mut self, payload: &[u8]) -> Result<(), MyError> {
        self.seq =
            self.stream.send(self.seq, payload).await.map_err(|_| MyError::bad_handshake())?;
        Ok(())
    }

    async fn fail(self, error: &MyError) {
        let _ = self.stream.send(self.seq, &error.payload()).await;
        self.stream.shutdown().await;
    }

    /// Parses the handshake response and runs the authentication exchange.
    #[allow(clippy::type_complexity)]
    async fn credentials(
        &mut self,
        front: &MysqlFrontend,
        peer: SocketAddr,
        nonce: &[u8; 20],
        response: &[u8],
    ) -> Result<(String, Option<String>, CapabilityFlags, u8, Vec<Vec<u8>>), MyError> {
        let Hello { user, schema, caps, collation, plugin, scramble } = read_hello(response)?;
        let passwords = self.exchange(front, peer, nonce, &user, plugin, &scramble).await?;
        Ok((user, schema, caps, collation, passwords))
    }

    /// Turns what the client sent for `plugin` into password readings, with what more it
    /// takes: nothing for cleartext, the fast path for a remembered token, full authentication
    /// otherwise (after a switch to `caching_sha2_password` for any other plugin).
    async fn exchange(
        &mut self,
        front: &MysqlFrontend,
        peer: SocketAddr,
        nonce: &[u8; 20],
        user: &str,
        plugin: Option<AuthPlugin<'_>>,
        scramble: &[u8],
    ) -> Result<Vec<Vec<u8>>, MyError> {
        match plugin {
            Some(AuthPlugin::MysqlClearPassword) => Ok(vec![strip_nul(scramble).to_vec()]),
            Some(AuthPlugin::CachingSha2Password) => {
                match front.fast_auth.find(user, nonce, scramble) {
                    Some(token) => {
                        // "Fast auth success"; the OK (or an ERR, if the token no longer
                        // passes) follows once the token has been verified again.
                        self.send(&[0x01, 0x03]).await?;
                        Ok(vec![token.as_bytes().to_vec()])
                    }
                    None => self.full_auth(front, peer, user, nonce).await,
                }
            }
            _ => {
                let fresh = self::nonce();
                let mut switch = b"\xfecaching_sha2_password\0".to_vec();
                switch.extend_from_slice(&fresh);
                switch.push(0);
                self.send(&switch).await?;
                self.read().await?; // the client's scramble for the fresh nonce: useless here
                self.full_auth(front, peer, user, &fresh).await
            }
        }
    }

    /// "Perform full authentication": the client sends the password in cleartext, or asks for
    /// the public key (`02`) and sends it RSA-encrypted.
    async fn full_auth(
        &mut self,
        front: &MysqlFrontend,
        peer: SocketAddr,
        user: &str,
        nonce: &[u8; 20],
    ) -> Result<Vec<Vec<u8>>, MyError> {
        self.send(&[0x01, 0x04]).await?;
        let reply = self.read().await?;
        if reply.payload() != [0x02] {
            return Ok(vec![strip_nul(reply.payload()).to_vec()]);
        }
        let mut key = vec![0x01];
        key.extend_from_slice(front.rsa.public_pem());
        self.send(&key).await?;
        let ciphertext = self.read().await?;
        if !front.throttle.allow_rsa(peer.ip(), user) {
            return Err(MyError::rsa_limited());
        }
        let payload = ciphertext.payload();
        if payload.len() != front.rsa.size() {
            return Ok(vec![]);
        }
        Ok(front.rsa.decrypt_password(payload, nonce).map(Vec::from).unwrap_or_default())
    }
}

/// Whether the client's first packet is an SSLRequest: the first 32 bytes of a handshake
/// response, with CLIENT_SSL set.
pub fn is_ssl_request(payload: &[u8]) -> bool {
    payload.len() == 32
        && u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]])
            & CapabilityFlags::CLIENT_SSL.bits()
            != 0
}

/// What a handshake response says, before any authentication exchange.
#[derive(Debug)]
pub struct Hello {
    pub user: String,
    pub schema: Option<String>,
    /// The client's capabilities masked by what was offered.
    pub caps: CapabilityFlags,
    pub collation: u8,
    pub plugin: Option<AuthPlugin<'static>>,
    pub scramble: Vec<u8>,
}

/// Reads a handshake response; clients without protocol 4.1 are refused.
pub fn read_hello(response: &[u8]) -> Result<Hello, MyError> {
    let hello = HandshakeResponse::deserialize((), &mut ParseBuf(response))
        .map_err(|_| MyError::bad_handshake())?;
    let caps = hello.capabilities() & OFFERED_CAPS;
    if !caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
        return Err(MyError::bad_handshake());
    }
    Ok(Hello {
        user: String::from_utf8_lossy(hello.user()).into_owned(),
        schema: hello
            .db_name()
            .filter(|d| !d.is_empty())
            .map(|d| String::from_utf8_lossy(d).into_owned()),
        caps,
        collation: hello.collation(),
        plugin: hello.auth_plugin().cloned().map(AuthPlugin::into_owned),
        scramble: hello.scramble_buf().to_vec(),
    })
}

/// The password in a cleartext reply: the bytes, without the NUL some clients end it with.
pub fn strip_nul(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(&[0]).unwrap_or(bytes)
}
