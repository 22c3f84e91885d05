//! Statements the proxy refuses before they reach the server, with a clear error: those that
//! would change the accounts it logs in with (which every client of the database shares), and,
//! for read-only tokens, those that take row or named locks (which would block the writers).

use super::errors::MyError;
use super::sql::{Lexeme, lex_as};
use crate::claims::Role;

/// Statements about accounts. The server itself refuses all but `SET PASSWORD` (any account
/// may change its own password), but a clear word from Dormouse beats a privilege error, and
/// `SET PASSWORD` on the shared internal account would lock every other client out.
const ACCOUNT_STATEMENTS: &[&[&str]] = &[
    &["SET", "PASSWORD"],
    &["ALTER", "USER"],
    &["CREATE", "USER"],
    &["DROP", "USER"],
    &["RENAME", "USER"],
    &["CREATE", "ROLE"],
    &["DROP", "ROLE"],
    &["SET", "DEFAULT", "ROLE"],
    &["GRANT"],
    &["REVOKE"],
];

/// What a statement text does that the policy cares about.
#[derive(Debug, Default, PartialEq, Eq)]
struct Findings {
    /// A statement that changes accounts or privileges.
    account: bool,
    /// `FOR UPDATE`, `LOCK IN SHARE MODE`, `GET_LOCK(`, `LOCK TABLE(S)`.
    lock: bool,
    /// Shows an account's definition: `SHOW GRANTS`, `SHOW CREATE USER`.
    shows_account: bool,
    /// Runs statements the proxy cannot see here (`EXECUTE`, `CALL`).
    runs_unseen: bool,
    /// `PREPARE`/`EXECUTE IMMEDIATE` of a text that is not one string literal (a variable,
    /// `CONCAT(…)`): the statement it runs is not seen.
    dynamic_unseen: bool,
}

impl Findings {
    fn merge(&mut self, other: Findings) {
        self.account |= other.account;
        self.lock |= other.lock;
        self.shows_account |= other.shows_account;
        self.runs_unseen |= other.runs_unseen;
        self.dynamic_unseen |= other.dynamic_unseen;
    }
}

/// Words after which a new statement may start inside one: `SET STATEMENT … FOR <stmt>`, and
/// the bodies of compound statements (`BEGIN NOT ATOMIC … END`, `IF … THEN … ELSE`, loops).
/// All are reserved words, so none is a column name, and no account statement can follow
/// one inside an expression: reading a statement start after them finds no false refusal.
const STARTS_AFTER: &[&str] = &["FOR", "ATOMIC", "BEGIN", "THEN", "ELSE", "DO", "LOOP", "REPEAT"];

/// Where a `PREPARE`/`EXECUTE IMMEDIATE` is in reading its source text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dynamic {
    No,
    /// Before `FROM` (PREPARE) or right after `IMMEDIATE`.
    BeforeSource,
    /// The next lexeme is the source.
    Source,
    /// The source was one literal: only `USING …` or the end may follow.
    AfterLiteral,
}

/// Reads `sql`, including the string literals of `PREPARE … FROM '…'` and `EXECUTE IMMEDIATE
/// '…'`, which the server runs as statements. A text with a backslash is read both with and
/// without backslash escapes (see [`lex_as`]), so no session mode hides a statement in what
/// the proxy takes for a string. A statement built in a variable is not seen: the account
/// repair (see control's `access`) protects the accounts from those, and read-only tokens may
/// not run them.
fn inspect(sql: &[u8], depth: u8) -> Findings {
    let mut found = inspect_as(sql, depth, true);
    if sql.contains(&b'\\') {
        found.merge(inspect_as(sql, depth, false));
    }
    found
}

