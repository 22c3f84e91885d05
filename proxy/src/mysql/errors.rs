//! What the proxy itself says to MySQL clients: ERR packets with the server's codes and
//! SQLSTATEs, and the OK that ends a login.

/// An error for the client, as MariaDB would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyError {
    pub code: u16,
    pub state: &'static str,
    pub message: String,
}

impl MyError {
    pub fn new(code: u16, state: &'static str, message: impl Into<String>) -> Self {
        Self { code, state, message: message.into() }
    }

    /// 1045: the one answer to every failed login, whatever failed.
    pub fn access_denied(user: &str, host: &str) -> Self {
        Self::new(
            1045,
            "28000",
            format!("Access denied for user '{user}'@'{host}' (using password: YES)"),
        )
    }

    /// 1040: the proxy's connection limit.
    pub fn too_many_connections() -> Self {
        Self::new(1040, "08004", "Too many connections")
    }

    /// 1040: the database has as many client connections as its plan allows.
    pub fn database_full(database: &str, limit: u32) -> Self {
        Self::new(
            1040,
            "08004",
            format!("Too many connections: database '{database}' allows {limit} clients"),
        )
    }

    /// 1040: every backend connection of the database stayed busy for as long as a client
    /// may wait.
    pub fn pool_exhausted(database: &str, limit: usize, waited: std::time::Duration) -> Self {
        Self::new(
            1040,
            "08004",
            format!(
                "Too many connections: all {limit} server connections of database '{database}' \
                 stayed busy for {:.1} s (open transactions hold theirs); try again",
                waited.as_secs_f64()
            ),
        )
    }

    /// 1043: a handshake that is malformed or too slow.
    pub fn bad_handshake() -> Self {
        Self::new(1043, "08S01", "Bad handshake")
    }

    /// 1153: a packet over the limit.
    pub fn packet_too_large() -> Self {
        Self::new(1153, "08S01", "Got a packet bigger than 'max_allowed_packet' bytes")
    }

    /// 1047: a command the proxy does not relay.
    pub fn unknown_command() -> Self {
        Self::new(1047, "08S01", "Unknown command")
    }

    /// 1835: a command too short for what it claims to be.
    pub fn malformed() -> Self {
        Self::new(1835, "HY000", "Malformed communication packet")
    }

    /// 1235: a command that exists but is not available through Dormouse.
    pub fn not_supported(what: &str) -> Self {
        Self::new(1235, "42000", format!("This version of Dormouse doesn't yet support '{what}'"))
    }

    /// 1095: KILL of a session that is not the client's own.
    pub fn not_owner(thread: &str) -> Self {
        Self::new(1095, "HY000", format!("You are not owner of thread {thread}"))
    }

    /// 1226: too many failed logins to this database from one address.
    pub fn rate_limited() -> Self {
        Self::new(
            1226,
            "42000",
            "Too many failed logins from this address for this user; try again shortly",
        )
    }

    /// 1226: too many logins needing RSA decryption from one address; TLS needs none.
    pub fn rsa_limited() -> Self {
        Self::new(
            1226,
            "42000",
            "Too many RSA-encrypted logins from this address; connect with TLS or try again shortly",
        )
    }

    /// 1105: the database cannot be reached right now.
    pub fn unavailable(database: &str) -> Self {
        Self::new(
            1105,
            "HY000",
            format!("Dormouse: database '{database}' is unavailable right now, try again"),
        )
    }

    /// The ERR payload: `FF`, code, `#`, SQLSTATE, message.
    pub fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(9 + self.message.len());
        p.push(0xff);
        p.extend_from_slice(&self.code.to_le_bytes());
        p.push(b'#');
        p.extend_from_slice(self.state.as_bytes());
        p.extend_from_slice(self.message.as_bytes());
        p
    }
}

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.state, self.message)
    }
}

/// `message` with every account of the internal user (`'dormouse'@'localhost'`, or with
/// backticks as `SHOW GRANTS` writes it) named as the client's (`'shop'@'%'`), or `None` when
/// it names none: the internal user's name never reaches the client, which knows itself by
/// the database's name.
fn named_for_client(message: &[u8], internal: &str, client: &str) -> Option<Vec<u8>> {
    let quoted = renamed(message, b'\'', internal, client);
    let backticked = renamed(quoted.as_deref().unwrap_or(message), b'`', internal, client);
    backticked.or(quoted)
}

