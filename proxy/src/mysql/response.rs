//! Where a server response ends. The relay forwards response packets unchanged and feeds the
//! first chunk of each to a `Response`, which follows the protocol's shapes (OK, ERR, result
//! sets and their terminators, prepare replies, field lists) until the server is idle again. A
//! backend is only reused when its last response is known to be complete.

use super::packet::MAX_CHUNK;

/// Server status flags that matter here.
pub const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
pub const SERVER_STATUS_LAST_ROW_SENT: u16 = 0x0080;
pub const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;

/// What a response packet is, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An OK packet (`00`, or `FE` ending a result with DEPRECATE_EOF): it may carry session
    /// state, and clients without session tracking need it rewritten.
    Ok,
    /// A result row.
    Row,
    Other,
}

/// The shape of the response a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No response at all (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    None,
    /// OK, ERR, or one or more result sets (COM_QUERY, COM_STMT_EXECUTE, ...).
    Results,
    /// Rows of an open cursor, then a terminator (COM_STMT_FETCH).
    Rows,
    /// COM_STMT_PREPARE: OK with parameter and column definitions, or ERR.
    Prepare,
    /// COM_FIELD_LIST: column definitions until a terminator, or ERR.
    FieldList,
    /// Exactly one packet (COM_PING, COM_INIT_DB, COM_STATISTICS, COM_SET_OPTION, ...).
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Single,
    /// The first packet of a (next) result: OK, ERR, LOCAL INFILE request or column count.
    First,
    Columns {
        left: u64,
    },
    /// The EOF after column definitions (only without DEPRECATE_EOF).
    ColumnsEof,
    Rows,
    PrepareFirst,
    PrepareParams {
        left: u64,
        columns: u64,
    },
    PrepareParamsEof {
        columns: u64,
    },
    PrepareColumns {
        left: u64,
    },
    PrepareColumnsEof,
    FieldList,
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("the server asked for a local file, which Dormouse does not relay")]
    LocalInfile,
    #[error("malformed response packet")]
    Malformed,
}

/// Follows one command's response.
#[derive(Debug)]
pub struct Response {
    state: State,
    deprecate_eof: bool,
    /// Status flags from the last OK or EOF seen.
    pub status: Option<u16>,
    /// Warnings counted by the last OK or EOF seen.
    pub warnings: u16,
}

