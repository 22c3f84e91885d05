//! AUTH, HELLO and RESET: who the client is, which database its commands go to, and which RESP
//! version it speaks. A login links the session to its database's pool for that version; HELLO
//! is answered from the pool's copy of the server's own HELLO reply.

use bytes::Bytes;

use super::{OK, Pending, Session, Subscriptions, Transaction};
use crate::auth::{LoginRefused, log_in};
use crate::redis::LoginError;
use crate::redis::codec::Request;

const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const THROTTLED: &[u8] =
    b"-ERR Dormouse: too many failed logins from this address for this database; try again shortly\r\n";
const NOAUTH_HELLO: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, \
otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
select the RESP protocol version at the same time\r\n";

/// Options of a HELLO.
pub(super) struct Hello {
    resp3: bool,
    setname: Option<Bytes>,
}

/// Client names follow Redis' rule: no spaces, newlines or other special characters.
pub(super) fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

impl Session {
    pub(super) async fn auth(&mut self, args: &[Bytes]) {
        match args {
            [token] => self.login(None, token, None).await,
            [user, token] => self.login(Some(user), token, None).await,
            _ => self.reply(b"-ERR wrong number of arguments for 'auth' command\r\n"),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    pub(super) async fn hello(&mut self, args: &[Bytes]) {
        let mut args = args.iter();
        let mut resp3 = self.resp3;
        let mut explicit = false;
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
            explicit = true;
        }
        let mut credentials = None;
        let mut setname = None;
        while let Some(option) = args.next() {
            match (option.to_ascii_lowercase().as_slice(), args.len()) {
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
        if setname.as_ref().is_some_and(|n| !valid_client_name(n)) {
            return self.reply(
                b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            );
        }
        match credentials {
            Some((user, token)) => {
                let (user, token) = (user.clone(), token.clone());
                self.login(Some(&user), &token, Some(Hello { resp3, setname })).await;
            }
            None if self.identity.is_none() => self.reply(NOAUTH_HELLO),
            None => {
                if setname.is_some() {
                    self.name = setname;
                }
                self.answer_hello(resp3, explicit).await;
            }
        }
    }

    /// Answers HELLO for an authenticated session, switching RESP version if asked.
    async fn answer_hello(&mut self, resp3: bool, explicit: bool) {
        if self.own.is_some() {
            // The client holds server-side state on its own connection: that server switches
            // (or refuses to, while subscribed in RESP2) and answers.
            let version: &[u8] = if resp3 { b"3" } else { b"2" };
            let mut args = vec![Bytes::from_static(b"HELLO")];
            if explicit {
                args.push(Bytes::from_static(version));
            }
            self.send(&Request::from_args(&args), Pending::Hello { resp3 });
            return;
        }
        if resp3 != self.resp3 {
            let (Some(identity), Some(route)) = (self.identity.clone(), self.route.clone()) else {
                return;
            };
            if let Err(e) = self.link(&identity, route, resp3).await {
                // The reason names the server's address or socket path: for the log only.
                tracing::warn!(peer = %self.peer, db = %identity.database, error = %e, "backend unavailable");
                let msg = format!(
                    "-ERR Dormouse: database '{}' is unavailable right now; try again\r\n",
                    identity.database
                );
                return self.reply(msg.as_bytes());
            }
        }
        match self.pool.as_ref().and_then(|p| p.hello()) {
            Some(hello) => self.reply(&hello),
            None => self.reply(b"-ERR Dormouse: no server reply to HELLO yet; try again\r\n"),
        }
    }

    /// Authenticates with a token and links the session to the database's pool.
    async fn login(&mut self, user: Option<&Bytes>, token: &Bytes, hello: Option<Hello>) {
        let user = user
            .filter(|u| !u.eq_ignore_ascii_case(b"default"))
            .map(|u| String::from_utf8_lossy(u).into_owned());
        let tokens = [std::str::from_utf8(token).unwrap_or_default()];
        let front = self.front.clone();
        let checked =
            log_in(&front.verifier, &front.throttle, &mut self.ticket, user.as_deref(), &tokens);
        let identity = match checked.await {
            Ok((identity, _)) => identity,
            Err(e) => return self.refuse_login(e.into()),
        };
        let (route, guard) = match self.front.route_login(&identity, self.peer.ip()).await {
            Ok(found) => found,
            Err(e) => return self.refuse_login(e),
        };
        let resp3 = hello.as_ref().map_or(self.resp3, |h| h.resp3);
        // A token that can write and one that cannot use different backend users.
        let same_links = self.shared.is_some()
            && self.identity.as_ref().is_some_and(|i| {
                i.tenant == identity.tenant
                    && i.database == identity.database
                    && i.role.can_write() == identity.role.can_write()
            });
        if same_links {
            // Keep the links: only the role (and maybe the protocol) changes.
            self.identity = Some(identity);
            match hello {
                None => self.reply(OK),
                Some(h) => {
                    if h.setname.is_some() {
                        self.name = h.setname;
                    }
                    self.answer_hello(h.resp3, true).await;
                }
            }
            return;
        }
        let Some(slot) = self.front.clients.admit(
            &identity.tenant,
            &identity.database,
            route.limits.max_clients,
        ) else {
            return self.reply(b"-ERR max number of clients reached\r\n");
        };
        self.drop_links();
        match self.link(&identity, route, resp3).await {
            Ok(()) => {
                tracing::debug!(peer = %self.peer, tenant = %identity.tenant, db = %identity.database, "redis client authenticated");
                self.activity = Some((guard, slot));
                self.identity = Some(identity);
                match hello {
                    Some(h) => {
                        if h.setname.is_some() {
                            self.name = h.setname;
                        }
                        match self.pool.as_ref().and_then(|p| p.hello()) {
                            Some(reply) => self.reply(&reply),
                            None => self.reply(OK),
                        }
                    }
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

    /// Links the session to its database's pool for `resp3` and a shared connection in it.
    pub(super) async fn link(
        &mut self,
        identity: &crate::auth::Identity,
        route: crate::control::Route,
        resp3: bool,
    ) -> Result<(), String> {
        let (pool, shared, table, route) =
            self.front.link(identity, route, resp3).await.map_err(|e| e.to_string())?;
        self.pool = Some(pool);
        self.shared = Some(shared);
        self.table = Some(table);
        self.route = Some(route);
        self.resp3 = resp3;
        Ok(())
    }

    fn refuse_login(&mut self, error: LoginError) {
        match error {
            LoginError::Refused(LoginRefused::Denied { throttled: false }) => {
                tracing::debug!(peer = %self.peer, "redis login refused");
                self.reply(WRONGPASS);
            }
            LoginError::Refused(LoginRefused::Denied { throttled: true }) => self.reply(THROTTLED),
            LoginError::NoSuchDatabase(db) => {
                tracing::debug!(peer = %self.peer, %db, "redis login to no such database");
                if self.front.throttle.record_failure(self.peer.ip(), &db) {
                    return self.reply(THROTTLED);
                }
                self.reply(WRONGPASS);
            }
            LoginError::Refused(LoginRefused::Busy(_)) => {
                self.reply(b"-ERR max number of clients reached\r\n");
            }
            LoginError::Refused(LoginRefused::NeedsDatabase) => self.reply(
                b"-ERR this token is not limited to one database: use AUTH <database> <token>\r\n",
            ),
            LoginError::Refused(LoginRefused::Control(e)) => {
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
                let msg = format!("-ERR {}\r\n", error.for_client(&database));
                self.reply(msg.as_bytes());
            }
        }
    }

    /// `RESET`: back to a fresh, unauthenticated RESP2 connection, as the server does. A
    /// connection of the client's own may hold subscriptions or a transaction: it is closed.
    pub(super) fn reset(&mut self) {
        self.drop_links();
        self.unauthenticate();
        self.resp3 = false;
        self.name = None;
        self.subscriptions = Subscriptions::default();
        self.transaction = Transaction::default();
        self.reply(b"+RESET\r\n");
    }

    /// Back to unauthenticated (RESET, a failed re-login): the pre-auth clock starts again for
    /// a session that had logged in. One that never did keeps its deadline, or a `RESET`
    /// every few seconds would hold a pending place for ever.
    pub(super) fn unauthenticate(&mut self) {
        if self.identity.take().is_some() {
            self.auth_deadline = tokio::time::Instant::now() + self.front.config.auth_timeout;
        }
    }
}
