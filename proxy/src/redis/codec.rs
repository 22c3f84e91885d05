//! RESP bytes to frames and back, nothing else. Requests: RESP arrays of bulk strings, or
//! inline commands as typed into telnet, parsed with hard limits on size and argument count.
//! Replies: only the boundary of each RESP2/RESP3 frame is found, without allocating, so the
//! relay forwards the server's bytes unchanged.
//!
//! (`redis-protocol` parses neither inline commands nor with limits, and allocates a tree per
//! frame; it is used where a whole reply must be understood, see `commands.rs`.)

use bytes::{Bytes, BytesMut};

/// Limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_bytes: usize,
    pub max_args: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: request exceeds the proxy's limit of {0} bytes")]
    TooLarge(usize),
    #[error("Protocol error: too many arguments (limit {0})")]
    TooManyArgs(usize),
    #[error("Protocol error: malformed reply from the server")]
    BadReply,
}

/// One client command. `wire` is the RESP array to forward; `args` are slices of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub wire: Bytes,
    pub args: Vec<Bytes>,
}

impl Request {
    /// Builds a request from arguments, encoding it as a RESP array.
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Self {
        let mut wire = BytesMut::new();
        let ranges = encode_array(&mut wire, args);
        let wire = wire.freeze();
        let args = ranges.into_iter().map(|r| wire.slice(r)).collect();
        Self { wire, args }
    }
}

/// Appends `args` as a RESP array of bulk strings; returns where each argument landed.
pub fn encode_array<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) -> Vec<std::ops::Range<usize>> {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    let mut ranges = Vec::with_capacity(args.len());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        ranges.push(out.len()..out.len() + a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    ranges
}

/// Position of the `\r` of the first `\r\n` at or after `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut i = 0;
    while let Some(off) = rest[i..].iter().position(|&b| b == b'\r') {
        let at = i + off;
        match rest.get(at + 1) {
            Some(b'\n') => return Some(from + at),
            Some(_) => i = at + 1,
            None => return None,
        }
    }
    None
}

/// A header's decimal count: digits with an optional sign, no spaces, within `i64`.
fn parse_int(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative { 0i64.checked_sub_unsigned(magnitude) } else { i64::try_from(magnitude).ok() }
}

/// Longest header line (`*123\r\n`, `$456\r\n`) accepted before deciding it is garbage.
const MAX_HEADER: usize = 32;
/// Longest inline command line.
const MAX_INLINE: usize = 64 * 1024;

/// Takes one request off the front of `buf`. `Ok(None)`: need more bytes. An empty request
/// (`*0`, a blank inline line) comes back with no arguments and should be ignored.
pub fn take_request(
    buf: &mut BytesMut,
    limits: RequestLimits,
) -> Result<Option<Request>, ProtocolError> {
    RequestReader::default().take(buf, limits)
}

/// Reads requests across reads without rescanning: a request whose bytes arrive over many
/// reads (32 MiB, a million arguments) is scanned once, from where the last read stopped. A
/// whole multibulk request can be looked at in place (`scan`, `args`) and forwarded without
/// being copied out of the buffer or allocated for.
#[derive(Debug, Default)]
pub struct RequestReader {
    /// Arguments the request being read declared; 0 while none is.
    count: usize,
    /// Where its next argument starts.
    pos: usize,
    /// Where each argument found so far lies. Kept from one request to the next.
    ranges: Vec<std::ops::Range<usize>>,
}

/// Argument places kept for the next request; a longer list is let go.
const KEPT_RANGES: usize = 64;

impl RequestReader {
    /// Takes one request off the front of `buf`, which may only have grown since the last call
    /// that returned `Ok(None)`.
    pub fn take(
        &mut self,
        buf: &mut BytesMut,
        limits: RequestLimits,
    ) -> Result<Option<Request>, ProtocolError> {
        if buf.first() != Some(&b'*') && self.count == 0 {
            return match buf.first() {
                None => Ok(None),
                Some(_) => take_inline(buf, limits),
            };
        }
        let Some(len) = self.scan(buf, limits)? else { return Ok(None) };
        let wire = buf.split_to(len).freeze();
        let request = if self.ranges.is_empty() {
            // `*0` or a negative count: an empty request, ignored.
            Request { wire: Bytes::new(), args: Vec::new() }
        } else {
            let args = self.ranges.iter().map(|r| wire.slice(r.clone())).collect();
            Request { wire, args }
        };
        self.done();
        Ok(Some(request))
    }

