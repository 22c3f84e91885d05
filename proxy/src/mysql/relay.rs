//! The command phase: read a whole command from the client, refuse what a tenant must not do,
//! forward the rest unchanged, and relay the response packet by packet until the server is
//! idle again. Commands are strictly one at a time, as the protocol has them, so the backend is
//! idle whenever the relay waits for the client.

use mysql_common::constants::CapabilityFlags;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::errors::MyError;
use super::packet::{Packet, PacketStream};
use super::response::{Response, Shape};
use super::sql::{KillTarget, kill_targets};
use crate::tls::ClientStream;

/// How a session's command phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// COM_QUIT, or the client went away between commands: the backend is idle.
    ClientLeft,
    /// The server closed or broke the connection.
    BackendLost,
    /// Something malformed or too large; the session was closed.
    Broken,
    Shutdown,
}

impl End {
    /// Whether the backend connection is known to be idle and can be reused.
    pub fn backend_idle(self) -> bool {
        self == End::ClientLeft
    }
}

/// What to do with one command.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Forward(Shape),
    Refuse(MyError),
    Quit,
}

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_SET_OPTION: u8 = 0x1b;

/// Decides on a complete command; `own_thread` is the backend session the client is on.
fn decide(payload: &[u8], own_thread: u32) -> Decision {
    let Some(&command) = payload.first() else {
        return Decision::Refuse(MyError::unknown_command());
    };
    let kill_allowed = |target: &KillTarget| match target {
        KillTarget::Own => true,
        KillTarget::Thread(id) => *id == u64::from(own_thread),
        KillTarget::Unchecked => false,
    };
    let shape = match command {
        COM_QUIT => return Decision::Quit,
        COM_QUERY => {
            if let Some(bad) = kill_targets(&payload[1..]).into_iter().find(|t| !kill_allowed(t)) {
                let shown = match bad {
                    KillTarget::Thread(id) => id.to_string(),
                    _ => "(not your own session)".into(),
                };
                return Decision::Refuse(MyError::not_owner(&shown));
            }
            Shape::Results
        }
        COM_PROCESS_KILL => {
            let id = payload.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            match id {
                Some(id) if id == own_thread => Shape::Single,
                Some(id) => return Decision::Refuse(MyError::not_owner(&id.to_string())),
                None => return Decision::Refuse(MyError::unknown_command()),
            }
        }
        // COM_INIT_DB, COM_STATISTICS, COM_DEBUG, COM_PING, COM_STMT_RESET, COM_SET_OPTION,
        // COM_RESET_CONNECTION, COM_REFRESH: one OK, ERR or EOF (or a text line for statistics).
        0x02 | 0x07 | 0x09 | 0x0d | 0x0e | 0x1a | 0x1b | 0x1f => Shape::Single,
        0x04 => Shape::FieldList,
        0x0a | 0x17 => Shape::Results,
        0x16 => Shape::Prepare,
        0x18 | 0x19 => Shape::None,
        0x1c => Shape::Rows,
        0x11 => {
            return Decision::Refuse(MyError::not_supported("COM_CHANGE_USER; reconnect instead"));
        }
        0x12 | 0x13 | 0x15 | 0x1e => {
            return Decision::Refuse(MyError::not_supported("replication commands"));
        }
        0x08 => return Decision::Refuse(MyError::not_supported("COM_SHUTDOWN")),
        _ => return Decision::Refuse(MyError::unknown_command()),
    };
    Decision::Forward(shape)
}

pub struct Relay<'a> {
    pub client: &'a mut PacketStream<ClientStream>,
    pub backend: &'a mut PacketStream<TcpStream>,
    pub caps: CapabilityFlags,
    pub own_thread: u32,
    pub max_packet: usize,
    /// The client changed connection options (COM_SET_OPTION: multi-statements on or off).
    /// COM_RESET_CONNECTION does not undo that, so the backend connection must not be reused.
    pub options_changed: bool,
}

/// Flush towards the client once this much is queued, so long results stream.
const FLUSH_AT: usize = 64 * 1024;