fn inspect_as(sql: &[u8], depth: u8, backslash_escapes: bool) -> Findings {
    let is = |w: &[u8], kw: &str| w.eq_ignore_ascii_case(kw.as_bytes());
    let mut found = Findings::default();
    let mut first: [&[u8]; 3] = [b""; 3];
    let mut count = 0usize;
    let mut previous: &[u8] = b"";
    let mut dynamic = Dynamic::No;
    let mut inner: Vec<&[u8]> = Vec::new();
    lex_as(sql, backslash_escapes, |lexeme| {
        match (dynamic, lexeme) {
            (Dynamic::Source, Lexeme::Str(s)) => {
                inner.push(s);
                dynamic = Dynamic::AfterLiteral;
                return;
            }
            (Dynamic::Source, Lexeme::End) | (Dynamic::AfterLiteral, Lexeme::End) => {}
            (Dynamic::Source, _) => {
                found.dynamic_unseen = true;
                dynamic = Dynamic::No;
            }
            (Dynamic::AfterLiteral, Lexeme::Word(w)) if is(w, "USING") => dynamic = Dynamic::No,
            (Dynamic::AfterLiteral, _) => {
                found.dynamic_unseen = true;
                dynamic = Dynamic::No;
            }
            _ => {}
        }
        match lexeme {
            Lexeme::End => {
                if dynamic == Dynamic::Source {
                    found.dynamic_unseen = true;
                }
                count = 0;
                previous = b"";
                dynamic = Dynamic::No;
            }
            Lexeme::Word(w) => {
                if dynamic == Dynamic::BeforeSource && is(w, "FROM") {
                    dynamic = Dynamic::Source;
                }
                if count < first.len() {
                    first[count] = w;
                    count += 1;
                    let head = &first[..count];
                    let starts = |kws: &[&str]| {
                        kws.len() == head.len() && kws.iter().zip(head).all(|(k, w)| is(w, k))
                    };
                    if ACCOUNT_STATEMENTS.iter().any(|s| starts(s)) {
                        found.account = true;
                    }
                    if starts(&["PREPARE"]) {
                        dynamic = Dynamic::BeforeSource;
                    } else if starts(&["EXECUTE", "IMMEDIATE"]) {
                        dynamic = Dynamic::Source;
                    } else if starts(&["EXECUTE"]) || starts(&["CALL"]) {
                        found.runs_unseen = true;
                    } else if starts(&["SHOW", "GRANTS"]) || starts(&["SHOW", "CREATE", "USER"]) {
                        found.shows_account = true;
                    } else if starts(&["LOCK", "TABLE"]) || starts(&["LOCK", "TABLES"]) {
                        found.lock = true;
                    }
                }
                if (is(previous, "FOR") && is(w, "UPDATE"))
                    || (is(previous, "IN") && is(w, "SHARE"))
                    || is(w, "GET_LOCK")
                {
                    found.lock = true;
                }
                if STARTS_AFTER.iter().any(|k| is(w, k)) {
                    count = 0;
                }
                previous = w;
            }
            Lexeme::Str(_) | Lexeme::Number(_) | Lexeme::Other(_) => {}
        }
    });
    if dynamic == Dynamic::Source {
        found.dynamic_unseen = true;
    }
    // The literal's escapes are left as written: what matters is its words.
    if depth < 4 {
        for text in inner {
            found.merge(inspect(text, depth + 1));
        }
    }
    found
}

/// 1227: the server's "Access denied; you need … privilege" for a statement that is not
/// allowed, with Dormouse's reason.
fn denied(why: &str) -> MyError {
    MyError::new(1227, "42000", format!("Access denied; {why}"))
}

/// Reviews a query `role` is about to run: the error to answer instead, or whether the rows
/// it returns may show an account's definition, password hash included (`SHOW GRANTS`, or
/// statements run by `EXECUTE` or a procedure), and must be rewritten.
pub fn review(sql: &[u8], role: Role) -> Result<bool, MyError> {
    let found = inspect(sql, 0);
    verdict(&found, role)?;
    Ok(found.shows_account || found.runs_unseen)
}

fn verdict(found: &Findings, role: Role) -> Result<(), MyError> {
    if found.account {
        return Err(denied(
            "Dormouse manages this database's accounts: give access with tokens \
             (`dormouse token create`) instead",
        ));
    }
    if found.lock && role == Role::Readonly {
        return Err(denied(
            "a read-only token cannot take locks (FOR UPDATE, LOCK IN SHARE MODE, GET_LOCK, \
             LOCK TABLES), which would hold up the database's writers",
        ));
    }
    if found.dynamic_unseen && role == Role::Readonly {
        return Err(denied(
            "a read-only token can prepare a statement only from a string literal, \
             which Dormouse reads before it runs",
        ));
    }
    Ok(())
}

