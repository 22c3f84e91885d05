//! Fuzz harnesses for everything the proxy decodes from the network: MySQL packets, handshake
//! and commands, the SQL lexer, RESP requests and replies. Each takes arbitrary bytes, runs the
//! decoders and panics when one breaks a property; `fuzz/` runs them under libFuzzer, and the
//! unit tests below run a quick randomized pass of each in CI.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::claims::Role;
use crate::mysql::command::{self, Command};
use crate::mysql::login::{self, OFFERED_CAPS};
use crate::mysql::packet::{MAX_CHUNK, PacketStream};
use crate::mysql::policy;
use crate::mysql::response::{Response, Shape};
use crate::mysql::sql::{self, Lexeme};
use crate::mysql::statements::{self, ClientStmt};
use crate::mysql::{errors, fastauth::FastAuth, ok};
use crate::redis::codec::{self, FrameScanner, ProtocolError, Request, RequestLimits};

/// A harness: panics when a decoder misbehaves on `data`.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/` has them.
pub const TARGETS: &[(&str, Target)] = &[
    ("mysql_packets", mysql_packets),
    ("mysql_handshake", mysql_handshake),
    ("mysql_command", mysql_command),
    ("mysql_responses", mysql_responses),
    ("sql", sql),
    ("resp_requests", resp_requests),
    ("resp_replies", resp_replies),
];

/// Splits `data` into a few control bytes and the rest (all zero when `data` is short).
fn control<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut head = [0u8; N];
    let n = data.len().min(N);
    head[..n].copy_from_slice(&data[..n]);
    (head, &data[n..])
}

/// The sizes the bytes arrive in: a cycle of small reads derived from `seed`, so a decoder
/// sees every way a message can be cut across reads.
fn cuts(seed: u8) -> impl Iterator<Item = usize> {
    let pattern = [1 + usize::from(seed & 7), 1 + usize::from(seed >> 3), 1, 3, 17];
    pattern.into_iter().cycle()
}

/// A connection that delivers `data` in the given cuts, then ends; writes are dropped.
struct Trickle<'a, I> {
    data: &'a [u8],
    cuts: I,
}

impl<I: Iterator<Item = usize> + Unpin> AsyncRead for Trickle<'_, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = self.cuts.next().unwrap_or(1).min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(want);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

impl<I: Unpin> AsyncWrite for Trickle<'_, I> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// MySQL framing as the proxy reads a client: packets out of a byte stream cut anywhere, each
/// then read as a command.
pub fn mysql_packets(data: &[u8]) {
    let ([chunk, seed], wire) = control::<2>(data);
    let mut stream =
        PacketStream::new(Trickle { data: wire, cuts: cuts(seed) }, 1 + usize::from(chunk));
    let mut consumed = 0;
    let end = futures::executor::block_on(async {
        loop {
            match stream.read().await {
                Ok(Some(packet)) => {
                    let header = &packet.bytes[..3];
                    let len = usize::from(header[0])
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]) << 16;
                    assert_eq!(packet.payload().len(), len, "a packet is as long as it says");
                    assert_eq!(packet.is_continued(), len == MAX_CHUNK);
                    assert_eq!(&wire[consumed..consumed + packet.bytes.len()], &packet.bytes[..]);
                    consumed += packet.bytes.len();
                    let _ = command::classify(packet.payload());
                }
                other => break other,
            }
        }
    });
    match end {
        Ok(None) => assert_eq!(consumed, wire.len(), "a clean end leaves nothing unread"),
        Ok(Some(_)) => unreachable!(),
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            assert!(consumed < wire.len(), "only a partial packet is an error");
        }
    }
}