impl Relay<'_> {
    pub async fn run(&mut self, shutdown: &CancellationToken) -> End {
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        loop {
            let first = tokio::select! {
                read = self.client.read() => match read {
                    Ok(Some(p)) => p,
                    _ => return End::ClientLeft,
                },
                () = shutdown.cancelled() => return End::Shutdown,
            };
            if first.seq() != 0 {
                self.refuse(MyError::bad_handshake(), first.seq()).await;
                return End::Broken;
            }
            let command = match self.read_command(first).await {
                Ok(chunks) => chunks,
                Err(end) => return end,
            };
            let payload = joined_payload(&command);
            match decide(&payload, self.own_thread) {
                Decision::Quit => return End::ClientLeft,
                Decision::Refuse(error) => {
                    let seq = command.last().map_or(0, Packet::seq);
                    self.refuse(error, seq).await;
                }
                Decision::Forward(shape) => {
                    self.options_changed |= payload.first() == Some(&COM_SET_OPTION);
                    for chunk in &command {
                        self.backend.queue_raw(chunk);
                    }
                    if self.backend.flush().await.is_err() {
                        self.refuse(
                            MyError::new(1927, "70100", "Connection to the database was lost"),
                            0,
                        )
                        .await;
                        return End::BackendLost;
                    }
                    if let Err(end) = self.relay_response(Response::new(shape, deprecate_eof)).await
                    {
                        return end;
                    }
                }
            }
        }
    }

    /// All chunks of one command, bounded by the packet limit.
    async fn read_command(&mut self, first: Packet) -> Result<Vec<Packet>, End> {
        let mut total = first.payload().len();
        if total > self.max_packet {
            self.refuse(MyError::packet_too_large(), first.seq()).await;
            return Err(End::Broken);
        }
        let mut continued = first.is_continued();
        let mut chunks = vec![first];
        while continued {
            let next = match self.client.read().await {
                Ok(Some(p)) => p,
                _ => return Err(End::ClientLeft),
            };
            total += next.payload().len();
            if total > self.max_packet {
                self.refuse(MyError::packet_too_large(), next.seq()).await;
                return Err(End::Broken);
            }
            continued = next.is_continued();
            chunks.push(next);
        }
        Ok(chunks)
    }

    /// Relays response packets until `response` says the server is done.
    async fn relay_response(&mut self, mut response: Response) -> Result<(), End> {
        let mut continuing = false;
        let mut relayed = false;
        while !response.is_done() || continuing {
            let packet = match self.backend.read().await {
                Ok(Some(p)) => p,
                _ => {
                    if !relayed {
                        self.refuse(
                            MyError::new(1927, "70100", "Connection to the database was lost"),
                            0,
                        )
                        .await;
                    } else {
                        let _ = self.client.flush().await;
                    }
                    return Err(End::BackendLost);
                }
            };
            if !continuing && response.feed(packet.payload()).is_err() {
                tracing::warn!("unexpected response packet from the server; closing the session");
                let _ = self.client.flush().await;
                return Err(End::Broken);
            }
            continuing = packet.is_continued();
            self.client.queue_raw(&packet);
            relayed = true;
            if self.client.queued() >= FLUSH_AT && self.client.flush().await.is_err() {
                return Err(End::Broken);
            }
        }
        if self.client.flush().await.is_err() {
            // The client is gone mid-stream but the server finished: still idle.
            return Err(End::ClientLeft);
        }
        Ok(())
    }

    /// Answers the command whose last chunk had sequence id `seq` with an error.
    async fn refuse(&mut self, error: MyError, seq: u8) {
        let _ = self.client.send(seq.wrapping_add(1), &error.payload()).await;
    }
}

/// The command's payload, joined only when it spans several chunks.
fn joined_payload(chunks: &[Packet]) -> std::borrow::Cow<'_, [u8]> {
    match chunks {
        [one] => std::borrow::Cow::Borrowed(one.payload()),
        many => {
            std::borrow::Cow::Owned(many.iter().flat_map(|c| c.payload().iter().copied()).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_forwarded_with_their_response_shape() {
        assert_eq!(decide(b"\x03SELECT 1", 7), Decision::Forward(Shape::Results));
        assert_eq!(decide(b"\x16SELECT ?", 7), Decision::Forward(Shape::Prepare));
        assert_eq!(decide(b"\x19\x01\x00\x00\x00", 7), Decision::Forward(Shape::None));
        assert_eq!(decide(b"\x0e", 7), Decision::Forward(Shape::Single));
        assert_eq!(decide(b"\x01", 7), Decision::Quit);
    }

    #[test]
    fn only_the_clients_own_session_may_be_killed() {
        assert_eq!(decide(b"\x03KILL 7", 7), Decision::Forward(Shape::Results));
        assert_eq!(decide(b"\x03KILL QUERY CONNECTION_ID()", 7), Decision::Forward(Shape::Results));
        assert!(matches!(decide(b"\x03KILL 8", 7), Decision::Refuse(e) if e.code == 1095));
        assert!(
            matches!(decide(b"\x03SELECT 1; KILL USER dormouse", 7), Decision::Refuse(e) if e.code == 1095)
        );
        assert!(
            matches!(decide(b"\x0c\x08\x00\x00\x00", 7), Decision::Refuse(e) if e.code == 1095)
        );
        assert_eq!(decide(b"\x0c\x07\x00\x00\x00", 7), Decision::Forward(Shape::Single));
    }

    #[test]
    fn replication_and_unknown_commands_are_refused() {
        for cmd in [&b"\x12"[..], b"\x1e", b"\x15", b"\x08", b"\x11", b"\xfa", b"\x20", b""] {
            assert!(matches!(decide(cmd, 7), Decision::Refuse(_)), "{cmd:?}");
        }
    }
}