fn renamed(message: &[u8], quote: u8, internal: &str, client: &str) -> Option<Vec<u8>> {
    let q = char::from(quote);
    let needle = format!("{q}{internal}{q}@{q}");
    let mut rest = message;
    let mut out = Vec::with_capacity(message.len());
    let mut found = false;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle.as_bytes()) {
        let host = at + needle.len();
        let Some(close) = rest[host..].iter().position(|&b| b == quote) else { break };
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(format!("{q}{client}{q}@{q}%{q}").as_bytes());
        rest = &rest[host + close + 1..];
        found = true;
    }
    out.extend_from_slice(rest);
    found.then_some(out)
}

/// `text` without the password hash of any ` IDENTIFIED BY PASSWORD '…'` clause (what
/// `SHOW GRANTS` and `SHOW CREATE USER` print for the internal account), or `None` when it has
/// none. The hash is as good as the password for a native-password login.
fn without_password(text: &[u8]) -> Option<Vec<u8>> {
    const CLAUSE: &[u8] = b" IDENTIFIED BY PASSWORD '";
    let mut rest = text;
    let mut out = Vec::with_capacity(text.len());
    let mut found = false;
    while let Some(at) = rest.windows(CLAUSE.len()).position(|w| w.eq_ignore_ascii_case(CLAUSE)) {
        let hash = at + CLAUSE.len();
        let Some(close) = rest[hash..].iter().position(|&b| b == b'\'') else { break };
        out.extend_from_slice(&rest[..at]);
        rest = &rest[hash + close + 1..];
        found = true;
    }
    out.extend_from_slice(rest);
    found.then_some(out)
}

/// `payload` with the hash of every ` IDENTIFIED BY PASSWORD '…'` clause overwritten with
/// `*`, or `None` when it has none: for rows whose layout the proxy does not parse (binary
/// rows), as nothing moves.
pub fn scrub_password_hashes(payload: &[u8]) -> Option<Vec<u8>> {
    const CLAUSE: &[u8] = b" IDENTIFIED BY PASSWORD '";
    let mut out: Option<Vec<u8>> = None;
    let mut from = 0;
    while let Some(at) =
        payload[from..].windows(CLAUSE.len()).position(|w| w.eq_ignore_ascii_case(CLAUSE))
    {
        let hash = from + at + CLAUSE.len();
        let end =
            payload[hash..].iter().position(|&b| b == b'\'').map_or(payload.len(), |e| hash + e);
        let scrubbed = out.get_or_insert_with(|| payload.to_vec());
        scrubbed[hash..end].fill(b'*');
        from = end;
    }
    out
}

/// A server's ERR payload in the client's terms (see [`named_for_client`]), or `None` when it
/// needs no change: for errors relayed as they came.
pub fn err_in_clients_terms(payload: &[u8], internal: &str, client: &str) -> Option<Vec<u8>> {
    if payload.first() != Some(&0xff) {
        return None;
    }
    let start = if payload.get(3) == Some(&b'#') { 9 } else { 3 };
    let message = named_for_client(payload.get(start..)?, internal, client)?;
    Some([&payload[..start], &message].concat())
}

/// A text-protocol row in the client's terms (see [`named_for_client`]), or `None` when it
/// needs no change: the messages `SHOW WARNINGS` and `SHOW ERRORS` list are errors' messages.
pub fn row_in_clients_terms(payload: &[u8], internal: &str, client: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    let (mut pos, mut changed) = (0, false);
    while pos < payload.len() {
        if payload[pos] == 0xfb {
            // NULL
            out.push(0xfb);
            pos += 1;
            continue;
        }
        let start = pos;
        let value = super::ok::lenenc_bytes(payload, &mut pos)?;
        let named = named_for_client(value, internal, client);
        let hidden = without_password(named.as_deref().unwrap_or(value));
        match hidden.or(named) {
            Some(named) => {
                super::ok::put_lenenc(&mut out, named.len() as u64);
                out.extend_from_slice(&named);
                changed = true;
            }
            None => out.extend_from_slice(&payload[start..pos]),
        }
    }
    changed.then_some(out)
}

impl MyError {
    /// This error in the client's terms (see [`named_for_client`]).
    pub fn in_clients_terms(self, internal: &str, client: &str) -> Self {
        match named_for_client(self.message.as_bytes(), internal, client) {
            Some(m) => Self { message: String::from_utf8_lossy(&m).into_owned(), ..self },
            None => self,
        }
    }
}