/// Reviews a statement being prepared, as [`review`] does a query; besides, statements whose
/// binary rows would show an account's definition are refused (the same statement as a plain
/// query works, and is rewritten). `Ok(true)` when its rows must still be scrubbed (`CALL`).
pub fn review_prepare(sql: &[u8], role: Role) -> Result<bool, MyError> {
    let found = inspect(sql, 0);
    verdict(&found, role)?;
    if found.shows_account {
        return Err(MyError::new(
            1295,
            "HY000",
            "This command is not supported in the prepared statement protocol yet; \
             run it as a plain query",
        ));
    }
    Ok(found.runs_unseen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str, role: Role) -> bool {
        review(sql.as_bytes(), role).is_err()
    }

    fn may_show_accounts(sql: &[u8]) -> bool {
        review(sql, Role::Readwrite).unwrap_or(false)
    }

    #[test]
    fn account_changes_are_refused_for_every_role() {
        for sql in [
            "SET PASSWORD = PASSWORD('x')",
            "set password for current_user() = 'x'",
            "ALTER USER dormouse@localhost IDENTIFIED BY 'x'",
            "SELECT 1; /*!50000 SET PASSWORD = 'x' */",
            "PREPARE s FROM 'SET PASSWORD = PASSWORD(\"x\")'",
            "EXECUTE IMMEDIATE 'ALTER USER CURRENT_USER() ACCOUNT LOCK'",
            "GRANT ALL ON *.* TO x",
            "REVOKE SELECT ON t FROM x",
            "CREATE USER evil",
            "RENAME USER a TO b",
        ] {
            assert!(refused(sql, Role::Readwrite), "{sql}");
            assert!(refused(sql, Role::Readonly), "{sql}");
            assert!(review(sql.as_bytes(), Role::Admin).is_err_and(|e| e.code == 1227));
        }
        for sql in [
            "SELECT 'SET PASSWORD'",
            "SELECT password FROM users",
            "UPDATE users SET password = 'x'",
            "SET @password = 1",
            "CREATE TABLE grants (a INT)",
            "SELECT * FROM `set` -- SET PASSWORD\n",
        ] {
            assert!(!refused(sql, Role::Readwrite), "{sql}");
        }
    }

    #[test]
    fn read_only_tokens_take_no_locks() {
        for sql in [
            "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            "select * from t lock in share mode",
            "SELECT GET_LOCK('jobs', 10)",
            "DO get_lock('x', 1)",
            "LOCK TABLES t READ",
            "PREPARE s FROM 'SELECT * FROM t FOR UPDATE'",
        ] {
            assert!(refused(sql, Role::Readonly), "{sql}");
            assert!(!refused(sql, Role::Readwrite), "{sql}");
        }
        for sql in ["SELECT 'FOR UPDATE'", "SELECT * FROM `for` WHERE `update` = 1", "SELECT 1"] {
            assert!(!refused(sql, Role::Readonly), "{sql}");
        }
    }

    #[test]
    fn statements_that_may_show_accounts_are_found() {
        for sql in ["SHOW GRANTS", "show grants for current_user", "SHOW CREATE USER x", "CALL p()"]
        {
            assert!(may_show_accounts(sql.as_bytes()), "{sql}");
        }
        assert!(may_show_accounts(b"EXECUTE s"));
        assert!(!may_show_accounts(b"SELECT * FROM t"));
        assert!(!may_show_accounts(b"SHOW TABLES"));
        assert!(review_prepare(b"SHOW GRANTS", Role::Readwrite).is_err_and(|e| e.code == 1295));
        assert!(review_prepare(b"SELECT 1 FOR UPDATE", Role::Readonly).is_err());
        assert_eq!(review_prepare(b"SELECT 1", Role::Readonly), Ok(false));
        assert_eq!(review_prepare(b"CALL p()", Role::Readonly), Ok(true));
    }

    #[test]
    fn statements_inside_others_are_read_too() {
        for sql in [
            "SET STATEMENT max_statement_time=0 FOR SET PASSWORD = PASSWORD('x')",
            "BEGIN NOT ATOMIC SET PASSWORD = PASSWORD('x'); END",
            "IF 1 THEN ALTER USER CURRENT_USER() IDENTIFIED BY 'x'; END IF",
            "lbl: LOOP SET PASSWORD = 'x'; END LOOP",
        ] {
            assert!(refused(sql, Role::Readwrite), "{sql}");
        }
        for sql in [
            "SET STATEMENT max_statement_time=0 FOR SHOW GRANTS",
            "BEGIN NOT ATOMIC SHOW GRANTS; END",
            "IF 1 THEN SHOW GRANTS; END IF",
        ] {
            assert!(may_show_accounts(sql.as_bytes()), "{sql}");
        }
        let expression = "SELECT CASE WHEN a THEN password ELSE grants END FROM t FOR UPDATE";
        assert!(!refused(expression, Role::Readwrite));
    }

    #[test]
    fn a_backslash_cannot_hide_a_statement_in_a_string() {
        // With NO_BACKSLASH_ESCAPES (or a GBK/SJIS character ending in 0x5C) the server reads
        // the string as `'\'` and runs what follows.
        for sql in [r"SELECT '\'; SET PASSWORD = 'x'; #'", r#"SELECT "\"; SHOW GRANTS; #""#] {
            let refused_or_rewritten = review(sql.as_bytes(), Role::Readwrite) != Ok(false);
            assert!(refused_or_rewritten, "{sql}");
        }
        assert_eq!(review(br"SELECT 'it\'s'", Role::Readonly), Ok(false));
    }

    #[test]
    fn read_only_tokens_prepare_only_from_literals() {
        for sql in [
            "PREPARE s FROM @q",
            "EXECUTE IMMEDIATE CONCAT('SELECT GET_', 'LOCK(''x'', 99)')",
            "EXECUTE IMMEDIATE @q",
            "PREPARE s FROM 'SELECT 1' 'FOR UPDATE'",
        ] {
            assert!(refused(sql, Role::Readonly), "{sql}");
            assert!(!refused(sql, Role::Readwrite), "{sql}");
        }
        for sql in ["PREPARE s FROM 'SELECT ?'", "EXECUTE IMMEDIATE 'SELECT ?' USING 1"] {
            assert!(!refused(sql, Role::Readonly), "{sql}");
        }
    }

    #[test]
    fn deep_nesting_stops() {
        let mut sql = "SELECT 1".to_owned();
        for _ in 0..20 {
            sql = format!("PREPARE s FROM '{}'", sql.replace('\'', "''"));
        }
        let _ = review(sql.as_bytes(), Role::Readonly);
    }
}
