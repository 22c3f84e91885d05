//! Just enough SQL to decide what the relay must: split a query text into statements and read
//! their first words, skipping strings, quoted identifiers and comments, but reading the inside
//! of MariaDB's executable comments (`/*! ... */`, `/*M! ... */`), which the server runs.

/// A token at the start of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A keyword or identifier, upper-cased.
    Word(String),
    /// An integer literal.
    Number(u64),
    /// Anything else (operators, parentheses, strings, quoted identifiers).
    Other,
}

/// How many leading tokens of each statement are kept.
const KEEP: usize = 8;

/// The leading tokens of every statement in `sql`.
pub fn statements(sql: &[u8]) -> Vec<Vec<Token>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    let push = |out: &mut Vec<Vec<Token>>, t: Token| {
        if let Some(current) = out.last_mut()
            && current.len() < KEEP
        {
            current.push(t);
        }
    };
    while i < sql.len() {
        let c = sql[i];
        match c {
            b';' => {
                out.push(Vec::new());
                i += 1;
            }
            b'-' if sql.get(i + 1) == Some(&b'-')
                && sql.get(i + 2).is_none_or(|b| b.is_ascii_whitespace()) =>
            {
                i = skip_line(sql, i);
            }
            b'#' => i = skip_line(sql, i),
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let body = i + 2;
                let executable = match sql.get(body) {
                    Some(b'!') => Some(body + 1),
                    Some(b'M') if sql.get(body + 1) == Some(&b'!') => Some(body + 2),
                    _ => None,
                };
                match executable {
                    // Read on inside: the version digits, then code, then `*/` is skipped below.
                    Some(start) => {
                        i = start;
                        while i < sql.len() && sql[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                    None => {
                        i = find(sql, body, b"*/").map_or(sql.len(), |end| end + 2);
                    }
                }
            }
            b'*' if sql.get(i + 1) == Some(&b'/') => i += 2,
            b'\'' | b'"' | b'`' => {
                i = skip_quoted(sql, i);
                push(&mut out, Token::Other);
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if c.is_ascii_digit() => {
                let start = i;
                while i < sql.len() && sql[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                let text = std::str::from_utf8(&sql[start..i]).unwrap_or("");
                push(&mut out, text.parse().map_or(Token::Other, Token::Number));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'@' || c == b'$' => {
                let start = i;
                while i < sql.len()
                    && (sql[i].is_ascii_alphanumeric() || matches!(sql[i], b'_' | b'$' | b'@'))
                {
                    i += 1;
                }
                let word = String::from_utf8_lossy(&sql[start..i]).to_ascii_uppercase();
                push(&mut out, Token::Word(word));
            }
            _ => {
                // Non-ASCII identifiers and operators alike: one opaque token.
                i += 1;
                push(&mut out, Token::Other);
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn skip_line(sql: &[u8], i: usize) -> usize {
    find(sql, i, b"\n").map_or(sql.len(), |e| e + 1)
}

fn find(sql: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    sql.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Skips a quoted string or identifier starting at `i`; quotes are escaped by doubling, and
/// backslash escapes apply in strings.
fn skip_quoted(sql: &[u8], i: usize) -> usize {
    let quote = sql[i];
    let mut j = i + 1;
    while j < sql.len() {
        match sql[j] {
            b'\\' if quote != b'`' => j += 2,
            c if c == quote && sql.get(j + 1) == Some(&quote) => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    sql.len()
}

/// What a `KILL` statement targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillTarget {
    /// A connection (thread) id given as a literal.
    Thread(u64),
    /// The statement's own connection (`CONNECTION_ID()`).
    Own,
    /// A user's sessions, a query id, or an expression: nothing the proxy can check.
    Unchecked,
}

/// The target of every `KILL` statement in `sql`.
pub fn kill_targets(sql: &[u8]) -> Vec<KillTarget> {
    statements(sql)
        .into_iter()
        .filter(|s| s.first() == Some(&Token::Word("KILL".into())))
        .map(|s| {
            let mut rest = &s[1..];
            let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x == w);
            if rest.first().is_some_and(|t| word(t, "HARD") || word(t, "SOFT")) {
                rest = &rest[1..];
            }
            if rest.first().is_some_and(|t| word(t, "CONNECTION") || word(t, "QUERY")) {
                rest = &rest[1..];
            }
            match rest {
                [Token::Number(n)] => KillTarget::Thread(*n),
                [Token::Word(f), Token::Other, Token::Other] if f == "CONNECTION_ID" => {
                    KillTarget::Own
                }
                _ => KillTarget::Unchecked,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<Vec<Token>> {
        statements(sql.as_bytes())
    }

    #[test]
    fn statements_are_split_outside_strings_and_comments() {
        let s =
            words("SELECT ';' ; /* ; */ UPDATE t SET a = \"x;\" -- ;\n; # ;\nDELETE FROM `a;b`");
        let firsts: Vec<_> = s.iter().map(|s| s[0].clone()).collect();
        assert_eq!(
            firsts,
            [
                Token::Word("SELECT".into()),
                Token::Word("UPDATE".into()),
                Token::Word("DELETE".into())
            ]
        );
        assert_eq!(words("SELECT 'it''s;' , 'a\\';b'; SELECT 2").len(), 2);
    }

    #[test]
    fn kill_targets_are_read_through_executable_comments() {
        assert_eq!(kill_targets(b"KILL 5"), [KillTarget::Thread(5)]);
        assert_eq!(kill_targets(b"kill hard connection 7"), [KillTarget::Thread(7)]);
        assert_eq!(kill_targets(b"KILL QUERY 9"), [KillTarget::Thread(9)]);
        assert_eq!(kill_targets(b"SELECT 1; /*!50000 KILL 3 */"), [KillTarget::Thread(3)]);
        assert_eq!(kill_targets(b"/*M!100000 KILL */ 4"), [KillTarget::Thread(4)]);
        assert_eq!(kill_targets(b"KILL USER bob"), [KillTarget::Unchecked]);
        assert_eq!(kill_targets(b"KILL QUERY ID 12"), [KillTarget::Unchecked]);
        assert_eq!(kill_targets(b"KILL 1+1"), [KillTarget::Unchecked]);
        assert_eq!(kill_targets(b"KILL CONNECTION_ID()"), [KillTarget::Own]);
        assert!(kill_targets(b"SELECT 'KILL 5'; -- KILL 6\nSELECT `KILL`").is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &b"'unterminated"[..],
            b"/* open",
            b"\\",
            b"--",
            b"\xff\xfe",
            b"/*!",
            b"1e999999999999999999999",
        ] {
            let _ = statements(input);
            let _ = kill_targets(input);
        }
    }
}
