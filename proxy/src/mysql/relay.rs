//! Relays one server response to the client packet by packet as it arrives: unchanged, except
//! OK packets (their session state read, and rewritten for clients that did not ask for
//! session tracking), COM_STMT_PREPARE replies (the proxy's statement id put in), and errors
//! and diagnostics rows that name the internal account (the client's named instead).

use super::backend::BackendConn;
use super::errors::{MyError, err_in_clients_terms, row_in_clients_terms, scrub_password_hashes};
use super::ok;
use super::packet::PacketStream;
use super::response::{Response, Role, Shape};
use super::state::Outcome;
use super::statements::{stmt_id, with_id};
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

/// Flush towards the client once this much is queued, so long results stream.
const FLUSH_AT: usize = 64 * 1024;

/// A statement the server prepared, as its reply described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub backend_id: u32,
    pub params: u16,
}

/// What the relay learnt from a response.
#[derive(Debug, Default)]
pub struct Relayed {
    pub outcome: Outcome,
    pub prepared: Option<Prepared>,
}

pub fn lost() -> MyError {
    MyError::new(1927, "70100", "Connection to the database was lost")
}

/// Who the client is, as the relay needs to know it.
pub struct ClientView<'a> {
    /// It asked for session tracking: OK packets go to it as they are.
    pub session_track: bool,
    /// The internal user its connections log in as, and the name it logged in with: server
    /// errors that name the first name the second.
    pub internal_user: &'a str,
    pub user: &'a str,
    /// The rows are diagnostics (`SHOW WARNINGS`): their messages get the same renaming.
    pub diagnostics: bool,
    /// Binary rows that may show an account's definition (a prepared `CALL`): password
    /// hashes in them are blanked in place, which keeps every length as it was.
    pub scrub: bool,
}

/// Relays the response to the command just sent on `backend`. `client_stmt` is the id the
/// client gets for a statement being prepared.
pub async fn relay(
    client: &mut PacketStream<ClientStream>,
    backend: &mut BackendConn,
    shape: Shape,
    view: &ClientView<'_>,
    client_stmt: Option<u32>,
) -> Result<Relayed, End> {
    let deprecate_eof =
        backend.caps.contains(mysql_common::constants::CapabilityFlags::CLIENT_DEPRECATE_EOF);
    let mut response = Response::new(shape, deprecate_eof);
    let mut relayed = Relayed::default();
    let mut continuing = false;
    let mut sent_any = false;
    while !response.is_done() || continuing {
        let packet = match backend.stream.read().await {
            Ok(Some(p)) => p,
            _ => {
                if sent_any {
                    let _ = client.flush().await;
                } else {
                    let _ = client.send(1, &lost().payload()).await;
                }
                return Err(End::BackendLost);
            }
        };
        let payload = packet.payload();
        if continuing {
            continuing = packet.is_continued();
            client.queue_raw(&packet);
        } else {
            let first = !sent_any;
            let role = match response.feed(payload) {
                Ok(role) => role,
                Err(e) => {
                    tracing::warn!(error = %e, "unexpected response packet; closing the session");
                    let _ = client.flush().await;
                    return Err(End::Broken);
                }
            };
            continuing = packet.is_continued();
            if first && payload.first() == Some(&0xff) {
                relayed.outcome.error = true;
            }
            match role {
                Role::Ok if !continuing => {
                    relay_ok(client, &packet, view.session_track, &mut relayed.outcome);
                }
                _ if payload.first() == Some(&0xff) && !continuing => {
                    match err_in_clients_terms(payload, view.internal_user, view.user) {
                        Some(rewritten) => {
                            client.queue(packet.seq(), &rewritten);
                        }
                        None => client.queue_raw(&packet),
                    }
                }
                Role::Row if view.diagnostics && !continuing => {
                    match row_in_clients_terms(payload, view.internal_user, view.user) {
                        Some(rewritten) => {
                            client.queue(packet.seq(), &rewritten);
                        }
                        None => client.queue_raw(&packet),
                    }
                }
                Role::Row if view.scrub && !continuing => match scrub_password_hashes(payload) {
                    Some(scrubbed) => {
                        client.queue(packet.seq(), &scrubbed);
                    }
                    None => client.queue_raw(&packet),
                },
                _ if first && shape == Shape::Prepare && payload.first() == Some(&0x00) => {
                    let (Some(backend_id), Some(id)) = (stmt_id(payload), client_stmt) else {
                        return Err(End::Broken);
                    };
                    let params = payload.get(7..9).map_or(0, |p| u16::from_le_bytes([p[0], p[1]]));
                    relayed.prepared = Some(Prepared { backend_id, params });
                    client.queue(packet.seq(), &with_id(payload, id));
                }
                _ => client.queue_raw(&packet),
            }
        }
        sent_any = true;
        if client.queued() >= FLUSH_AT && client.flush().await.is_err() {
            return Err(End::Broken);
        }
    }
    relayed.outcome.status = response.status;
    relayed.outcome.warnings = response.warnings;
    if client.flush().await.is_err() {
        // The client is gone, but the server finished: the backend is idle.
        return Err(End::ClientLeft);
    }
    Ok(relayed)
}

/// Reads an OK's session state and insert id, and queues it for the client as it expects it.
fn relay_ok(
    client: &mut PacketStream<ClientStream>,
    packet: &super::packet::Packet,
    session_track: bool,
    outcome: &mut Outcome,
) {
    let payload = packet.payload();
    let Some(parsed) = ok::parse(payload) else {
        client.queue_raw(packet);
        return;
    };
    if parsed.changes != ok::StateChanges::default() {
        outcome.changes.push(parsed.changes.clone());
    }
    if parsed.last_insert_id != 0 {
        outcome.insert_id = Some(parsed.last_insert_id);
    }
    if session_track {
        client.queue_raw(packet);
        return;
    }
    let plain = ok::without_tracking(payload[0], &parsed);
    if plain == payload {
        client.queue_raw(packet);
    } else {
        client.queue(packet.seq(), &plain);
    }
}
