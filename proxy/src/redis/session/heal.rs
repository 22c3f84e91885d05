//! When a backend connection dies under a session (its server crashed, or was restarted):
//! replies it owed become errors, never retried, since their commands may have run; commands
//! it never wrote are sent again; an idle client moves to a fresh shared connection on its
//! next command; state the dead connection held for the client (a transaction, watched keys,
//! subscriptions) is reported lost, not silently dropped.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BACKEND_LOST, OK, Pending, Session, SharedConn, Transaction};
use crate::redis::commands::Action;

const TRANSACTION_LOST: &[u8] = b"-ERR Dormouse: lost the connection to the database during \
this transaction (MULTI/WATCH); end it with EXEC, DISCARD or UNWATCH and start again\r\n";
const EXEC_LOST: &[u8] =
    b"-EXECABORT Transaction discarded because the connection to the database was lost.\r\n";

impl Session {
    /// Before the client's next commands, and when a batch could not be handed over: if the
    /// shared connection has died, settle what it owed and link to a new one (re-resolving the
    /// route, so a server that moved or is still restarting is found or waited for), then send
    /// again first what the dead one never wrote. A failed link leaves the session unlinked:
    /// its commands are answered with an error and the next ones try again.
    pub(super) async fn heal_shared(&mut self) {
        let dead = self.shared.as_ref().is_some_and(|s| !s.is_alive());
        let unlinked = self.shared.is_none() && self.pool.is_some();
        let waiting = !self.resend.is_empty() || !self.batch.is_empty();
        if self.own.is_some() || self.identity.is_none() || !(dead || unlinked || waiting) {
            return;
        }
        if dead && let Some(old) = self.shared.take() {
            self.abandon_shared(old).await;
        }
        let (Some(identity), Some(route)) = (self.identity.clone(), self.route.clone()) else {
            return;
        };
        if self.shared.is_none() {
            match self.link(&identity, route, self.resp3).await {
                Ok(()) => {
                    tracing::debug!(peer = %self.peer, db = %identity.database, "redis client relinked after its backend connection died");
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer, db = %identity.database, error = %e, "backend unavailable");
                    let error = self.unavailable();
                    self.resend.clear();
                    self.resend_replies = 0;
                    self.batch.clear();
                    self.batch_replies = 0;
                    self.fail_owed_replies(error);
                    return;
                }
            }
        }
        // What the dead connection never wrote goes first, in the order it was sent.
        if !self.resend.is_empty() {
            let mut batch = std::mem::take(&mut self.resend);
            batch.extend_from_slice(&self.batch);
            self.batch = batch;
            self.batch_replies += std::mem::take(&mut self.resend_replies);
        }
    }

    /// Settles with a shared connection that died: once its task has handed over everything,
    /// replies are taken in order and unwritten commands kept to send again. Every reply still
    /// owed then belongs to a command kept for sending; if the count says otherwise, the
    /// commands are not sent again and their replies become errors instead.
    async fn abandon_shared(&mut self, old: SharedConn) {
        old.ended().await;
        while let Ok(delivery) = self.reply_rx.try_recv() {
            if let Err(e) = self.on_delivery(delivery) {
                tracing::warn!(peer = %self.peer, error = %e, "replies of a lost backend connection");
                self.closing = true;
                break;
            }
        }
        let owed: usize = self
            .pending
            .iter()
            .map(|p| match p {
                Pending::Local(_) => 0,
                Pending::Subscribe { left } => *left,
                _ => 1,
            })
            .sum();
        if owed != self.resend_replies + self.batch_replies {
            tracing::warn!(peer = %self.peer, owed, resend = self.resend_replies, "replies of a lost backend connection do not add up");
            self.resend.clear();
            self.resend_replies = 0;
            self.batch.clear();
            self.batch_replies = 0;
            self.fail_owed_replies(Bytes::from_static(BACKEND_LOST));
        }
        // A fresh channel: nothing from the old connection can arrive after this.
        (self.reply_tx, self.reply_rx) = mpsc::unbounded_channel();
    }

    /// The client's own connection died. Replies it owed become errors. Subscriptions cannot be
    /// told lost in-band (a subscribed client sends nothing to answer), so the client
    /// connection closes, as the server's would, and the client resubscribes when it
    /// reconnects. A transaction or watched keys are refused from here on until the client
    /// ends them. A blocking call held nothing more: the client goes on on a shared connection.
    pub(super) fn own_lost(&mut self) {
        tracing::debug!(peer = %self.peer, owed = self.pending.len(), "own backend connection lost");
        // Dropping it releases its slot in the pool; the dead socket is closed, not returned.
        self.own = None;
        self.fail_owed_replies(Bytes::from_static(BACKEND_LOST));
        if self.subscriptions.active() {
            self.drop_links();
            self.closing = true;
        } else if self.transaction.open || self.transaction.watching {
            self.transaction.lost = true;
        }
    }

    /// Every reply still owed by a backend becomes `error`, in its place among the proxy's own.
    fn fail_owed_replies(&mut self, error: Bytes) {
        for pending in self.pending.iter_mut() {
            if !matches!(pending, Pending::Local(_)) {
                *pending = Pending::Local(error.clone());
            }
        }
        self.flush_local_replies();
    }

    /// A command while the transaction's connection is lost: the commands that end the
    /// transaction end it; anything else is refused, so nothing meant to run inside the
    /// transaction, or after the watch, runs without it.
    pub(super) fn in_lost_transaction(&mut self, action: Action) {
        let open = self.transaction.open;
        match action {
            Action::Exec => {
                self.transaction = Transaction::default();
                self.reply(EXEC_LOST);
            }
            Action::Discard if open => {
                self.transaction = Transaction::default();
                self.reply(OK);
            }
            Action::Unwatch if !open => {
                self.transaction = Transaction::default();
                self.reply(OK);
            }
            _ => self.reply(TRANSACTION_LOST),
        }
    }
}