impl Response {
    pub fn new(shape: Shape, deprecate_eof: bool) -> Self {
        let state = match shape {
            Shape::None => State::Done,
            Shape::Results => State::First,
            Shape::Rows => State::Rows,
            Shape::Prepare => State::PrepareFirst,
            Shape::FieldList => State::FieldList,
            Shape::Single => State::Single,
        };
        Self { state, deprecate_eof, status: None, warnings: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the first chunk of the next response packet and says what it is.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Role, ResponseError> {
        let head = *payload.first().ok_or(ResponseError::Malformed)?;
        let before = self.state;
        self.advance(payload, head)?;
        let role = match before {
            State::Single | State::First if head == 0x00 => Role::Ok,
            State::Rows | State::FieldList if is_terminator(payload) => {
                if self.deprecate_eof {
                    Role::Ok
                } else {
                    Role::Other
                }
            }
            State::Rows if head != 0xff => Role::Row,
            _ => Role::Other,
        };
        Ok(role)
    }

    fn advance(&mut self, payload: &[u8], head: u8) -> Result<(), ResponseError> {
        self.state = match self.state {
            State::Done => return Err(ResponseError::Malformed),
            State::Single => {
                if matches!(head, 0x00 | 0xfe) {
                    self.note(payload, self.deprecate_eof);
                }
                State::Done
            }
            State::First => match head {
                0x00 => self.after_terminator(payload),
                0xff => State::Done,
                0xfb => return Err(ResponseError::LocalInfile),
                _ => match lenenc(payload) {
                    Some(n) if n > 0 => State::Columns { left: n },
                    _ => return Err(ResponseError::Malformed),
                },
            },
            State::Columns { left } if left > 1 => State::Columns { left: left - 1 },
            State::Columns { .. } if self.deprecate_eof => State::Rows,
            State::Columns { .. } => State::ColumnsEof,
            State::ColumnsEof => {
                if !is_terminator(payload) {
                    return Err(ResponseError::Malformed);
                }
                self.note(payload, false);
                // A cursor was opened: the rows come later, through COM_STMT_FETCH.
                if self.status.is_some_and(|s| s & SERVER_STATUS_CURSOR_EXISTS != 0) {
                    State::Done
                } else {
                    State::Rows
                }
            }
            State::Rows if head == 0xff => State::Done,
            State::Rows if is_terminator(payload) => self.after_terminator(payload),
            State::Rows => State::Rows,
            State::PrepareFirst => match head {
                0xff => State::Done,
                0x00 if payload.len() >= 9 => {
                    let columns = u64::from(u16::from_le_bytes([payload[5], payload[6]]));
                    let params = u64::from(u16::from_le_bytes([payload[7], payload[8]]));
                    self.prepare_next(params, columns)
                }
                _ => return Err(ResponseError::Malformed),
            },
            State::PrepareParams { left, columns } if left > 1 => {
                State::PrepareParams { left: left - 1, columns }
            }
            State::PrepareParams { columns, .. } if self.deprecate_eof => {
                self.prepare_next(0, columns)
            }
            State::PrepareParams { columns, .. } => State::PrepareParamsEof { columns },
            State::PrepareParamsEof { columns } => self.prepare_next(0, columns),
            State::PrepareColumns { left } if left > 1 => State::PrepareColumns { left: left - 1 },
            State::PrepareColumns { .. } if self.deprecate_eof => State::Done,
            State::PrepareColumns { .. } => State::PrepareColumnsEof,
            State::PrepareColumnsEof => State::Done,
            State::FieldList if head == 0xff || is_terminator(payload) => State::Done,
            State::FieldList => State::FieldList,
        };
        Ok(())
    }

    fn note(&mut self, payload: &[u8], deprecate_eof: bool) {
        let found = terminator_of(payload, deprecate_eof);
        self.status = found.map(|(status, _)| status);
        self.warnings = found.map_or(0, |(_, warnings)| warnings);
    }

    fn prepare_next(&self, params: u64, columns: u64) -> State {
        match (params, columns) {
            (0, 0) => State::Done,
            (0, c) => State::PrepareColumns { left: c },
            (p, c) => State::PrepareParams { left: p, columns: c },
        }
    }

    /// After an OK or EOF that ends a result: more results follow, or the response is done.
    fn after_terminator(&mut self, payload: &[u8]) -> State {
        self.note(payload, self.deprecate_eof);
        let more = self.status.is_some_and(|s| s & SERVER_MORE_RESULTS_EXISTS != 0);
        if more { State::First } else { State::Done }
    }
}

/// An EOF, or with DEPRECATE_EOF an OK with the `FE` header. A row can start with `FE` only as
/// a length prefix of 2^24 bytes or more, which fills the chunk.
fn is_terminator(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < MAX_CHUNK
}

/// A length-encoded integer at the start of `buf`, and its size.
fn lenenc_at(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let wide = |n: usize| -> Option<(u64, usize)> {
        let bytes = buf.get(1..1 + n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes);
        Some((u64::from_le_bytes(v), 1 + n))
    };
    match first {
        0xfb | 0xff => None,
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        n => Some((u64::from(n), 1)),
    }
}

fn lenenc(buf: &[u8]) -> Option<u64> {
    lenenc_at(buf).map(|(v, _)| v)
}

/// Status flags of an OK (`00`/`FE` + affected rows + last insert id + status) or of a classic
/// EOF (`FE` + warnings + status, 5 bytes).
pub fn status_of(payload: &[u8], deprecate_eof: bool) -> Option<u16> {
    terminator_of(payload, deprecate_eof).map(|(status, _)| status)
}

/// Status flags and warning count of an OK or a classic EOF.
fn terminator_of(payload: &[u8], deprecate_eof: bool) -> Option<(u16, u16)> {
    let pair = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    if payload.first() == Some(&0xfe) && !deprecate_eof && payload.len() < 9 {
        return Some((pair(payload.get(3..5)?), pair(payload.get(1..3)?)));
    }
    let (_, a) = lenenc_at(payload.get(1..)?)?;
    let (_, b) = lenenc_at(payload.get(1 + a..)?)?;
    let at = 1 + a + b;
    Some((pair(payload.get(at..at + 2)?), pair(payload.get(at + 2..at + 4)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = &[0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];
    const OK_MORE: &[u8] = &[0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00];
    const EOF: &[u8] = &[0xfe, 0x00, 0x00, 0x02, 0x00];
    const EOF_MORE: &[u8] = &[0xfe, 0x00, 0x00, 0x0a, 0x00];
    const OK_EOF: &[u8] = &[0xfe, 0x00, 0x00, 0x22, 0x00, 0x00, 0x00];
    const ERR: &[u8] = b"\xff\x28\x04#42000syntax";
    const COL: &[u8] = b"\x03def\x00\x00\x00\x01a\x00\x0c";

    fn run(shape: Shape, deprecate_eof: bool, packets: &[&[u8]]) -> Response {
        let mut r = Response::new(shape, deprecate_eof);
        for (i, p) in packets.iter().enumerate() {
            assert!(!r.is_done(), "done before packet {i}");
            r.feed(p).expect("valid");
        }
        assert!(r.is_done(), "not done after {} packets", packets.len());
        r
    }

    #[test]
    fn ok_and_err_end_a_response() {
        assert_eq!(run(Shape::Results, false, &[OK]).status, Some(2));
        run(Shape::Results, false, &[ERR]);
        run(Shape::Single, false, &[b"Uptime: 5  Threads: 1"]);
        assert!(Response::new(Shape::None, false).is_done());
    }

    #[test]
    fn text_result_sets_with_and_without_deprecate_eof() {
        run(Shape::Results, false, &[b"\x02", COL, COL, EOF, b"\x011\x012", b"\x011\x013", EOF]);
        run(Shape::Results, true, &[b"\x02", COL, COL, b"\x011\x012", OK_EOF]);
        // A row whose first byte is FE but short would be a terminator; rows never look like
        // that, while an error in the middle of rows ends the response.
        run(Shape::Results, false, &[b"\x01", COL, EOF, b"\x011", ERR]);
    }

    #[test]
    fn multiple_results_from_a_procedure_or_multi_statement() {
        run(
            Shape::Results,
            false,
            &[b"\x01", COL, EOF, b"\x011", EOF_MORE, b"\x01", COL, EOF, EOF_MORE, OK],
        );
        run(Shape::Results, false, &[OK_MORE, OK_MORE, ERR]);
    }

    #[test]
    fn prepare_replies() {
        // id 1, 2 columns, 1 param.
        let stmt_ok = b"\x00\x01\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00";
        run(Shape::Prepare, false, &[stmt_ok, COL, EOF, COL, COL, EOF]);
        run(Shape::Prepare, true, &[stmt_ok, COL, COL, COL]);
        run(Shape::Prepare, false, &[b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"]);
        run(Shape::Prepare, false, &[ERR]);
    }

    #[test]
    fn cursors_end_after_metadata_and_fetch_ends_at_the_terminator() {
        let eof_cursor: &[u8] = &[0xfe, 0x00, 0x00, 0x42, 0x00];
        run(Shape::Results, false, &[b"\x01", COL, eof_cursor]);
        run(Shape::Rows, false, &[b"\x00\x00\x01", b"\x00\x00\x02", EOF]);
    }

    #[test]
    fn field_lists_and_local_infile() {
        run(Shape::FieldList, false, &[COL, COL, EOF]);
        let mut r = Response::new(Shape::Results, false);
        assert_eq!(r.feed(b"\xfb/etc/passwd"), Err(ResponseError::LocalInfile));
    }

    #[test]
    fn status_of_ok_and_eof() {
        assert_eq!(status_of(OK, false), Some(2));
        assert_eq!(status_of(EOF, false), Some(2));
        assert_eq!(status_of(OK_EOF, true), Some(0x22));
        assert_eq!(status_of(b"\x00\xfc\x10\x27\x05\x01\x00\x00\x00", false), Some(1));
        assert_eq!(terminator_of(b"\xfe\x01\x00\x02\x00", false), Some((2, 1)));
        assert_eq!(terminator_of(b"\x00\x00\x00\x01\x40\x03\x00", false), Some((0x4001, 3)));
    }
}
