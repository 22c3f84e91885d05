//! What a client command is, as far as the proxy cares: which ones it answers itself, which
//! it forwards (and the shape of their response), and which a tenant may not send.

use super::errors::MyError;
use super::response::Shape;
use super::sql::{KillTarget, kill_targets};
use super::statements::stmt_id;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Quit,
    Ping,
    ResetConnection,
    Query,
    InitDb,
    /// COM_SET_OPTION: multi-statements on or off.
    SetOption,
    Prepare,
    Execute(u32),
    SendLongData(u32),
    CloseStmt(u32),
    ResetStmt(u32),
    Fetch(u32),
    /// COM_PROCESS_KILL of a connection id.
    Kill(u32),
    /// COM_CHANGE_USER: a new login on the same connection.
    ChangeUser(ChangeUser),
    /// Forwarded as it is (statistics, field lists, ...), with its response's shape.
    Other(Shape),
    Refuse(MyError),
}

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_REFRESH: u8 = 0x07;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0a;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_DEBUG: u8 = 0x0d;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;

/// Reads a complete command.
pub fn classify(payload: &[u8]) -> Command {
    let Some(&command) = payload.first() else {
        return Command::Refuse(MyError::unknown_command());
    };
    let with_stmt = |make: fn(u32) -> Command| match stmt_id(payload) {
        Some(id) => make(id),
        None => Command::Refuse(MyError::malformed()),
    };
    match command {
        COM_QUIT => Command::Quit,
        COM_PING => Command::Ping,
        COM_RESET_CONNECTION => Command::ResetConnection,
        COM_QUERY => Command::Query,
        COM_INIT_DB => Command::InitDb,
        COM_SET_OPTION => Command::SetOption,
        COM_STMT_PREPARE => Command::Prepare,
        COM_STMT_EXECUTE => with_stmt(Command::Execute),
        COM_STMT_SEND_LONG_DATA => with_stmt(Command::SendLongData),
        COM_STMT_CLOSE => with_stmt(Command::CloseStmt),
        COM_STMT_RESET => with_stmt(Command::ResetStmt),
        COM_STMT_FETCH => with_stmt(Command::Fetch),
        COM_PROCESS_KILL => with_stmt(Command::Kill),
        COM_FIELD_LIST => Command::Other(Shape::FieldList),
        COM_PROCESS_INFO => Command::Other(Shape::Results),
        COM_REFRESH | COM_STATISTICS | COM_DEBUG => Command::Other(Shape::Single),
        COM_CHANGE_USER => match ChangeUser::parse(payload) {
            Some(change) => Command::ChangeUser(change),
            None => Command::Refuse(MyError::malformed()),
        },
        0x12 | 0x13 | 0x15 | 0x1e => {
            Command::Refuse(MyError::not_supported("replication commands"))
        }
        0x08 => Command::Refuse(MyError::not_supported("COM_SHUTDOWN")),
        _ => Command::Refuse(MyError::unknown_command()),
    }
}

/// What a COM_CHANGE_USER carries (clients that speak protocol 4.1 with secure connection,
/// the only ones the proxy admits): `11` user`00` auth-length auth-data schema`00`, then
/// optionally the collation (2 bytes), the auth plugin`00` and connection attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    pub user: String,
    pub scramble: Vec<u8>,
    pub schema: Option<String>,
    pub collation: Option<u16>,
    /// The auth plugin the scramble was made for; MySQL's old default when not named.
    pub plugin: Vec<u8>,
}

