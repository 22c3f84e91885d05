//! When a backend connection dies under a session (its server crashed, or was restarted):
//! replies it owed become errors, never retried, since their commands may have run; an idle
//! client moves to a fresh shared connection on its next command; state the dead connection
//! held for the client (a transaction, watched keys, subscriptions) is reported lost, not
//! silently dropped.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BACKEND_LOST, OK, Pending, Session, Transaction};
use crate::redis::commands::Action;

const TRANSACTION_LOST: &[u8] = b"-ERR Dormouse: lost the connection to the database during \
this transaction (MULTI/WATCH); end it with EXEC, DISCARD or UNWATCH and start again\r\n";
const EXEC_LOST: &[u8] =
    b"-EXECABORT Transaction discarded because the connection to the database was lost.\r\n";

impl Session {
    /// Before the client's next commands: if its shared connection has died, fail what it
    /// owed and link to a new one (re-resolving the route, so a server that moved or is
    /// still restarting is found or waited for). A failed link leaves the session unlinked;
    /// its commands are answered with an error and the next ones try again.
    pub(super) async fn heal_shared(&mut self) {
        let needs_link = self.own.is_none()
            && self.identity.is_some()
            && self.pool.is_some()
            && !self.shared.as_ref().is_some_and(|s| s.is_alive());
        if !needs_link {
            return;
        }
        if self.shared.is_some() {
            self.abandon_shared();
        }
        let (Some(identity), Some(route)) = (self.identity.clone(), self.route.clone()) else {
            return;
        };
        match self.link(&identity, route, self.resp3).await {
            Ok(()) => {
                tracing::debug!(peer = %self.peer, db = %identity.database, "redis client relinked after its backend connection died");
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, db = %identity.database, error = %e, "backend unavailable");
            }
        }
    }

    /// Lets go of a shared connection that died. What it delivered before it ended is taken
    /// in order; every reply it still owed becomes an error. The reply channel is replaced, so
    /// nothing the old connection's task may still send can be mistaken for a reply to a
    /// command sent on the next one.
    pub(super) fn abandon_shared(&mut self) {
        tracing::debug!(peer = %self.peer, owed = self.pending.len(), "shared backend connection lost");
        self.shared = None;
        self.batch.clear();
        self.batch_replies = 0;
        // The connection's task hands over every reply it read before it marks itself dead,
        // so they are all in the channel by now.
        while let Ok(replies) = self.reply_rx.try_recv() {
            if let Err(e) = self.on_backend_replies(replies) {
                tracing::warn!(peer = %self.peer, error = %e, "replies of a lost backend connection");
                self.closing = true;
                break;
            }
        }
        (self.reply_tx, self.reply_rx) = mpsc::unbounded_channel();
        self.fail_owed_replies();
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
        self.fail_owed_replies();
        if self.subscriptions.active() {
            self.drop_links();
            self.closing = true;
        } else if self.transaction.open || self.transaction.watching {
            self.transaction.lost = true;
        }
    }

    /// Every reply still owed by a backend becomes an error, in its place among the proxy's own.
    fn fail_owed_replies(&mut self) {
        for pending in self.pending.iter_mut() {
            if !matches!(pending, Pending::Local(_)) {
                *pending = Pending::Local(Bytes::from_static(BACKEND_LOST));
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
