//! The command phase with transaction-level multiplexing: a client borrows a backend
//! connection for each command and gives it back as soon as nothing pins it (see `state`);
//! its session variables and schema are replayed on whichever connection it borrows next, and
//! its prepared statements are prepared there on first use (see `statements`).

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::Bytes;
use mysql_common::constants::CapabilityFlags;
use tokio_util::sync::CancellationToken;

use super::MysqlFrontend;
use super::backend::BackendError;
use super::command::{ChangeUser, Command, classify, kill_refusal};
use super::errors::{MyError, ok_payload};
use super::packet::{Packet, PacketStream};
use super::policy;
use super::pool::{Flavour, Lease, Reservation, Return};
use super::relay::{ClientView, End, Relayed, lost, relay};
use super::response::{SERVER_STATUS_CURSOR_EXISTS, SERVER_STATUS_LAST_ROW_SENT, Shape};
use super::sql::{Traits, inspect};
use super::state::{
    COLLATION_QUERY, ClientState, DIAGNOSTICS_QUERY, PinReason, collation_unreported, locks_query,
};
use super::statements::{ClientStmt, Statements, rewrite_execute, with_id};
use crate::auth::Identity;
use crate::control::Route;
use crate::tls::ClientStream;

/// One client's command phase.
pub struct Session<'a> {
    pub front: &'a MysqlFrontend,
    pub client: &'a mut PacketStream<ClientStream>,
    pub peer: SocketAddr,
    /// The login's nonce, which a COM_CHANGE_USER's scramble is made from.
    pub nonce: [u8; 20],
    pub identity: Identity,
    pub route: Route,
    pub flavour: Flavour,
    pub session_track: bool,
    pub state: ClientState,
    pub stmts: Statements,
    /// The connection the client holds while it is pinned (or mid-command).
    pub lease: Option<Lease>,
    /// The connection it set aside while only its warnings or `FOUND_ROWS()` were left to
    /// read, to take back for its next command unless another client needed it.
    pub aside: Option<Reservation>,
    /// The connection's place as a logged-in client.
    pub ticket: crate::limits::Ticket,
}

/// What the proxy does to the rows of a response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    AsTheyAre,
    /// Text rows naming the client instead of the internal account, without password hashes.
    InClientsTerms,
    /// Binary rows with password hashes blanked in place.
    Scrubbed,
}

/// A command answered with an error already: the session goes on.
struct Answered;

/// Why a command could not go on.
enum Stop {
    Answered,
    End(End),
}

impl From<End> for Stop {
    fn from(end: End) -> Self {
        Stop::End(end)
    }
}

impl From<Answered> for Stop {
    fn from(_: Answered) -> Self {
        Stop::Answered
    }
}

/// 1243: a statement id the client never got, or closed.
fn unknown_statement(id: u32, command: &str) -> MyError {
    MyError::new(
        1243,
        "HY000",
        format!("Unknown prepared statement handler ({id}) given to {command}"),
    )
}

