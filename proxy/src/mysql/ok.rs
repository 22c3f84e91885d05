//! OK packets from servers that track session state: what changed (system variables, the
//! default schema, transaction state, "something else"), and the packet rewritten for clients
//! that did not ask for session tracking (state dropped).

use super::response::SERVER_SESSION_STATE_CHANGED;

/// Session-state items of one OK packet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateChanges {
    /// `SESSION_TRACK_SYSTEM_VARIABLES`: name and new value.
    pub variables: Vec<(String, String)>,
    /// `SESSION_TRACK_SCHEMA`: the new default schema.
    pub schema: Option<String>,
    /// `SESSION_TRACK_STATE_CHANGE`: something about the session changed.
    pub state_changed: bool,
    /// `SESSION_TRACK_TRANSACTION_CHARACTERISTICS`: what is set for the next transaction;
    /// empty once it has been used.
    pub characteristics: Option<String>,
    /// `SESSION_TRACK_TRANSACTION_STATE`: eight flags, `L` last when tables are locked.
    pub transaction_state: Option<String>,
}

/// The parts of an OK packet the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ok {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: Vec<u8>,
    pub changes: StateChanges,
}

pub(super) fn lenenc(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let width = match first {
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        0xfb | 0xff => return None,
        n => {
            *pos += 1;
            return Some(u64::from(n));
        }
    };
    let bytes = buf.get(*pos + 1..*pos + 1 + width)?;
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(bytes);
    *pos += 1 + width;
    Some(u64::from_le_bytes(v))
}

pub(super) fn lenenc_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(lenenc(buf, pos)?).ok()?;
    // A length near 2^64 must not wrap around to a short one.
    let bytes = buf.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(bytes)
}

pub(super) fn put_lenenc(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The first column of a text result row; `None` for SQL NULL.
pub fn first_text_value(row: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0;
    lenenc_bytes(row, &mut pos).map(<[u8]>::to_vec)
}

/// Parses an OK packet (`00` or, as a result-set terminator with DEPRECATE_EOF, `FE`) sent on a
/// connection with session tracking.
pub fn parse(payload: &[u8]) -> Option<Ok> {
    if !matches!(payload.first(), Some(0x00 | 0xfe)) {
        return None;
    }
    let mut pos = 1;
    let affected_rows = lenenc(payload, &mut pos)?;
    let last_insert_id = lenenc(payload, &mut pos)?;
    let status = u16::from_le_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]);
    let warnings = u16::from_le_bytes([*payload.get(pos + 2)?, *payload.get(pos + 3)?]);
    pos += 4;
    let mut info = Vec::new();
    let mut changes = StateChanges::default();
    if pos < payload.len() {
        info = lenenc_bytes(payload, &mut pos)?.to_vec();
        if status & SERVER_SESSION_STATE_CHANGED != 0 && pos < payload.len() {
            let state = lenenc_bytes(payload, &mut pos)?;
            changes = parse_state(state)?;
        }
    }
    Some(Ok { affected_rows, last_insert_id, status, warnings, info, changes })
}

fn parse_state(mut state: &[u8]) -> Option<StateChanges> {
    let mut changes = StateChanges::default();
    while let Some(&kind) = state.first() {
        let mut pos = 1;
        let data = lenenc_bytes(state, &mut pos)?;
        state = &state[pos..];
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut p = 0;
        match kind {
            0 => {
                let name = lenenc_bytes(data, &mut p)?;
                let value = lenenc_bytes(data, &mut p)?;
                changes.variables.push((text(name), text(value)));
            }
            1 => changes.schema = Some(text(lenenc_bytes(data, &mut p)?)),
            // MariaDB sends the flag bare; MySQL documents it length-prefixed.
            2 => changes.state_changed = data == b"1" || data == b"\x011",
            4 => changes.characteristics = Some(text(lenenc_bytes(data, &mut p)?)),
            5 => changes.transaction_state = Some(text(lenenc_bytes(data, &mut p)?)),
            _ => {} // GTIDs and future items: nothing to act on.
        }
    }
    Some(changes)
}

