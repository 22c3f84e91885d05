//! Just enough SQL to decide what the proxy must: split a query text into statements, read
//! their first words and the session effects the server does not report, skipping strings,
//! quoted identifiers and comments, but reading the inside of MariaDB's executable comments
//! (`/*! ... */`, `/*M! ... */`), which the server runs.

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

/// One lexical unit of SQL text, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lexeme<'a> {
    /// A keyword, identifier or variable (`@x`, `@@x`), as written.
    Word(&'a [u8]),
    Number(&'a [u8]),
    /// The inside of a quoted string, escapes as written.
    Str(&'a [u8]),
    /// A back-quoted identifier (as `` ` ``), or any other single byte.
    Other(u8),
    /// The `;` between statements.
    End,
}

/// Calls `f` with every lexeme of `sql`, skipping comments but reading the inside of
/// executable ones.
pub fn lex<'a>(sql: &'a [u8], f: impl FnMut(Lexeme<'a>)) {
    lex_as(sql, true, f);
}

/// [`lex`], with backslashes escaping quotes in strings or not. They do not with
/// `sql_mode=NO_BACKSLASH_ESCAPES`, inside `"…"` under `ANSI_QUOTES`, nor where a multi-byte
/// character set (GBK, SJIS, Big5) has a character ending in the byte `\`: a check that
/// must not be fooled reads a text with backslashes both ways.
pub fn lex_as<'a>(sql: &'a [u8], backslash_escapes: bool, mut f: impl FnMut(Lexeme<'a>)) {
    let mut i = 0;
    while i < sql.len() {
        let c = sql[i];
        match c {
            b';' => {
                f(Lexeme::End);
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
            b'\'' | b'"' => {
                let end = skip_quoted(sql, i, backslash_escapes);
                let inner_end = if end > i + 1 && sql[end - 1] == c { end - 1 } else { end };
                f(Lexeme::Str(&sql[i + 1..inner_end.max(i + 1)]));
                i = end;
            }
            b'`' => {
                i = skip_quoted(sql, i, backslash_escapes);
                f(Lexeme::Other(b'`'));
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if c.is_ascii_digit() => {
                let start = i;
                while i < sql.len() && sql[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                f(Lexeme::Number(&sql[start..i]));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'@' || c == b'$' => {
                let start = i;
                while i < sql.len()
                    && (sql[i].is_ascii_alphanumeric() || matches!(sql[i], b'_' | b'$' | b'@'))
                {
                    i += 1;
                }
                f(Lexeme::Word(&sql[start..i]));
            }
            other => {
                // Non-ASCII identifiers and operators alike: one opaque byte.
                i += 1;
                f(Lexeme::Other(other));
            }
        }
    }
}

/// How many leading tokens of each statement are kept.
const KEEP: usize = 8;

/// The leading tokens of every statement in `sql`.
pub fn statements(sql: &[u8]) -> Vec<Vec<Token>> {
    let mut out = vec![Vec::new()];
    lex(sql, |lexeme| {
        let token = match lexeme {
            Lexeme::End => {
                out.push(Vec::new());
                return;
            }
            Lexeme::Word(w) => Token::Word(String::from_utf8_lossy(w).to_ascii_uppercase()),
            Lexeme::Number(n) => std::str::from_utf8(n)
                .ok()
                .and_then(|t| t.parse().ok())
                .map_or(Token::Other, Token::Number),
            Lexeme::Str(_) | Lexeme::Other(_) => Token::Other,
        };
        if let Some(current) = out.last_mut()
            && current.len() < KEEP
        {
            current.push(token);
        }
    });
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
/// backslash escapes apply in strings when `backslash_escapes`.
fn skip_quoted(sql: &[u8], i: usize, backslash_escapes: bool) -> usize {
    let quote = sql[i];
    let mut j = i + 1;
    while j < sql.len() {
        match sql[j] {
            b'\\' if quote != b'`' && backslash_escapes => j += 2,
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

/// What a query does to its session beyond what the server's session tracking reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Traits {
    /// Reads or writes a user variable (`@x`); a `SELECT @x := 1` is not tracked.
    pub user_variables: bool,
    /// Takes advisory locks (`GET_LOCK`): the names, when they are string literals.
    pub lock_names: Vec<String>,
    /// Takes an advisory lock whose name is not a literal.
    pub unnamed_lock: bool,
    /// `RELEASE_LOCK(...)`.
    pub releases_lock: bool,
    /// `RELEASE_ALL_LOCKS()`.
    pub releases_all_locks: bool,
    /// `SQL_CALC_FOUND_ROWS`: the next `FOUND_ROWS()` must run on the same connection.
    pub calc_found_rows: bool,
    /// Reads `LAST_INSERT_ID()` (or `@@identity`).
    pub reads_last_insert_id: bool,
    /// `LAST_INSERT_ID(expr)` sets the session's value.
    pub sets_last_insert_id: bool,
    /// `CONNECTION_ID()`: the client learns which server session it is on.
    pub connection_id: bool,
    /// Temporary tables, SQL prepared statements, HANDLER, XA: objects that live in one server
    /// session.
    pub session_objects: bool,
    /// `SET STATEMENT ... FOR`: the variables it reports as changed are restored afterwards.
    pub set_statement: bool,
    /// Reads the previous statement's warnings or errors (`SHOW WARNINGS`, `GET DIAGNOSTICS`,
    /// `@@warning_count`) and, like the server, leaves them for the next statement.
    pub reads_diagnostics: bool,
    /// `SHOW WARNINGS` or `SHOW ERRORS`: rows of messages, which may name the internal account.
    pub shows_diagnostics: bool,
}

/// Reads `sql` for the session effects in [`Traits`].
pub fn inspect(sql: &[u8]) -> Traits {
    #[derive(PartialEq)]
    enum After {
        Nothing,
        GetLock,
        GetLockParen,
        LastInsertId,
        LastInsertIdParen,
    }
    let mut t = Traits::default();
    let mut after = After::Nothing;
    let mut position = 0usize;
    let mut first: &[u8] = b"";
    lex(sql, |lexeme| {
        let is = |w: &[u8], kw: &str| w.eq_ignore_ascii_case(kw.as_bytes());
        // Finish a pending `GET_LOCK(` or `LAST_INSERT_ID(` with this lexeme.
        match (&after, lexeme) {
            (After::GetLock, Lexeme::Other(b'(')) => {
                after = After::GetLockParen;
                return;
            }
            (After::GetLockParen, Lexeme::Str(name)) => {
                t.lock_names.push(String::from_utf8_lossy(name).into_owned());
            }
            (After::GetLockParen, _) => t.unnamed_lock = true,
            (After::LastInsertId, Lexeme::Other(b'(')) => {
                after = After::LastInsertIdParen;
                return;
            }
            (After::LastInsertIdParen, l) if l != Lexeme::Other(b')') => {
                t.sets_last_insert_id = true;
            }
            _ => {}
        }
        after = After::Nothing;
        if lexeme == Lexeme::End {
            position = 0;
            return;
        }
        position += 1;
        let Lexeme::Word(w) = lexeme else { return };
        if position == 1 {
            first = w;
            if ["PREPARE", "EXECUTE", "DEALLOCATE", "HANDLER", "XA"].iter().any(|k| is(w, k)) {
                t.session_objects = true;
            }
        } else if position == 2 {
            if is(first, "SET") && is(w, "STATEMENT") {
                t.set_statement = true;
            }
            if is(first, "DROP") && is(w, "PREPARE") {
                t.session_objects = true;
            }
            let diagnostics: &[&str] = if is(first, "SHOW") {
                &["WARNINGS", "ERRORS", "COUNT"]
            } else if is(first, "GET") {
                &["DIAGNOSTICS", "CURRENT", "STACKED"]
            } else {
                &[]
            };
            if diagnostics.iter().any(|k| is(w, k)) {
                t.reads_diagnostics = true;
                t.shows_diagnostics = is(first, "SHOW") && !is(w, "COUNT");
            }
        }
        if w[0] == b'@' {
            if w.get(1) != Some(&b'@') {
                t.user_variables = true;
            } else if is(w, "@@IDENTITY") || is(w, "@@LAST_INSERT_ID") {
                t.reads_last_insert_id = true;
            } else if is(w, "@@WARNING_COUNT") || is(w, "@@ERROR_COUNT") {
                t.reads_diagnostics = true;
            }
        } else if is(w, "GET_LOCK") {
            after = After::GetLock;
        } else if is(w, "LAST_INSERT_ID") {
            t.reads_last_insert_id = true;
            after = After::LastInsertId;
        } else if is(w, "RELEASE_LOCK") {
            t.releases_lock = true;
        } else if is(w, "RELEASE_ALL_LOCKS") {
            t.releases_all_locks = true;
        } else if is(w, "SQL_CALC_FOUND_ROWS") {
            t.calc_found_rows = true;
        } else if is(w, "CONNECTION_ID") {
            t.connection_id = true;
        } else if is(w, "TEMPORARY") {
            t.session_objects = true;
        }
    });
    if after == After::GetLockParen {
        t.unnamed_lock = true;
    }
    t
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
    fn session_effects_are_found_outside_strings_and_comments() {
        let t = inspect(b"SELECT @a := 1, @@version, '@b' -- @c\n");
        assert!(t.user_variables);
        assert!(!inspect(b"SELECT @@session.sql_mode, '@x', `@y`").user_variables);
        assert!(inspect(b"SET @`quoted` = 1").user_variables);
        let t = inspect(b"SELECT GET_LOCK('jobs', 0), get_lock(\"two\", 1)");
        assert_eq!(t.lock_names, ["jobs", "two"]);
        assert!(!t.unnamed_lock);
        assert!(inspect(b"SELECT GET_LOCK(CONCAT('a', id), 0) FROM t").unnamed_lock);
        assert!(inspect(b"SELECT GET_LOCK(?, 0)").unnamed_lock);
        assert!(inspect(b"DO RELEASE_LOCK('jobs')").releases_lock);
        assert!(inspect(b"SELECT RELEASE_ALL_LOCKS()").releases_all_locks);
        assert!(inspect(b"SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1").calc_found_rows);
        for sql in ["SHOW WARNINGS", "show count(*) errors", "GET DIAGNOSTICS @n = NUMBER"] {
            assert!(inspect(sql.as_bytes()).reads_diagnostics, "{sql}");
        }
        assert!(inspect(b"SELECT @@warning_count, @@error_count").reads_diagnostics);
        assert!(!inspect(b"SHOW TABLES").reads_diagnostics);
        assert!(inspect(b"show errors limit 1").shows_diagnostics);
        assert!(!inspect(b"SHOW COUNT(*) WARNINGS").shows_diagnostics);
        assert!(!inspect(b"GET DIAGNOSTICS @n = NUMBER").shows_diagnostics);
        let t = inspect(b"SELECT LAST_INSERT_ID()");
        assert!(t.reads_last_insert_id && !t.sets_last_insert_id);
        assert!(inspect(b"UPDATE seq SET id = LAST_INSERT_ID(id + 1)").sets_last_insert_id);
        assert!(inspect(b"SELECT @@IDENTITY").reads_last_insert_id);
        assert!(inspect(b"select connection_id()").connection_id);
        for sql in [
            &b"CREATE TEMPORARY TABLE t (a INT)"[..],
            b"PREPARE s FROM 'SELECT 1'",
            b"execute s",
            b"DROP PREPARE s",
            b"HANDLER t OPEN",
            b"XA START 'x'",
            b"SELECT 1; /*!40101 CREATE TEMPORARY TABLE t (a INT) */",
        ] {
            assert!(inspect(sql).session_objects, "{}", String::from_utf8_lossy(sql));
        }
        assert!(inspect(b"SET STATEMENT max_statement_time=1 FOR SELECT 1").set_statement);
        assert_eq!(inspect(b"SELECT c FROM sbtest1 WHERE id = 5"), Traits::default());
        assert_eq!(inspect(b"INSERT INTO t VALUES ('GET_LOCK(', '@x')"), Traits::default());
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
            let _ = inspect(input);
        }
    }
}
