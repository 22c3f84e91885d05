//! Prepared statements under multiplexing: a client gets statement ids of the proxy's own; a
//! statement is prepared on a backend connection the first time it runs there, and ids are
//! rewritten between the two in commands (bytes 1..5) and in COM_STMT_PREPARE replies.

use std::collections::HashMap;

use bytes::Bytes;

use super::sql::Traits;

/// MariaDB's id for "the statement prepared last" in COM_STMT_EXECUTE.
const LAST_PREPARED: u32 = 0xFFFF_FFFF;

/// A statement a client prepared.
#[derive(Debug, Clone)]
pub struct ClientStmt {
    pub sql: Bytes,
    /// The default schema at prepare time: table names resolve against it.
    pub schema: String,
    pub params: u16,
    /// Parameter types from the last execute that sent them; the backend statement may be a
    /// different one each time, so every execute carries them.
    pub types: Option<Vec<u8>>,
    pub traits: Traits,
    /// Its rows may show an account's definition (see `policy::review`).
    pub shows_accounts: bool,
}

/// A client session's prepared statements.
#[derive(Debug, Default)]
pub struct Statements {
    next: u32,
    by_id: HashMap<u32, ClientStmt>,
    last: Option<u32>,
}

impl Statements {
    /// An id no statement of the client has.
    pub fn free_id(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1).max(1);
        while self.by_id.contains_key(&self.next) || self.next == LAST_PREPARED {
            self.next = self.next.wrapping_add(1).max(1);
        }
        self.next
    }

    /// Registers a statement the server accepted under an id from [`Self::free_id`].
    pub fn insert(&mut self, id: u32, stmt: ClientStmt) {
        self.by_id.insert(id, stmt);
        self.last = Some(id);
    }

    /// The client's id as it means it (MariaDB's "last prepared" resolved).
    pub fn resolve(&self, id: u32) -> u32 {
        if id == LAST_PREPARED { self.last.unwrap_or(id) } else { id }
    }

    pub fn get(&self, id: u32) -> Option<&ClientStmt> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut ClientStmt> {
        self.by_id.get_mut(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<ClientStmt> {
        self.by_id.remove(&id)
    }

    pub fn clear(&mut self) {
        self.by_id.clear();
        self.last = None;
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The statement id in bytes 1..5 of a statement command or a COM_STMT_PREPARE OK.
pub fn stmt_id(payload: &[u8]) -> Option<u32> {
    let b = payload.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The same command or reply with another statement id.
pub fn with_id(payload: &[u8], id: u32) -> Vec<u8> {
    let mut out = payload.to_vec();
    if let Some(b) = out.get_mut(1..5) {
        b.copy_from_slice(&id.to_le_bytes());
    }
    out
}

/// COM_STMT_EXECUTE for the backend statement `backend_id`, with parameter types always
/// bound: taken from the command when it has them (and remembered), or from the last execute.
/// `None` when the command is too short to be an execute of `stmt`.
pub fn rewrite_execute(payload: &[u8], backend_id: u32, stmt: &mut ClientStmt) -> Option<Vec<u8>> {
    // 0x17, id (4), flags (1), iteration count (4).
    let head = payload.get(5..10)?;
    let mut out = Vec::with_capacity(payload.len() + 2 * usize::from(stmt.params));
    out.push(0x17);
    out.extend_from_slice(&backend_id.to_le_bytes());
    out.extend_from_slice(head);
    let params = usize::from(stmt.params);
    if params == 0 {
        out.extend_from_slice(&payload[10..]);
        return Some(out);
    }
    let bitmap_end = 10 + params.div_ceil(8);
    out.extend_from_slice(payload.get(10..bitmap_end)?);
    let bound = *payload.get(bitmap_end)?;
    let rest = bitmap_end + 1;
    if bound == 1 {
        let types = payload.get(rest..rest + 2 * params)?;
        stmt.types = Some(types.to_vec());
        out.extend_from_slice(&payload[bitmap_end..]);
    } else if let Some(types) = &stmt.types {
        out.push(1);
        out.extend_from_slice(types);
        out.extend_from_slice(&payload[rest..]);
    } else {
        // Never bound: the server answers as it would directly.
        out.extend_from_slice(&payload[bitmap_end..]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(params: u16) -> ClientStmt {
        ClientStmt {
            sql: Bytes::from_static(b"SELECT ?, ?"),
            schema: "shop".into(),
            params,
            types: None,
            traits: Traits::default(),
            shows_accounts: false,
        }
    }

    #[test]
    fn ids_are_the_proxys_and_last_prepared_resolves() {
        let mut s = Statements::default();
        let a = s.free_id();
        s.insert(a, stmt(0));
        let b = s.free_id();
        s.insert(b, stmt(0));
        assert_eq!((a, b), (1, 2));
        assert_eq!(s.resolve(LAST_PREPARED), 2);
        assert_eq!(s.resolve(1), 1);
        s.remove(1);
        assert!(s.get(1).is_none());
    }

    #[test]
    fn executes_always_carry_parameter_types() {
        let mut st = stmt(2);
        // Client id 1, no cursor, 1 iteration, no NULLs, types bound: LONG, VAR_STRING.
        let first = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x00\xfd\x00\x05\x00\x00\x00\x01x";
        let out = rewrite_execute(first, 9, &mut st).expect("valid");
        assert_eq!(&out[1..5], &9u32.to_le_bytes());
        assert_eq!(&out[5..], &first[5..]);
        assert_eq!(st.types.as_deref(), Some(&b"\x03\x00\xfd\x00"[..]));
        // The next execute leaves types out; the backend statement gets them anyway.
        let second = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x06\x00\x00\x00\x01y";
        let out = rewrite_execute(second, 4, &mut st).expect("valid");
        assert_eq!(
            out,
            b"\x17\x04\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x00\xfd\x00\x06\x00\x00\x00\x01y"
        );
        assert!(rewrite_execute(b"\x17\x01\x00", 4, &mut st).is_none());
        assert!(
            rewrite_execute(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03", 4, &mut st)
                .is_none()
        );
    }

    #[test]
    fn ids_are_patched_in_place() {
        assert_eq!(with_id(b"\x19\x01\x00\x00\x00", 7), b"\x19\x07\x00\x00\x00");
        assert_eq!(stmt_id(b"\x00\x05\x00\x00\x00\x01\x00"), Some(5));
        assert_eq!(with_id(b"\x19", 7), b"\x19");
    }
}
