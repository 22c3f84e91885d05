//! Where each command goes. Most go on the client's shared connection. A transaction, a
//! blocking call or subscriptions need server-side state only this client may see, so the
//! client first moves to a connection of its own (once every earlier reply is in), and moves
//! back when that state is gone. Client-only state (its name, its id) is answered here.

use bytes::{Bytes, BytesMut};

use super::login::valid_client_name;
use super::{OK, OwnLink, Pending, Session, Transaction};
use crate::claims::Role;
use crate::redis::backend::BackendConn;
use crate::redis::codec::{FrameScanner, Request};
use crate::redis::commands::{Action, Local, display_name};
use crate::redis::pool::PoolError;

const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

impl Session {
    /// Handles one authenticated command; false when it had to be put off until earlier
    /// replies are out (it needs a connection of the client's own).
    pub(super) async fn route(&mut self, request: Request) -> bool {
        let Some(table) = self.table.clone() else {
            self.reply(super::NOAUTH);
            return true;
        };
        let role = self.identity.as_ref().map_or(Role::Readonly, |i| i.role);
        let action = table.classify(&request.args, role);
        if self.transaction.lost {
            self.in_lost_transaction(action);
            return true;
        }
        match action {
            Action::Local(_) if self.transaction.open => {
                let msg = format!(
                    "-ERR Dormouse: '{}' is not supported inside MULTI\r\n",
                    display_name(&request.args)
                );
                self.refuse(&msg);
            }
            Action::Local(local) => self.local(local, &request.args).await,
            Action::Denied => {
                let msg = format!(
                    "-NOPERM this command is not allowed on Dormouse: '{}'\r\n",
                    display_name(&request.args)
                );
                self.refuse(&msg);
            }
            Action::ReadOnly => {
                let msg = format!(
                    "-NOPERM this token is read-only and '{}' writes\r\n",
                    display_name(&request.args)
                );
                self.refuse(&msg);
            }
            Action::Subscribe if self.transaction.open => {
                self.refuse("-ERR Dormouse: (P|S)SUBSCRIBE inside MULTI is not supported\r\n");
            }
            // Nothing subscribed on a shared connection: the answer is known.
            Action::Unsubscribe if self.own.is_none() => self.unsubscribe_here(&request.args),
            Action::Subscribe | Action::Multi | Action::Watch | Action::Blocking
                if self.own.is_none() =>
            {
                if !self.quiet() {
                    self.deferred = Some(request);
                    return false;
                }
                if let Err(e) = self.take_own().await {
                    tracing::warn!(peer = %self.peer, error = %e, "no connection of its own for a client");
                    // A backend error names the server's address or socket path: not for clients.
                    let why = match e {
                        PoolError::Exhausted => e.to_string(),
                        PoolError::Backend(_) => "the database is unavailable right now".into(),
                    };
                    self.refuse(&format!("-ERR Dormouse: {why}; try again\r\n"));
                    return true;
                }
                self.forward(action, &request);
            }
            _ => self.forward(action, &request),
        }
        true
    }

    fn forward(&mut self, action: Action, request: &Request) {
        match action {
            Action::Subscribe | Action::Unsubscribe => {
                let names = request.args.len() - 1;
                let name = request.args[0].to_ascii_lowercase();
                if action == Action::Subscribe && names == 0 {
                    // Wrong arity: the server answers with a plain error.
                    self.send(request, Pending::Backend);
                } else {
                    let left = self.subscriptions.confirmations(&name, names);
                    self.send(request, Pending::Subscribe { left });
                }
            }
            Action::Multi => {
                self.send(request, Pending::Backend);
                self.transaction.open = true;
            }
            Action::Watch => {
                self.send(request, Pending::Backend);
                self.transaction.watching = true;
            }
            Action::Unwatch => {
                self.send(request, Pending::Backend);
                self.transaction.watching = false;
            }
            Action::Exec | Action::Discard => {
                if action == Action::Exec && self.transaction.failed {
                    self.send(&Request::from_args(&["DISCARD"]), Pending::Replace(EXECABORT));
                } else {
                    self.send(request, Pending::Backend);
                }
                self.transaction = Transaction::default();
            }
            _ => self.send(request, Pending::Backend),
        }
    }

    /// Refuses a command; inside MULTI that dooms the transaction.
    pub(super) fn refuse(&mut self, error: &str) {
        if self.transaction.open {
            self.transaction.failed = true;
        }
        self.reply(error.as_bytes());
    }