/// The connection phase: the SSLRequest check, the handshake response, a COM_CHANGE_USER,
/// the plugin a client names and the scramble for the fast path.
pub fn mysql_handshake(data: &[u8]) {
    let _ = login::is_ssl_request(data);
    if let Ok(hello) = login::read_hello(data) {
        assert!(OFFERED_CAPS.contains(hello.caps), "only offered capabilities are kept");
        assert!(hello.scramble.len() <= data.len() && hello.user.len() <= 3 * data.len());
        let cache = FastAuth::new(4);
        cache.remember(&hello.user, "token");
        let _ = cache.find(&hello.user, b"abcdefghijklmnopqrst", &hello.scramble);
    }
    let mut change = vec![0x11];
    change.extend_from_slice(data);
    if let Command::ChangeUser(c) = command::classify(&change) {
        assert!(c.scramble.len() <= data.len() && c.plugin.len() <= data.len().max(21));
        let _ = mysql_common::packets::AuthPlugin::from_bytes(&c.plugin);
    }
    assert!(login::strip_nul(data).len() + 1 >= data.len());
}

/// One command from a logged-in client, read as far as the proxy reads it.
pub fn mysql_command(data: &[u8]) {
    let ([params, own], payload) = control::<2>(data);
    match command::classify(payload) {
        Command::Query => {
            let _ = command::kill_refusal(&payload[1..], (own & 1 == 1).then_some(u32::from(own)));
            let _ = sql::inspect(&payload[1..]);
        }
        Command::Execute(id) => {
            assert_eq!(statements::stmt_id(payload), Some(id));
            let mut stmt = ClientStmt {
                sql: bytes::Bytes::new(),
                schema: String::new(),
                params: u16::from(params),
                types: (own & 1 == 1).then(|| vec![0x0f; 2 * usize::from(params)]),
                traits: sql::Traits::default(),
                shows_accounts: false,
            };
            if let Some(out) = statements::rewrite_execute(payload, 7, &mut stmt) {
                assert_eq!(statements::stmt_id(&out), Some(7));
                assert!(out.len() <= payload.len() + 1 + 2 * usize::from(params));
            }
            let patched = statements::with_id(payload, 9);
            assert_eq!(statements::stmt_id(&patched), Some(9));
        }
        Command::ChangeUser(c) => assert!(c.scramble.len() < payload.len()),
        _ => {}
    }
}