impl Session<'_> {
    /// Runs commands until the client leaves or the session breaks, then gives the backend
    /// connection back as its state allows.
    pub async fn run(mut self, shutdown: &CancellationToken) -> End {
        let end = self.commands(shutdown).await;
        match end {
            End::ClientLeft => self.give_back(),
            _ => drop(self.lease.take()), // closes it
        }
        end
    }

    /// Gives the held connection back to the pool, to be reset first if the client left
    /// state on it.
    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            let how = if self.state.leaves_state() { Return::Reset } else { Return::Keep };
            lease.give_back(how, &self.identity.database);
        }
    }

    async fn commands(&mut self, shutdown: &CancellationToken) -> End {
        loop {
            self.release_if_free();
            let gives_way = self.lease.is_some() && self.state.pin().is_some_and(|p| p.gives_way());
            let grace = self.front.config.pool.set_aside_after;
            // No timer at all for the usual idle client, which holds nothing.
            let aside_due = async move {
                if gives_way {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let first = tokio::select! {
                read = self.client.read() => match read {
                    Ok(Some(p)) => p,
                    _ => return End::ClientLeft,
                },
                () = shutdown.cancelled() => return End::Shutdown,
                () = aside_due => {
                    self.set_aside();
                    continue;
                }
            };
            if first.seq() != 0 {
                self.refuse(MyError::bad_handshake(), first.seq()).await;
                return End::Broken;
            }
            let chunks = match self.read_command(first).await {
                Ok(chunks) => chunks,
                Err(end) => return end,
            };
            let reply_seq = chunks.last().map_or(0, Packet::seq).wrapping_add(1);
            let payload = joined_payload(&chunks);
            self.state.start_command();
            match self.command(&chunks, &payload, reply_seq).await {
                Ok(()) => {}
                Err(Stop::Answered) => continue,
                Err(Stop::End(end)) => return end,
            }
            if self.state.must_ask_diagnostics()
                && let Err(Stop::End(end)) = self.check_diagnostics().await
            {
                return end;
            }
        }
    }

    /// Gives the connection back when nothing holds the client to it.
    fn release_if_free(&mut self) {
        if self.state.pin().is_none()
            && let Some(lease) = self.lease.take()
        {
            lease.give_back(Return::Keep, &self.identity.database);
        }
    }

    /// Sets the connection aside: the client keeps a claim on it, but a client that would
    /// wait for a connection takes it first.
    fn set_aside(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.aside = lease.set_aside();
        }
    }

    async fn command(&mut self, chunks: &[Packet], payload: &[u8], seq: u8) -> Result<(), Stop> {
        match classify(payload) {
            Command::Quit => Err(End::ClientLeft.into()),
            Command::Refuse(e) => self.fail(e, seq).await,
            Command::Ping if self.lease.is_none() => self.local_ok(seq).await,
            Command::Ping | Command::InitDb => self.simple(chunks, Shape::Single, seq).await,
            Command::Other(shape) => self.simple(chunks, shape, seq).await,
            Command::ResetConnection => self.reset_connection(seq).await,
            Command::ChangeUser(change) => self.change_user(change, seq).await,
            Command::Query => self.query(chunks, &payload[1..], seq).await,
            Command::SetOption => self.set_option(chunks, payload, seq).await,
            Command::Prepare => self.prepare(chunks, &payload[1..], seq).await,
            Command::Execute(id) => self.execute(payload, id, seq).await,
            Command::SendLongData(id) => self.send_long_data(payload, id).await,
            Command::CloseStmt(id) => self.close_statement(id).await,
            Command::ResetStmt(id) => self.reset_statement(payload, id, seq).await,
            Command::Fetch(id) => self.fetch(payload, id, seq).await,
            Command::Kill(id) => {
                let own = self.lease.as_ref().map(|l| l.conn_ref().thread_id);
                if own != Some(id) {
                    return self.fail(MyError::not_owner(&id.to_string()), seq).await;
                }
                self.forward(chunks).await?;
                self.relay(Shape::Single, None).await?;
                Ok(())
            }
        }
    }

    /// A command forwarded as it is, its response relayed.
    async fn simple(&mut self, chunks: &[Packet], shape: Shape, seq: u8) -> Result<(), Stop> {
        self.borrow(false, seq).await?;
        self.forward(chunks).await?;
        let relayed = self.relay(shape, None).await?;
        self.apply(None, &relayed);
        Ok(())
    }

    async fn query(&mut self, chunks: &[Packet], sql: &[u8], seq: u8) -> Result<(), Stop> {
        let own = self.lease.as_ref().map(|l| l.conn_ref().thread_id);
        if let Some(e) = kill_refusal(sql, own) {
            return self.fail(e, seq).await;
        }
        let shows_accounts = match policy::review(sql, self.identity.role) {
            Ok(shows) => shows,
            Err(e) => return self.fail(e, seq).await,
        };
        let traits = inspect(sql);
        self.borrow(traits.reads_last_insert_id, seq).await?;
        self.forward(chunks).await?;
        let rewrite = traits.shows_diagnostics || shows_accounts;
        let relayed = self.relay_rows(Shape::Results, rewrite).await?;
        self.apply(Some(&traits), &relayed);
        if traits.releases_lock {
            self.check_locks().await?;
        }
        if collation_unreported(Some(&traits), &relayed.outcome) {
            self.check_collation().await?;
        }
        Ok(())
    }

    /// Asks the server which collation a character-set change left, so that it is replayed
    /// with the rest of the client's variables.
    async fn check_collation(&mut self) -> Result<(), Stop> {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else { return Ok(()) };
        match conn.query_value(COLLATION_QUERY).await {
            Ok(Some(collation)) => {
                let collation = String::from_utf8_lossy(&collation).into_owned();
                self.state.collation_is(collation, &mut conn.state.vars);
            }
            Ok(None) => {}
            Err(BackendError::Refused(e)) => tracing::debug!(error = %e, "collation check refused"),
            Err(_) => return Err(End::BackendLost.into()),
        }
        Ok(())
    }

    /// Asks the server whether it still holds the diagnostics the client was pinned for, so
    /// they stay readable (`SHOW WARNINGS`) until a statement clears them.
    async fn check_diagnostics(&mut self) -> Result<(), Stop> {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else { return Ok(()) };
        match conn.query_value(DIAGNOSTICS_QUERY).await {
            Ok(Some(count)) if count != b"0" => self.state.keep_diagnostics(),
            Ok(_) => conn.state.diagnostics = false,
            Err(BackendError::Refused(e)) => {
                tracing::debug!(error = %e, "diagnostics check refused")
            }
            Err(_) => return Err(End::BackendLost.into()),
        }
        Ok(())
    }

    /// After a `RELEASE_LOCK`, asks the server whether any advisory lock the client took is
    /// still held, so the client can be unpinned once none is.
    async fn check_locks(&mut self) -> Result<(), Stop> {
        let Some(names) = self.state.lock_names() else { return Ok(()) };
        let sql = locks_query(names);
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else { return Ok(()) };
        match conn.query_value(&sql).await {
            Ok(held) if held.as_deref() != Some(b"1") => self.state.locks_released(),
            Ok(_) => {}
            Err(BackendError::Refused(e)) => {
                tracing::debug!(error = %e, "advisory lock check refused");
            }
            Err(_) => return Err(End::BackendLost.into()),
        }
        Ok(())
    }

    async fn reset_connection(&mut self, seq: u8) -> Result<(), Stop> {
        let schema = self.state.vars.schema.clone();
        if self.lease.is_some() {
            self.send(&[0x1f]).await?;
            let relayed = self.relay(Shape::Single, None).await?;
            if !relayed.outcome.error
                && let Some(lease) = self.lease.as_mut()
            {
                // The server keeps the schema and forgets everything else.
                lease.conn().state = super::backend::BackendState::new(&schema);
            }
        } else {
            self.local_ok(seq).await?;
        }
        // What it set aside held only warnings, which a reset clears.
        self.aside = None;
        self.state.reset();
        self.stmts.clear();
        Ok(())
    }

    /// COM_CHANGE_USER, as PHP's persistent connections send it on reuse: a new login on the
    /// same connection, to the same database (a token of another role is fine), which starts
    /// the session afresh like COM_RESET_CONNECTION. Any failure ends the connection, as the
    /// client cannot know what state it was left in.
    async fn change_user(&mut self, change: ChangeUser, seq: u8) -> Result<(), Stop> {
        let (checked, seq) = self.login_again(&change, seq).await;
        let (identity, route, user) = match checked {
            Ok(login) => login,
            Err(e) => return self.fail_and_end(e, seq).await,
        };
        self.give_back();
        self.aside = None;
        self.stmts.clear();
        self.state = ClientState::new(&identity.database);
        if let Some(schema) = change.schema {
            self.state.vars.schema = schema;
        }
        self.flavour.user = user;
        if let Some(collation) = change.collation.and_then(|c| u8::try_from(c).ok()) {
            self.flavour.collation = collation;
        }
        self.identity = identity;
        self.route = route;
        // Borrowed now, as at login: the schema the client named must exist.
        match self.hold_connection(false).await {
            Ok(()) => self.local_ok(seq).await,
            Err(BackendError::Refused(e)) => self.fail_and_end(e, seq).await,
            Err(_) => self.fail_and_end(lost(), seq).await,
        }
    }

    /// A COM_CHANGE_USER's login: its token checked as at login, for this same database.
    /// Gives the identity, its route and the internal user it logs in as, or the error to
    /// answer, with the sequence id of the answer.
    async fn login_again(
        &mut self,
        change: &ChangeUser,
        seq: u8,
    ) -> (Result<(Identity, Route, String), MyError>, u8) {
        let front = self.front;
        let (passwords, seq) = super::login::reauthenticate(
            front,
            self.client,
            seq,
            self.peer,
            &self.nonce,
            &change.user,
            &change.plugin,
            &change.scramble,
        )
        .await;
        let checked = match passwords {
            Ok(passwords) => {
                let verified =
                    front.verify_login(&mut self.ticket, &change.user, self.peer, &passwords).await;
                match verified {
                    Ok(identity) => front
                        .route_login(&identity, self.peer)
                        .await
                        .map(|(route, _)| (identity, route)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let login = checked.and_then(|(identity, route)| {
            if identity.tenant != self.identity.tenant
                || identity.database != self.identity.database
            {
                return Err(MyError::new(
                    1044,
                    "42000",
                    format!(
                        "Dormouse: this connection belongs to database '{}'; connect anew to use '{}'",
                        self.identity.database, identity.database
                    ),
                ));
            }
            let denied = || MyError::access_denied(&change.user, &self.peer.ip().to_string());
            let user = super::internal_user(&identity, &route).ok_or_else(denied)?;
            Ok((identity, route, user))
        });
        (login, seq)
    }

    /// Answers the command with `error` and ends the session.
    async fn fail_and_end(&mut self, error: MyError, seq: u8) -> Result<(), Stop> {
        self.refuse(error, seq).await;
        Err(End::Broken.into())
    }

    async fn set_option(&mut self, chunks: &[Packet], payload: &[u8], seq: u8) -> Result<(), Stop> {
        self.borrow(false, seq).await?;
        self.forward(chunks).await?;
        let relayed = self.relay(Shape::Single, None).await?;
        let on = match payload.get(1..3) {
            Some([0, 0]) => Some(true),
            Some([1, 0]) => Some(false),
            _ => None,
        };
        if let (false, Some(on), Some(lease)) = (relayed.outcome.error, on, self.lease.as_mut()) {
            // The connection now has the other multi-statement flag: it belongs with those.
            let flag = CapabilityFlags::CLIENT_MULTI_STATEMENTS;
            let conn = lease.conn();
            conn.caps.set(flag, on);
            let mut caps = CapabilityFlags::from_bits_truncate(self.flavour.caps);
            caps.set(flag, on);
            self.flavour.caps = caps.bits();
            lease.set_flavour(self.flavour.clone());
        }
        Ok(())
    }

    async fn prepare(&mut self, chunks: &[Packet], sql: &[u8], seq: u8) -> Result<(), Stop> {
        let shows_accounts = match policy::review_prepare(sql, self.identity.role) {
            Ok(shows) => shows,
            Err(e) => return self.fail(e, seq).await,
        };
        self.borrow(false, seq).await?;
        self.forward(chunks).await?;
        let id = self.stmts.free_id();
        let relayed = self.relay(Shape::Prepare, Some(id)).await?;
        let Some(prepared) = relayed.prepared else { return Ok(()) };
        let sql = Bytes::copy_from_slice(sql);
        let schema = self.state.vars.schema.clone();
        if let Some(lease) = self.lease.as_mut() {
            let conn = lease.conn();
            for old in conn.state.prepared.remember(sql.clone(), &schema, prepared.backend_id) {
                conn.close_statement(old);
            }
        }
        let traits = inspect(&sql);
        let stmt = ClientStmt {
            sql,
            schema,
            params: prepared.params,
            types: None,
            traits,
            shows_accounts,
        };
        self.stmts.insert(id, stmt);
        Ok(())
    }

    /// The client's statement `id`, or the error the server would give for it.
    fn statement(&self, id: u32, command: &str) -> Result<ClientStmt, MyError> {
        self.stmts.get(id).cloned().ok_or_else(|| unknown_statement(id, command))
    }

    /// The backend statement holding client statement `id`'s cursor or parameter data, if it
    /// has either.
    fn held(&self, id: u32) -> Option<u32> {
        self.state.cursors.get(&id).or_else(|| self.state.long_data.get(&id)).copied()
    }

    /// The backend statement client statement `id` runs on in the held connection: the one
    /// holding its cursor or parameter data, else one that holds none of another statement's
    /// (two client statements of the same text must not share a cursor).
    async fn backend_statement(&mut self, id: u32, stmt: &ClientStmt) -> Result<u32, BackendError> {
        if let Some(backend_id) = self.held(id) {
            return Ok(backend_id);
        }
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else {
            return Err(BackendError::Protocol("no connection held".into()));
        };
        conn.prepare(&stmt.sql, &stmt.schema).await
    }

    /// After a command on client statement `id` (run on `backend_id`): the backend statement
    /// stays held while the client statement has a cursor or parameter data on it, and is let
    /// go (closed, if it was its own) once it has neither.
    fn settle(&mut self, id: u32, backend_id: u32) {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else { return };
        if self.state.cursors.contains_key(&id) || self.state.long_data.contains_key(&id) {
            conn.state.prepared.hold(backend_id);
        } else if let Some(own) = conn.state.prepared.let_go(backend_id) {
            conn.close_statement(own);
        }
    }

    /// Answers a command whose groundwork on the held connection failed: with the server's
    /// refusal, or as a lost connection, which ends the session.
    async fn backend_failed(&mut self, error: BackendError, seq: u8, doing: &str) -> Stop {
        match error {
            BackendError::Refused(e) => {
                let e = e.in_clients_terms(&self.flavour.user, &self.identity.database);
                self.refuse(e, seq).await;
                Stop::Answered
            }
            e => {
                tracing::debug!(error = %e, "{doing} on a backend failed");
                self.refuse(lost(), seq).await;
                Stop::End(End::BackendLost)
            }
        }
    }

    async fn execute(&mut self, payload: &[u8], id: u32, seq: u8) -> Result<(), Stop> {
        let id = self.stmts.resolve(id);
        let mut stmt = match self.statement(id, "mysqld_stmt_execute") {
            Ok(stmt) => stmt,
            Err(e) => return self.fail(e, seq).await,
        };
        if let Some(e) = self.state.lost_long_data.remove(&id) {
            return self.fail(e, seq).await;
        }
        self.borrow(stmt.traits.reads_last_insert_id, seq).await?;
        let backend_id = match self.backend_statement(id, &stmt).await {
            Ok(backend_id) => backend_id,
            Err(e) => return Err(self.backend_failed(e, seq, "preparing a statement").await),
        };
        let Some(rewritten) = rewrite_execute(payload, backend_id, &mut stmt) else {
            self.settle(id, backend_id);
            return self.fail(MyError::malformed(), seq).await;
        };
        if let Some(kept) = self.stmts.get_mut(id) {
            kept.types.clone_from(&stmt.types);
        }
        self.send(&rewritten).await?;
        let rows = if stmt.shows_accounts { Rows::Scrubbed } else { Rows::AsTheyAre };
        let relayed = self.relay_as(Shape::Results, None, rows).await?;
        self.state.long_data.remove(&id);
        let cursor = relayed.outcome.status.is_some_and(|s| s & SERVER_STATUS_CURSOR_EXISTS != 0);
        if cursor {
            if self.state.cursors.is_empty() {
                self.front.pool.record_pin(PinReason::Cursor);
            }
            self.state.cursors.insert(id, backend_id);
        } else {
            self.state.cursors.remove(&id);
        }
        self.settle(id, backend_id);
        self.apply(Some(&stmt.traits), &relayed);
        Ok(())
    }

    /// COM_STMT_SEND_LONG_DATA has no reply: what goes wrong here is answered at the
    /// statement's execute, as the server would.
    async fn send_long_data(&mut self, payload: &[u8], id: u32) -> Result<(), Stop> {
        let id = self.stmts.resolve(id);
        // Unknown statements get no reply here; the server would report it at execute.
        let Ok(stmt) = self.statement(id, "mysqld_stmt_send_long_data") else { return Ok(()) };
        // Earlier data of this execute was lost: the rest must not arrive without it.
        if self.state.lost_long_data.contains_key(&id) {
            return Ok(());
        }
        let held = match self.hold_connection(false).await {
            Ok(()) => self.backend_statement(id, &stmt).await,
            Err(e) => Err(e),
        };
        let backend_id = match held {
            Ok(backend_id) => backend_id,
            Err(BackendError::Refused(e)) => {
                let e = e.in_clients_terms(&self.flavour.user, &self.identity.database);
                self.state.lost_long_data.insert(id, e);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "sending parameter data to a backend failed");
                return Err(End::BackendLost.into());
            }
        };
        if self.state.long_data.is_empty() {
            self.front.pool.record_pin(PinReason::LongData);
        }
        self.state.long_data.insert(id, backend_id);
        self.settle(id, backend_id);
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else { return Ok(()) };
        conn.stream.queue(0, &with_id(payload, backend_id));
        if conn.stream.flush().await.is_err() {
            return Err(End::BackendLost.into());
        }
        Ok(())
    }

    async fn close_statement(&mut self, id: u32) -> Result<(), Stop> {
        let id = self.stmts.resolve(id);
        if self.stmts.remove(id).is_none() {
            return Ok(());
        }
        self.state.lost_long_data.remove(&id);
        let held = self.held(id);
        self.state.cursors.remove(&id);
        self.state.long_data.remove(&id);
        // A backend statement with a cursor or parameter data of this client is closed, not
        // kept for reuse: that is what the client asked the server to forget.
        if let Some(backend_id) = held
            && let Some(conn) = self.lease.as_mut().map(Lease::conn)
        {
            conn.state.prepared.forget(backend_id);
            conn.close_statement(backend_id);
            if conn.stream.flush().await.is_err() {
                return Err(End::BackendLost.into());
            }
        }
        Ok(())
    }

    async fn reset_statement(&mut self, payload: &[u8], id: u32, seq: u8) -> Result<(), Stop> {
        let id = self.stmts.resolve(id);
        if let Err(e) = self.statement(id, "mysqld_stmt_reset") {
            return self.fail(e, seq).await;
        }
        self.state.lost_long_data.remove(&id);
        let held = self.held(id);
        self.state.cursors.remove(&id);
        self.state.long_data.remove(&id);
        let Some(backend_id) = held else {
            // Nothing of it lives on a server session: nothing to reset.
            return self.local_ok(seq).await;
        };
        self.send(&with_id(payload, backend_id)).await?;
        let relayed = self.relay(Shape::Single, None).await?;
        self.settle(id, backend_id);
        self.apply(None, &relayed);
        Ok(())
    }

    async fn fetch(&mut self, payload: &[u8], id: u32, seq: u8) -> Result<(), Stop> {
        let id = self.stmts.resolve(id);
        if let Err(e) = self.statement(id, "mysqld_stmt_fetch") {
            return self.fail(e, seq).await;
        }
        let Some(&backend_id) = self.state.cursors.get(&id) else {
            let e =
                MyError::new(1421, "HY000", format!("The statement ({id}) has no open cursor."));
            return self.fail(e, seq).await;
        };
        self.send(&with_id(payload, backend_id)).await?;
        let relayed = self.relay(Shape::Rows, None).await?;
        let done = relayed.outcome.status.is_none_or(|s| s & SERVER_STATUS_LAST_ROW_SENT != 0);
        if done || relayed.outcome.error {
            self.state.cursors.remove(&id);
            self.settle(id, backend_id);
        }
        self.apply(None, &relayed);
        Ok(())
    }

    /// Makes sure the client holds a connection in its session state: the one it is pinned
    /// to, or one borrowed from the pool and brought to its state. On failure the client has
    /// its error and the command goes no further.
    async fn borrow(&mut self, insert_id: bool, seq: u8) -> Result<(), Stop> {
        match self.hold_connection(insert_id).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.backend_failed(e, seq, "borrowing a connection").await),
        }
    }

    /// [`Self::borrow`] without answering the client; a pool that cannot lend is `Refused`.
    async fn hold_connection(&mut self, insert_id: bool) -> Result<(), BackendError> {
        if let Some(lease) = self.lease.as_mut() {
            // Pinned since after its last insert, which may have run on another connection.
            if insert_id {
                lease.conn().sync_insert_id(self.state.vars.last_insert_id).await?;
            }
            return Ok(());
        }
        let lease = self
            .front
            .borrow(
                &self.identity,
                &mut self.route,
                &self.flavour,
                &self.state.vars,
                insert_id,
                self.aside.take(),
            )
            .await
            .map_err(BackendError::Refused)?;
        self.lease = Some(lease);
        Ok(())
    }

    /// Sends the command's chunks to the held connection as they came.
    async fn forward(&mut self, chunks: &[Packet]) -> Result<(), Stop> {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else {
            return Err(End::Broken.into());
        };
        for chunk in chunks {
            conn.stream.queue_raw(chunk);
        }
        self.flush_backend().await
    }

    /// Sends a rewritten command to the held connection.
    async fn send(&mut self, payload: &[u8]) -> Result<(), Stop> {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else {
            return Err(End::Broken.into());
        };
        conn.stream.queue(0, payload);
        self.flush_backend().await
    }

    async fn flush_backend(&mut self) -> Result<(), Stop> {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else {
            return Err(End::Broken.into());
        };
        if conn.stream.flush().await.is_err() {
            let _ = self.client.send(1, &lost().payload()).await;
            return Err(End::BackendLost.into());
        }
        Ok(())
    }

    async fn relay(&mut self, shape: Shape, client_stmt: Option<u32>) -> Result<Relayed, Stop> {
        self.relay_as(shape, client_stmt, Rows::AsTheyAre).await
    }

    /// Relays a statement's results; `in_clients_terms` when they list warnings or errors or
    /// may show an account's definition.
    async fn relay_rows(&mut self, shape: Shape, in_clients_terms: bool) -> Result<Relayed, Stop> {
        let rows = if in_clients_terms { Rows::InClientsTerms } else { Rows::AsTheyAre };
        self.relay_as(shape, None, rows).await
    }

    async fn relay_as(
        &mut self,
        shape: Shape,
        client_stmt: Option<u32>,
        rows: Rows,
    ) -> Result<Relayed, Stop> {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else {
            return Err(End::Broken.into());
        };
        let view = ClientView {
            session_track: self.session_track,
            internal_user: &self.flavour.user,
            user: &self.identity.database,
            diagnostics: rows == Rows::InClientsTerms,
            scrub: rows == Rows::Scrubbed,
        };
        let relayed = relay(self.client, conn, shape, &view, client_stmt).await?;
        if relayed.outcome.warnings > 0 || relayed.outcome.error {
            conn.state.diagnostics = true;
        }
        Ok(relayed)
    }

    /// Takes in what a command did to the session, on the client and its connection.
    fn apply(&mut self, traits: Option<&Traits>, relayed: &Relayed) {
        let Some(conn) = self.lease.as_mut().map(Lease::conn) else { return };
        let started = self.state.apply(traits, &relayed.outcome, &mut conn.state.vars);
        for reason in started {
            tracing::trace!(reason = reason.label(), "session pinned");
            self.front.pool.record_pin(reason);
        }
    }

    async fn local_ok(&mut self, seq: u8) -> Result<(), Stop> {
        let ok = ok_payload(self.state.status(), self.session_track);
        if self.client.send(seq, &ok).await.is_err() {
            return Err(End::ClientLeft.into());
        }
        Ok(())
    }

    /// Answers the command with `error`; the session goes on.
    async fn fail(&mut self, error: MyError, seq: u8) -> Result<(), Stop> {
        self.refuse(error, seq).await;
        Err(Answered.into())
    }

    async fn refuse(&mut self, error: MyError, seq: u8) {
        let _ = self.client.send(seq, &error.payload()).await;
    }

    /// All chunks of one command, bounded by the packet limit.
    async fn read_command(&mut self, first: Packet) -> Result<Vec<Packet>, End> {
        let max = self.front.config.max_packet;
        let mut total = first.payload().len();
        if total > max {
            self.refuse(MyError::packet_too_large(), first.seq().wrapping_add(1)).await;
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
            if total > max {
                self.refuse(MyError::packet_too_large(), next.seq().wrapping_add(1)).await;
                return Err(End::Broken);
            }
            continued = next.is_continued();
            chunks.push(next);
        }
        Ok(chunks)
    }
}

/// The command's payload, joined only when it spans several chunks.
fn joined_payload(chunks: &[Packet]) -> Cow<'_, [u8]> {
    match chunks {
        [one] => Cow::Borrowed(one.payload()),
        many => Cow::Owned(many.iter().flat_map(|c| c.payload().iter().copied()).collect()),
    }
}