/// An OK payload with no rows affected. With `CLIENT_SESSION_TRACK` the info string is
/// length-encoded, so an empty one is a single zero byte.
pub fn ok_payload(status: u16, session_track: bool) -> Vec<u8> {
    let mut p = vec![0x00, 0x00, 0x00];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    if session_track {
        p.push(0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_name_the_client_not_the_internal_user() {
        let err = MyError::new(
            1142,
            "42000",
            "SELECT command denied to user 'dormouse'@'localhost' for table `mysql`.`user`",
        );
        let out = err_in_clients_terms(&err.payload(), "dormouse", "shop").expect("rewritten");
        let expected = MyError::new(
            1142,
            "42000",
            "SELECT command denied to user 'shop'@'%' for table `mysql`.`user`",
        );
        assert_eq!(out, expected.payload());
        let twice = MyError::new(1, "HY000", "'dormouse'@'a' and 'dormouse'@'b'!");
        let out = err_in_clients_terms(&twice.payload(), "dormouse", "shop").expect("rewritten");
        assert_eq!(out, MyError::new(1, "HY000", "'shop'@'%' and 'shop'@'%'!").payload());
        let other = MyError::new(1146, "42S02", "Table 'shop.x' doesn't exist");
        assert_eq!(err_in_clients_terms(&other.payload(), "dormouse", "shop"), None);
        // The read-only user's name starts with the read-write one's: only whole names match.
        let ro = MyError::new(1, "HY000", "user 'dormouse_ro'@'localhost'");
        assert_eq!(err_in_clients_terms(&ro.payload(), "dormouse", "shop"), None);
        let denied = MyError::new(
            1044,
            "42000",
            "Access denied for user 'dormouse'@'localhost' to database 'x'",
        );
        assert_eq!(
            denied.in_clients_terms("dormouse", "shop").message,
            "Access denied for user 'shop'@'%' to database 'x'"
        );
    }

    #[test]
    fn diagnostics_rows_name_the_client() {
        let mut row = b"\x05Error\x041044".to_vec();
        let message = "Access denied for user 'dormouse'@'localhost' to database 'x'";
        row.push(message.len() as u8);
        row.extend_from_slice(message.as_bytes());
        row.push(0xfb);
        let out = row_in_clients_terms(&row, "dormouse", "shop").expect("rewritten");
        let mut want = b"\x05Error\x041044".to_vec();
        let named = "Access denied for user 'shop'@'%' to database 'x'";
        want.push(named.len() as u8);
        want.extend_from_slice(named.as_bytes());
        want.push(0xfb);
        assert_eq!(out, want);
        assert_eq!(row_in_clients_terms(b"\x07Warning\x041365", "dormouse", "shop"), None);
        assert_eq!(row_in_clients_terms(b"\x09cut", "dormouse", "shop"), None, "malformed");
    }

    #[test]
    fn grants_rows_name_the_client_and_hide_the_password_hash() {
        let grant = "GRANT USAGE ON *.* TO `dormouse`@`127.0.0.1` IDENTIFIED BY PASSWORD \
                     '*D821809F681A40A6E379B50D0463EFAE20BDD122'";
        let mut row = vec![grant.len() as u8];
        row.extend_from_slice(grant.as_bytes());
        let out = row_in_clients_terms(&row, "dormouse", "shop").expect("rewritten");
        let want = "GRANT USAGE ON *.* TO `shop`@`%`";
        assert_eq!(out, [&[want.len() as u8][..], want.as_bytes()].concat());
        let create = "CREATE USER `x`@`h` IDENTIFIED BY PASSWORD '*AB' ACCOUNT LOCK";
        let mut row = vec![create.len() as u8];
        row.extend_from_slice(create.as_bytes());
        let out = row_in_clients_terms(&row, "dormouse", "shop").expect("rewritten");
        assert!(!String::from_utf8_lossy(&out).contains("*AB"));
        assert!(String::from_utf8_lossy(&out).ends_with("`x`@`h` ACCOUNT LOCK"));
    }

    #[test]
    fn binary_rows_keep_their_layout_without_the_hash() {
        let row = b"\x00\x00\x2aGRANT USAGE ON *.* TO `d`@`h` IDENTIFIED BY PASSWORD '*AB12'\x01";
        let out = scrub_password_hashes(row).expect("scrubbed");
        assert_eq!(out.len(), row.len());
        assert!(out.ends_with(b"PASSWORD '*****'\x01"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(scrub_password_hashes(b"\x00\x00\x03abc"), None);
        assert!(scrub_password_hashes(b" IDENTIFIED BY PASSWORD 'cut").is_some());
    }

    #[test]
    fn err_payload_layout() {
        let p = MyError::access_denied("db", "127.0.0.1").payload();
        assert_eq!(&p[..9], b"\xff\x15\x04#28000");
        assert!(p.ends_with(b"Access denied for user 'db'@'127.0.0.1' (using password: YES)"));
    }

    #[test]
    fn ok_payload_layout() {
        assert_eq!(ok_payload(2, false), [0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(ok_payload(2, true), [0, 0, 0, 2, 0, 0, 0, 0]);
    }
}