    /// Scans the multibulk request at the front of `buf` without taking it: `Ok(Some(len))`
    /// once its `len` bytes are all there, with each argument's place in
    /// [`args`](Self::args) (none for `*0`); `Ok(None)` while more bytes are needed, or if
    /// the buffer starts with an inline command, which only [`take`](Self::take) reads.
    /// Scanning again before [`done`](Self::done) gives the same answer at once.
    pub fn scan(
        &mut self,
        buf: &[u8],
        limits: RequestLimits,
    ) -> Result<Option<usize>, ProtocolError> {
        if self.count == 0 && buf.first() != Some(&b'*') {
            return Ok(None);
        }
        let scanned = self.scan_multibulk(buf, limits);
        if scanned.is_err() {
            self.done();
        }
        scanned
    }

    /// The places in the buffer of the arguments of the request [`scan`](Self::scan) found.
    pub fn args(&self) -> &[std::ops::Range<usize>] {
        &self.ranges
    }

    /// Forgets the scanned request, whose bytes the caller took off the buffer.
    pub fn done(&mut self) {
        self.count = 0;
        self.pos = 0;
        self.ranges.clear();
        if self.ranges.capacity() > KEPT_RANGES {
            self.ranges = Vec::new();
        }
    }

    fn scan_multibulk(
        &mut self,
        buf: &[u8],
        limits: RequestLimits,
    ) -> Result<Option<usize>, ProtocolError> {
        if self.count == 0 {
            // However the bytes arrive, a header line longer than `MAX_HEADER` is refused.
            let Some(end) = line_end(buf, 1).filter(|&end| end <= MAX_HEADER) else {
                return if buf.len() > MAX_HEADER + 1 {
                    Err(ProtocolError::MultibulkLength)
                } else {
                    Ok(None)
                };
            };
            let count = parse_int(&buf[1..end]).ok_or(ProtocolError::MultibulkLength)?;
            if count <= 0 {
                return Ok(Some(end + 2));
            }
            let count = usize::try_from(count).map_err(|_| ProtocolError::MultibulkLength)?;
            if count > limits.max_args {
                return Err(ProtocolError::TooManyArgs(limits.max_args));
            }
            self.count = count;
            self.pos = end + 2;
            self.ranges.reserve(count.min(KEPT_RANGES));
        }
        while self.ranges.len() < self.count {
            let pos = self.pos;
            let Some(&first) = buf.get(pos) else { return Ok(None) };
            if first != b'$' {
                return Err(ProtocolError::ExpectedBulk(first as char));
            }
            let Some(end) = line_end(buf, pos + 1).filter(|&end| end - pos <= MAX_HEADER) else {
                return if buf.len() - pos > MAX_HEADER + 1 {
                    Err(ProtocolError::BulkLength)
                } else {
                    Ok(None)
                };
            };
            let len = parse_int(&buf[pos + 1..end]).ok_or(ProtocolError::BulkLength)?;
            let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
            let start = end + 2;
            // Refuse on the declared size, before buffering any of it.
            if start.saturating_add(len).saturating_add(2) > limits.max_bytes {
                return Err(ProtocolError::TooLarge(limits.max_bytes));
            }
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                return Err(ProtocolError::BulkLength);
            }
            self.ranges.push(start..start + len);
            self.pos = start + len + 2;
        }
        Ok(Some(self.pos))
    }
}

fn take_inline(
    buf: &mut BytesMut,
    limits: RequestLimits,
) -> Result<Option<Request>, ProtocolError> {
    let limit = MAX_INLINE.min(limits.max_bytes);
    // However the bytes arrive, a line longer than the limit is refused: one that came in a
    // single read with its newline is no smaller than one still waiting for it.
    let Some(nl) = buf.iter().position(|&b| b == b'\n').filter(|&nl| nl <= limit) else {
        return if buf.len() > limit { Err(ProtocolError::InlineTooBig) } else { Ok(None) };
    };
    let line = buf.split_to(nl + 1);
    let args = split_inline(&line[..nl])?;
    if args.len() > limits.max_args {
        return Err(ProtocolError::TooManyArgs(limits.max_args));
    }
    if args.is_empty() {
        return Ok(Some(Request { wire: Bytes::new(), args: Vec::new() }));
    }
    Ok(Some(Request::from_args(&args)))
}