    /// Moves the client to a connection of its own.
    async fn take_own(&mut self) -> Result<(), crate::redis::pool::PoolError> {
        let Some(pool) = self.pool.clone() else {
            return Err(crate::redis::pool::PoolError::Exhausted);
        };
        let (conn, slot) = pool.own().await?;
        let (reader, writer) = crate::upstream::split(conn.stream);
        self.own = Some(OwnLink {
            reader,
            rbuf: conn.leftover,
            scanner: FrameScanner::default(),
            writer,
            wbuf: BytesMut::new(),
            hello: conn.hello,
            slot,
        });
        Ok(())
    }

    /// Gives back the client's own connection once it holds nothing any more (no transaction,
    /// no watched keys, no subscriptions, no reply owed); the client returns to its shared one.
    pub(super) fn release_own_if_done(&mut self) {
        let done = self.pending.is_empty()
            && !self.transaction.open
            && !self.transaction.watching
            && !self.subscriptions.active()
            && self.own.as_ref().is_some_and(|o| o.wbuf.is_empty() && o.rbuf.is_empty());
        if !done {
            return;
        }
        let Some(own) = self.own.take() else { return };
        match crate::upstream::reunite(own.reader, own.writer) {
            Some(stream) => {
                own.slot.give_back(BackendConn { stream, hello: own.hello, leftover: own.rbuf });
            }
            None => tracing::warn!("could not return a connection to the pool: mismatched halves"),
        }
    }

    /// INFO, from the server as its INFO-only user and filtered, in request order.
    async fn server_info(&mut self, args: &[Bytes]) {
        let Some(pool) = self.pool.clone() else { return self.reply(super::BACKEND_LOST) };
        match pool.info(args).await {
            Ok(reply) => self.reply(&reply.encode(self.resp3)),
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "INFO failed");
                self.reply(b"-ERR Dormouse: INFO is unavailable right now; try again\r\n");
            }
        }
    }

    /// Client state the proxy keeps itself.
    async fn local(&mut self, local: Local, args: &[Bytes]) {
        match local {
            Local::Ok => self.reply(OK),
            Local::SetName => match args.get(2) {
                Some(name) if args.len() == 3 && valid_client_name(name) => {
                    self.name = (!name.is_empty()).then(|| name.clone());
                    self.reply(OK);
                }
                Some(_) if args.len() == 3 => self.reply(
                    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
                ),
                _ => self.reply(b"-ERR wrong number of arguments for 'client|setname' command\r\n"),
            },
            Local::GetName => {
                let reply = match &self.name {
                    Some(name) => super::bulk(name),
                    None if self.resp3 => b"_\r\n".to_vec(),
                    None => b"$-1\r\n".to_vec(),
                };
                self.reply(&reply);
            }
            Local::Id => self.reply(format!(":{}\r\n", self.id).as_bytes()),
            Local::Info => {
                let name = self.name.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let resp = if self.resp3 { 3 } else { 2 };
                let line =
                    format!("id={} addr={} name={name} db=0 resp={resp}\n", self.id, self.peer);
                self.reply(&super::bulk(line.as_bytes()));
            }
            Local::ServerInfo => self.server_info(args).await,
            Local::Select => match args.get(1).map(|a| a.as_ref()) {
                Some(b"0") if args.len() == 2 => self.reply(OK),
                Some(_) if args.len() == 2 => self.reply(
                    b"-ERR DB index is out of range (a Dormouse database has only database 0)\r\n",
                ),
                _ => self.reply(b"-ERR wrong number of arguments for 'select' command\r\n"),
            },
        }
    }

    /// (P|S)UNSUBSCRIBE while subscribed to nothing: one confirmation per name (or one with no
    /// name), each with a count of 0, as the server would send.
    fn unsubscribe_here(&mut self, args: &[Bytes]) {
        let kind = args[0].to_ascii_lowercase();
        let mut out = BytesMut::new();
        let head = if self.resp3 { ">3\r\n" } else { "*3\r\n" };
        let nil: &[u8] = if self.resp3 { b"_\r\n" } else { b"$-1\r\n" };
        let mut confirm = |name: Option<&Bytes>| {
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&super::bulk(&kind));
            match name {
                Some(n) => out.extend_from_slice(&super::bulk(n)),
                None => out.extend_from_slice(nil),
            }
            out.extend_from_slice(b":0\r\n");
        };
        if args.len() == 1 {
            confirm(None);
        } else {
            args[1..].iter().for_each(|n| confirm(Some(n)));
        }
        self.reply(&out);
    }
}