/// The OK packet as a server sends it to a client without session tracking: same header,
/// counts and status (minus the state-changed flag), and the info string only when there is
/// one. It stays length-encoded: the protocol documentation says a plain trailing string, but
/// MariaDB and MySQL both send it length-prefixed, and clients (libmariadb, mysql_common) read
/// it that way.
pub fn without_tracking(header: u8, ok: &Ok) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + ok.info.len());
    out.push(header);
    put_lenenc(&mut out, ok.affected_rows);
    put_lenenc(&mut out, ok.last_insert_id);
    out.extend_from_slice(&(ok.status & !SERVER_SESSION_STATE_CHANGED).to_le_bytes());
    out.extend_from_slice(&ok.warnings.to_le_bytes());
    if !ok.info.is_empty() {
        put_lenenc(&mut out, ok.info.len() as u64);
        out.extend_from_slice(&ok.info);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OK with session state, as MariaDB sends after `SET time_zone='+02:00'`.
    fn tracked_ok() -> Vec<u8> {
        let mut item = Vec::new();
        put_lenenc(&mut item, 9);
        item.extend_from_slice(b"time_zone");
        put_lenenc(&mut item, 6);
        item.extend_from_slice(b"+02:00");
        let mut state = vec![0u8];
        put_lenenc(&mut state, item.len() as u64);
        state.extend_from_slice(&item);
        state.extend_from_slice(&[2, 1, b'1']); // STATE_CHANGE "1", as MariaDB sends it
        state.extend_from_slice(&[5, 9, 8]);
        state.extend_from_slice(b"_______L");
        let mut p = vec![0x00, 0x00, 0x00];
        p.extend_from_slice(&(0x4002u16).to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p.push(0); // empty info
        put_lenenc(&mut p, state.len() as u64);
        p.extend_from_slice(&state);
        p
    }

    #[test]
    fn session_state_items_are_read() {
        let ok = parse(&tracked_ok()).expect("ok");
        assert_eq!(ok.status, 0x4002);
        assert_eq!(ok.changes.variables, [("time_zone".to_owned(), "+02:00".to_owned())]);
        assert!(ok.changes.state_changed);
        assert_eq!(ok.changes.transaction_state.as_deref(), Some("_______L"));
    }

    #[test]
    fn rewritten_for_clients_without_tracking() {
        let ok = parse(&tracked_ok()).expect("ok");
        assert_eq!(without_tracking(0x00, &ok), [0, 0, 0, 2, 0, 0, 0]);
        // Large counts keep their encoding.
        let big = Ok {
            affected_rows: 70_000,
            last_insert_id: 300,
            status: 2,
            warnings: 1,
            info: b"Rows matched: 1".to_vec(),
            changes: StateChanges::default(),
        };
        let bytes = without_tracking(0x00, &big);
        assert_eq!(
            parse(&bytes).map(|o| (o.affected_rows, o.last_insert_id, o.info)),
            Some((70_000, 300, big.info.clone()))
        );
        // What MariaDB itself sends a client without tracking after a two-row INSERT.
        let mut info = b"\0\x02\x01\x02\0\0\0&".to_vec();
        info.extend_from_slice(b"Records: 2  Duplicates: 0  Warnings: 0");
        let ok = parse(&info).expect("ok");
        assert_eq!(without_tracking(0x00, &ok), info);
    }

    #[test]
    fn lengths_past_the_end_are_refused() {
        // Found by fuzzing: an 8-byte length near 2^64 overflowed the end position.
        let row = b"\xfe\xfe\xff\xff\xff\xff\xff\xff\xffabc";
        assert_eq!(first_text_value(row), None);
        assert!(
            parse(b"\x00\x00\x00\x02\x40\x00\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xff").is_none()
        );
    }

    #[test]
    fn plain_oks_parse_too() {
        let ok = parse(&[0, 1, 5, 2, 0, 0, 0]).expect("ok");
        assert_eq!((ok.affected_rows, ok.last_insert_id, ok.status), (1, 5, 2));
        assert_eq!(ok.changes, StateChanges::default());
        assert!(parse(&[0xff, 1, 2]).is_none());
    }
}