/// Splits an inline line on whitespace, honouring "double" and 'single' quotes the way
/// redis-cli users expect (`SET k "hello world"`), with `\n`, `\t`, `\\`, `\"` and `\xHH` escapes
/// inside double quotes.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'"') => break,
                        Some(b'\\') if i + 1 < line.len() => {
                            let hex = line.get(i + 2..i + 4).and_then(|h| {
                                u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                            });
                            match (line[i + 1], hex) {
                                (b'x', Some(byte)) => {
                                    arg.push(byte);
                                    i += 2;
                                }
                                (b'n', _) => arg.push(b'\n'),
                                (b'r', _) => arg.push(b'\r'),
                                (b't', _) => arg.push(b'\t'),
                                (b'b', _) => arg.push(8),
                                (b'a', _) => arg.push(7),
                                (other, _) => arg.push(other),
                            }
                            i += 2;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'\'') => break,
                        Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Length of the complete RESP2 or RESP3 frame at the start of `buf`; `Ok(None)` if more bytes
/// are needed. Attributes (`|`) count as part of the frame they annotate.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    FrameScanner::default().scan(buf)
}

/// Finds frame boundaries across reads without rescanning: a reply of a million elements that
/// arrives over many reads is scanned once, from where the last read stopped.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Where the next element starts.
    pos: usize,
    /// Elements still to read in the current frame; 0 between frames.
    remaining: u64,
}

impl FrameScanner {
    /// The length of the complete frame at the start of `buf`, which may only have grown since
    /// the last call that returned `Ok(None)`. After `Some`, it starts afresh on the next frame.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if self.remaining == 0 {
            (self.pos, self.remaining) = (0, 1);
        }
        while self.remaining > 0 {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else { return Ok(None) };
            let Some(end) = line_end(buf, pos + 1) else { return Ok(None) };
            let header = &buf[pos + 1..end];
            let mut next = end + 2;
            let mut more = 0u64;
            match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {}
                b'$' | b'!' | b'=' => {
                    let n = parse_int(header).ok_or(ProtocolError::BadReply)?;
                    if n >= 0 {
                        let n = usize::try_from(n).map_err(|_| ProtocolError::BadReply)?;
                        if buf.len() < next + n + 2 {
                            return Ok(None);
                        }
                        next += n + 2;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(header).ok_or(ProtocolError::BadReply)?;
                    let n = u64::try_from(n.max(0)).map_err(|_| ProtocolError::BadReply)?;
                    more = match kind {
                        b'%' => 2 * n,
                        b'|' => 2 * n + 1,
                        _ => n,
                    };
                }
                _ => {
                    self.remaining = 0;
                    return Err(ProtocolError::BadReply);
                }
            }
            self.pos = next;
            // Counts near i64::MAX (a `|` attribute's 2n+1 elements) must not overflow.
            let Some(remaining) = (self.remaining - 1).checked_add(more) else {
                self.remaining = 0;
                return Err(ProtocolError::BadReply);
            };
            self.remaining = remaining;
        }
        Ok(Some(std::mem::take(&mut self.pos)))
    }
}

/// The elements of a complete top-level array or push frame, as byte slices of `frame`
/// (bulk strings without their header; other frames whole). `None` for anything else.
pub fn array_elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    if !matches!(frame.first(), Some(b'*' | b'>')) {
        return None;
    }
    let end = line_end(frame, 1)?;
    let count = usize::try_from(parse_int(&frame[1..end])?).ok()?;
    let mut pos = end + 2;
    // Each element takes at least three bytes: room by the count only if the frame has them.
    let mut out = Vec::with_capacity(count.min(frame.len() / 3));
    for _ in 0..count {
        let len = frame_len(&frame[pos..]).ok()??;
        let element = &frame[pos..pos + len];
        out.push(match element.first() {
            // A bulk string's bytes; a nil bulk (`$-1`) is empty.
            Some(b'$') => {
                let h = line_end(element, 1)?;
                element.get(h + 2..element.len().saturating_sub(2)).unwrap_or_default()
            }
            _ => element,
        });
        pos += len;
    }
    Some(out)
}