/// Responses from a server (whose rows a tenant writes): where each ends, OK packets with
/// session state, and rows and errors rewritten for the client.
pub fn mysql_responses(data: &[u8]) {
    let ([shape, flags], mut rest) = control::<2>(data);
    let shape =
        [Shape::None, Shape::Results, Shape::Rows, Shape::Prepare, Shape::FieldList, Shape::Single]
            [usize::from(shape) % 6];
    let mut response = Response::new(shape, flags & 1 == 1);
    // Packets as length-prefixed slices of the input (one length byte each).
    while let Some((&len, tail)) = rest.split_first() {
        let (payload, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        if !response.is_done() && response.feed(payload).is_err() {
            break;
        }
        if let Some(parsed) = ok::parse(payload) {
            let plain = ok::without_tracking(payload[0], &parsed);
            let again = ok::parse(&plain).expect("a rewritten OK parses");
            assert_eq!(
                (again.affected_rows, again.last_insert_id, again.warnings, again.info),
                (parsed.affected_rows, parsed.last_insert_id, parsed.warnings, parsed.info)
            );
        }
        let _ = ok::first_text_value(payload);
        // Rows and errors the proxy rewrites so the internal account stays unnamed.
        let _ = errors::row_in_clients_terms(payload, "dormouse", "shop");
        let _ = errors::err_in_clients_terms(payload, "dormouse", "shop");
        let _ = crate::mysql::response::status_of(payload, flags & 2 == 2);
    }
}

/// The SQL lexer and what is read with it: statement splitting, KILL targets, session effects,
/// the statement policy.
pub fn sql(data: &[u8]) {
    let range = data.as_ptr_range();
    let mut ends = 0;
    sql::lex(data, |lexeme| {
        let inside = |s: &[u8]| {
            let r = s.as_ptr_range();
            range.start <= r.start && r.end <= range.end
        };
        match lexeme {
            Lexeme::Word(w) | Lexeme::Number(w) => assert!(!w.is_empty() && inside(w)),
            Lexeme::Str(s) => assert!(inside(s)),
            Lexeme::End => ends += 1,
            Lexeme::Other(_) => {}
        }
    });
    let statements = sql::statements(data);
    assert!(statements.len() <= ends + 1);
    assert!(statements.iter().all(|s| !s.is_empty() && s.len() <= 8));
    let kills = sql::kill_targets(data);
    assert!(kills.len() <= statements.len());
    let traits = sql::inspect(data);
    // A statement before the text changes nothing in how the text is read.
    let mut prefixed = b"SELECT 1;".to_vec();
    prefixed.extend_from_slice(data);
    assert_eq!(sql::statements(&prefixed).len(), statements.len() + 1);
    assert_eq!(sql::kill_targets(&prefixed), kills);
    assert_eq!(sql::inspect(&prefixed), traits);
    policy_sees_through_wrappers(data, &prefixed);
}

/// The statement policy: a refusal survives any wrapping the server still runs, a statement in
/// front or an executable comment around the text, and (for text without quotes or
/// backslashes) a `PREPARE … FROM '…'` literal.
fn policy_sees_through_wrappers(data: &[u8], prefixed: &[u8]) {
    for role in [Role::Readonly, Role::Readwrite] {
        let verdict = policy::review(data, role);
        assert_eq!(policy::review(prefixed, role), verdict);
        let _ = policy::review_prepare(data, role);
        if verdict.is_err() {
            let commented = [&b"/*! "[..], data, b" */"].concat();
            assert!(policy::review(&commented, role).is_err(), "lost in a comment");
            if !data.iter().any(|b| matches!(b, b'\'' | b'\\')) {
                let prepared = [&b"PREPARE s FROM '"[..], data, b"'"].concat();
                assert!(policy::review(&prepared, role).is_err(), "lost in PREPARE");
            }
        }
    }
}

/// Every request and the first error, reading `wire` as the session does: appended to a
/// buffer in `cuts`, with requests scanned in place before they are taken.
fn read_requests(
    wire: &[u8],
    limits: RequestLimits,
    mut cuts: impl Iterator<Item = usize>,
) -> (Vec<Request>, Option<ProtocolError>) {
    let mut reader = codec::RequestReader::default();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = Vec::new();
    loop {
        if let Err(e) = reader.scan(&buf, limits) {
            return (out, Some(e));
        }
        match reader.take(&mut buf, limits) {
            Ok(Some(request)) => out.push(request),
            Err(e) => return (out, Some(e)),
            Ok(None) if fed == wire.len() => return (out, None),
            Ok(None) => {
                let n = cuts.next().unwrap_or(1).min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
}

/// Client requests, multibulk and inline, within limits, however the bytes are cut.
pub fn resp_requests(data: &[u8]) {
    let ([size, args, seed], wire) = control::<3>(data);
    let limits = RequestLimits {
        max_bytes: 8 + 16 * usize::from(size),
        max_args: 1 + usize::from(args % 32),
    };
    let (whole, whole_error) = read_requests(wire, limits, std::iter::once(wire.len()));
    let (cut, cut_error) = read_requests(wire, limits, cuts(seed));
    assert_eq!(whole, cut, "requests do not depend on how the bytes arrive");
    assert_eq!(whole_error, cut_error);
    for request in &whole {
        assert!(request.args.len() <= limits.max_args, "{} args", request.args.len());
        let size: usize = request.args.iter().map(|a| a.len()).sum();
        assert!(size <= limits.max_bytes, "{size} bytes of arguments accepted");
        if request.args.is_empty() {
            continue;
        }
        let range = request.wire.as_ptr_range();
        // (An empty slice may point anywhere.)
        for arg in request.args.iter().filter(|a| !a.is_empty()) {
            let r = arg.as_ptr_range();
            assert!(range.start <= r.start && r.end <= range.end, "arguments lie in the request");
        }
        // What is forwarded reads back as the same command.
        let again = codec::take_request(
            &mut BytesMut::from(&request.wire[..]),
            RequestLimits { max_bytes: usize::MAX, max_args: usize::MAX },
        );
        assert_eq!(again.ok().flatten().map(|r| r.args), Some(request.args.clone()));
    }
}

/// Server replies: frame boundaries found at once or across reads, and the pieces of frames
/// the proxy looks into.
pub fn resp_replies(data: &[u8]) {
    let ([seed], wire) = control::<1>(data);
    let _ = codec::array_elements(wire);
    let _ = codec::integer(wire);
    let mut at = 0;
    let mut scanner = FrameScanner::default();
    let mut cuts = cuts(seed);
    let mut fed = 0;
    loop {
        let rest = &wire[at..];
        let whole = codec::frame_len(rest);
        // The same frame, scanned as its bytes arrive.
        let cut = loop {
            match scanner.scan(&rest[..fed]) {
                Ok(None) if fed < rest.len() => {
                    fed = (fed + cuts.next().unwrap_or(1)).min(rest.len())
                }
                other => break other,
            }
        };
        assert_eq!(whole, cut, "frame boundaries do not depend on how the bytes arrive");
        let Ok(Some(len)) = whole else { return };
        assert!(0 < len && len <= rest.len());
        let frame = &rest[..len];
        if let Some(elements) = codec::array_elements(frame) {
            let range = frame.as_ptr_range();
            for e in elements.iter().filter(|e| !e.is_empty()) {
                let r = e.as_ptr_range();
                assert!(range.start <= r.start && r.end <= range.end);
            }
        }
        let _ = codec::integer(frame);
        // The scanner starts afresh on the next frame, with the bytes it was given beyond.
        at += len;
        fed -= len;
    }
}

#[cfg(test)]
mod tests {
    //! A quick randomized pass over each target (a few thousand mutated seeds) so CI catches a
    //! decoder that starts panicking; `fuzz/run` does the long coverage-guided runs.

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::TARGETS;

    const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"*",
        b"$",
        b"%",
        b"|",
        b">",
        b"-1",
        b"9223372036854775807",
        b"18446744073709551615",
        b"\xff\xff\xff",
        b"\x00",
        b"'",
        b"\"",
        b"`",
        b"/*!",
        b"*/",
        b"--",
        b"#",
        b"\\",
        b";",
        b"KILL ",
        b"GET_LOCK(",
        b"LAST_INSERT_ID(",
        b"@",
        b"\xfe",
        b"\xfc",
        b"\xfd",
        b"\xfb",
    ];

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| std::fs::read(e.ok()?.path()).ok()).collect())
            .unwrap_or_default();
        out.push(Vec::new());
        out
    }

    fn mutate(rng: &mut StdRng, input: &mut Vec<u8>) {
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..=input.len());
            match rng.random_range(0..5) {
                0 if !input.is_empty() => {
                    let i = rng.random_range(0..input.len());
                    input[i] ^= 1 << rng.random_range(0..8);
                }
                1 => input.insert(at, rng.random()),
                2 if at < input.len() => {
                    input.remove(at);
                }
                3 => {
                    let token = TOKENS[rng.random_range(0..TOKENS.len())];
                    input.splice(at..at, token.iter().copied());
                }
                _ if !input.is_empty() => {
                    let from = rng.random_range(0..input.len());
                    let to = rng.random_range(from..=input.len().min(from + 16));
                    let piece = input[from..to].to_vec();
                    input.splice(at..at, piece);
                }
                _ => input.push(rng.random()),
            }
        }
    }

    #[test]
    fn every_decoder_survives_a_few_thousand_mutated_inputs() {
        let mut rng = StdRng::seed_from_u64(17);
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(seeds.len() > 1, "no seeds for {name} in fuzz/seeds");
            for seed in &seeds {
                target(seed);
            }
            for _ in 0..3_000 {
                let mut input = seeds[rng.random_range(0..seeds.len())].clone();
                mutate(&mut rng, &mut input);
                let outcome = std::panic::catch_unwind(|| target(&input));
                assert!(outcome.is_ok(), "{name} failed on {input:?}");
            }
        }
    }
}