impl ChangeUser {
    fn parse(payload: &[u8]) -> Option<Self> {
        fn until_nul(rest: &[u8]) -> Option<(&[u8], &[u8])> {
            let end = rest.iter().position(|&b| b == 0)?;
            Some((&rest[..end], &rest[end + 1..]))
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (user, rest) = until_nul(payload.get(1..)?)?;
        let (&len, rest) = rest.split_first()?;
        let scramble = rest.get(..usize::from(len))?;
        let (schema, rest) = until_nul(&rest[usize::from(len)..]).unwrap_or((&[], &[]));
        let collation = rest.get(..2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        let plugin =
            rest.get(2..).and_then(until_nul).map_or(&b"mysql_native_password"[..], |p| p.0);
        Some(Self {
            user: text(user),
            scramble: scramble.to_vec(),
            schema: (!schema.is_empty()).then(|| text(schema)),
            collation,
            plugin: plugin.to_vec(),
        })
    }
}

/// The refusal for a query that kills a session other than the client's own. `own` is the
/// server session the client is pinned to; a client that is not pinned has none, since its
/// next statement may run anywhere.
pub fn kill_refusal(sql: &[u8], own: Option<u32>) -> Option<MyError> {
    let allowed = |target: &KillTarget| match target {
        KillTarget::Own => true,
        KillTarget::Thread(id) => own.is_some_and(|own| *id == u64::from(own)),
        KillTarget::Unchecked => false,
    };
    let bad = kill_targets(sql).into_iter().find(|t| !allowed(t))?;
    let shown = match bad {
        KillTarget::Thread(id) => id.to_string(),
        _ => "(not your own session)".into(),
    };
    Some(MyError::not_owner(&shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read() {
        assert_eq!(classify(b"\x03SELECT 1"), Command::Query);
        assert_eq!(classify(b"\x16SELECT ?"), Command::Prepare);
        assert_eq!(classify(b"\x17\x05\x00\x00\x00\x00\x01\x00\x00\x00"), Command::Execute(5));
        assert_eq!(classify(b"\x19\x01\x00\x00\x00"), Command::CloseStmt(1));
        assert_eq!(classify(b"\x0e"), Command::Ping);
        assert_eq!(classify(b"\x01"), Command::Quit);
        assert_eq!(classify(b"\x09"), Command::Other(Shape::Single));
        assert!(matches!(classify(b"\x19\x01"), Command::Refuse(e) if e.code == 1835));
    }

    #[test]
    fn only_the_clients_own_session_may_be_killed() {
        assert_eq!(kill_refusal(b"KILL 7", Some(7)), None);
        assert_eq!(kill_refusal(b"KILL QUERY CONNECTION_ID()", None), None);
        assert!(kill_refusal(b"KILL 7", None).is_some_and(|e| e.code == 1095));
        assert!(kill_refusal(b"KILL 8", Some(7)).is_some());
        assert!(kill_refusal(b"SELECT 1; KILL USER dormouse", Some(7)).is_some());
        assert_eq!(kill_refusal(b"SELECT 1", None), None);
    }

    #[test]
    fn change_user_is_read_with_or_without_its_optional_parts() {
        let full = b"\x11shop\x00\x03abcshop\x00\x2d\x00caching_sha2_password\x00\x00";
        let Command::ChangeUser(c) = classify(full) else { panic!("not read") };
        assert_eq!((c.user.as_str(), c.scramble.as_slice()), ("shop", &b"abc"[..]));
        assert_eq!((c.schema.as_deref(), c.collation), (Some("shop"), Some(45)));
        assert_eq!(c.plugin, b"caching_sha2_password");
        let Command::ChangeUser(c) = classify(b"\x11u\x00\x00\x00") else { panic!("not read") };
        assert_eq!(
            (c.schema, c.collation, c.plugin),
            (None, None, b"mysql_native_password".to_vec())
        );
        assert!(matches!(classify(b"\x11u\x00\x09ab"), Command::Refuse(e) if e.code == 1835));
    }

    #[test]
    fn replication_and_unknown_commands_are_refused() {
        for cmd in [&b"\x12"[..], b"\x1e", b"\x15", b"\x08", b"\x11u", b"\xfa", b"\x20", b""] {
            assert!(matches!(classify(cmd), Command::Refuse(_)), "{cmd:?}");
        }
    }
}