/// The integer in a `:N\r\n` frame.
pub fn integer(frame: &[u8]) -> Option<i64> {
    let rest = frame.strip_prefix(b":")?;
    parse_int(&rest[..line_end(rest, 0)?])
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use super::*;

    const LIMITS: RequestLimits = RequestLimits { max_bytes: 1024, max_args: 16 };

    fn take(bytes: &[u8]) -> Result<Option<Request>, ProtocolError> {
        take_request(&mut BytesMut::from(bytes), LIMITS)
    }

    #[test]
    fn multibulk_requests_round_trip() {
        let req = Request::from_args(&["SET", "key", "va\r\nlue"]);
        let mut buf = BytesMut::from(&req.wire[..]);
        buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let parsed = take_request(&mut buf, LIMITS).ok().flatten().expect("complete");
        assert_eq!(parsed, req);
        assert_eq!(parsed.args[2], &b"va\r\nlue"[..]);
        let ping = take_request(&mut buf, LIMITS).ok().flatten().expect("complete");
        assert_eq!(ping.args, vec![Bytes::from_static(b"PING")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_requests_wait_for_more() {
        let wire = Request::from_args(&["SET", "k", "v"]).wire;
        for cut in 0..wire.len() {
            assert_eq!(take(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(take(&wire).ok().flatten().is_some());
    }

    #[test]
    fn requests_are_scanned_in_place_across_reads() {
        let wire = Request::from_args(&["SET", "key", "value"]).wire;
        let mut reader = RequestReader::default();
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let scanned = reader.scan(&buf, LIMITS);
            assert_eq!(scanned, Ok((i + 1 == wire.len()).then_some(wire.len())), "byte {i}");
        }
        let args: Vec<&[u8]> = reader.args().iter().map(|r| &buf[r.clone()]).collect();
        assert_eq!(args, [&b"SET"[..], b"key", b"value"]);
        // Asked again, the same request; once done, the next one.
        assert_eq!(reader.scan(&buf, LIMITS), Ok(Some(wire.len())));
        buf.advance(wire.len());
        reader.done();
        buf.extend_from_slice(b"*0\r\nPING\r\n");
        assert_eq!(reader.scan(&buf, LIMITS), Ok(Some(4)));
        assert!(reader.args().is_empty());
        buf.advance(4);
        reader.done();
        // An inline command is left to `take`.
        assert_eq!(reader.scan(&buf, LIMITS), Ok(None));
        let ping = reader.take(&mut buf, LIMITS).ok().flatten().expect("inline ping");
        assert_eq!(ping.args, vec![Bytes::from_static(b"PING")]);
        // After an error the reader starts afresh.
        let mut bad = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n:1\r\n"[..]);
        assert_eq!(reader.scan(&bad, LIMITS), Err(ProtocolError::ExpectedBulk(':')));
        bad.clear();
        bad.extend_from_slice(&wire);
        assert_eq!(reader.take(&mut bad, LIMITS).ok().flatten().map(|r| r.wire), Some(wire));
    }

    #[test]
    fn oversized_requests_are_refused_before_they_are_buffered() {
        assert_eq!(take(b"*2\r\n$3\r\nSET\r\n$999999\r\n"), Err(ProtocolError::TooLarge(1024)));
        assert_eq!(take(b"*99\r\n"), Err(ProtocolError::TooManyArgs(16)));
        assert_eq!(take(b"*1\r\n$-5\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(take(b"*x\r\n"), Err(ProtocolError::MultibulkLength));
        assert_eq!(take(b"*1\r\n:5\r\n"), Err(ProtocolError::ExpectedBulk(':')));
        assert_eq!(take(b"*1\r\n$3\r\nabcde\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(take(&[b'*'; 100]), Err(ProtocolError::MultibulkLength));
    }

    #[test]
    fn limits_hold_however_the_bytes_arrive() {
        // Found by fuzzing: an inline line longer than the limit passed when its newline came
        // in the same read, and a padded header line passed unless it came split.
        let long_line = [&b"GET "[..], &[b'k'; 2000], b"\r\n"].concat();
        assert_eq!(take(&long_line), Err(ProtocolError::InlineTooBig));
        let padded = [&b"*"[..], &[b'0'; 40], b"1\r\n$4\r\nPING\r\n"].concat();
        assert_eq!(take(&padded), Err(ProtocolError::MultibulkLength));
        assert_eq!(take(&padded[..20]), Ok(None));
        let padded_bulk = [&b"*1\r\n$"[..], &[b'0'; 40], b"4\r\nPING\r\n"].concat();
        assert_eq!(take(&padded_bulk), Err(ProtocolError::BulkLength));
        // Up to the limit, a line is taken.
        let line = [&b"GET "[..], &[b'k'; 1018], b"\r\n"].concat();
        assert!(take(&line).ok().flatten().is_some());
    }

    #[test]
    fn header_counts_are_plain_decimals() {
        assert_eq!(parse_int(b"123"), Some(123));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"1 "), None);
        assert_eq!(parse_int(b"99999999999999999999"), None);
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(take(b"*1\r\n$ 3\r\nGET\r\n"), Err(ProtocolError::BulkLength));
    }

    #[test]
    fn inline_commands_are_split_and_reencoded() {
        let req = take(b"set k \"hello world\\n\" 'it\\'s'\r\n").ok().flatten().expect("complete");
        assert_eq!(
            req.args,
            ["set", "k", "hello world\n", "it's"].map(|s| Bytes::from(s.to_owned()))
        );
        assert_eq!(req, Request::from_args(&["set", "k", "hello world\n", "it's"]));
        assert_eq!(take(b"PING"), Ok(None));
        assert_eq!(take(b"get \"x\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert!(take(b"\r\n").ok().flatten().is_some_and(|r| r.args.is_empty()));
        assert_eq!(take(&[b'a'; 2000]), Err(ProtocolError::InlineTooBig));
    }

    #[test]
    fn frame_boundaries_of_resp2_and_resp3_replies() {
        let frames: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n_\r\n",
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
            b"~2\r\n#t\r\n,1.5\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"(123456789012345678901234567890\r\n",
        ];
        for f in frames {
            let mut buf = f.to_vec();
            buf.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(frame_len(&buf), Ok(Some(f.len())), "{}", String::from_utf8_lossy(f));
            for cut in 0..f.len() {
                assert_eq!(
                    frame_len(&f[..cut]),
                    Ok(None),
                    "cut {cut} of {}",
                    String::from_utf8_lossy(f)
                );
            }
        }
        assert_eq!(frame_len(b"?x\r\n"), Err(ProtocolError::BadReply));
        // Element counts whose sum does not fit are refused (it overflowed in debug builds).
        let huge = b"*2\r\n|9223372036854775807\r\n";
        assert_eq!(frame_len(huge), Err(ProtocolError::BadReply));
        assert_eq!(frame_len(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
    }

    #[test]
    fn scanning_resumes_where_it_stopped() {
        let frame = b"*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n:2\r\n+end\r\n";
        let mut scanner = FrameScanner::default();
        for cut in 0..frame.len() {
            assert_eq!(scanner.scan(&frame[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(scanner.scan(frame), Ok(Some(frame.len())));
        // Ready for the next frame.
        assert_eq!(scanner.scan(b":7\r\n"), Ok(Some(4)));
    }

    #[test]
    fn requests_are_read_across_many_reads() {
        let wire = Request::from_args(&["MSET", "a", "1", "b", "2"]).wire;
        let mut reader = RequestReader::default();
        let mut buf = BytesMut::new();
        for byte in wire.iter().take(wire.len() - 1) {
            buf.extend_from_slice(&[*byte]);
            assert_eq!(reader.take(&mut buf, LIMITS), Ok(None));
        }
        buf.extend_from_slice(&wire[wire.len() - 1..]);
        let req = reader.take(&mut buf, LIMITS).ok().flatten().expect("complete");
        assert_eq!(req.wire, wire);
        assert_eq!(req.args.len(), 5);
        assert!(buf.is_empty());
    }

    #[test]
    fn array_elements_and_integers() {
        let f = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let el = array_elements(f).expect("array");
        assert_eq!(el[0], b"subscribe");
        assert_eq!(el[1], b"ch");
        assert_eq!(integer(el[2]), Some(1));
        assert!(array_elements(b"+OK\r\n").is_none());
        let nil = array_elements(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n").expect("array");
        assert_eq!((nil[1], integer(nil[2])), (&b""[..], Some(0)));
        // Found by fuzzing: room was made for the count a header claimed before looking for
        // the elements (a capacity overflow here).
        assert!(array_elements(b"*9223372036854775807\r\n:1\r\n").is_none());
    }
}
