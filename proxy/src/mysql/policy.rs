//! Statements the proxy refuses before they reach the server, with a clear error: those that
//! would change the accounts it logs in with (which every client of the database shares), and,
//! for read-only tokens, those that take row or named locks (which would block the writers).

use super::errors::MyError;
use super::sql::{Lexeme, lex};
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
}

/// Reads `sql`, including the string literals of `PREPARE … FROM '…'` and `EXECUTE IMMEDIATE
/// '…'`, which the server runs as statements. A statement built in a variable is not seen:
/// the account repair (see control's `access`) is what protects the accounts from those.
/// Runs for every query, so it allocates nothing but the list of such literals.
fn inspect(sql: &[u8], depth: u8) -> Findings {
    let is = |w: &[u8], kw: &str| w.eq_ignore_ascii_case(kw.as_bytes());
    let mut found = Findings::default();
    let mut first: [&[u8]; 3] = [b""; 3];
    let mut count = 0usize;
    let mut previous: &[u8] = b"";
    let mut dynamic = false;
    let mut inner: Vec<&[u8]> = Vec::new();
    lex(sql, |lexeme| match lexeme {
        Lexeme::End => {
            count = 0;
            previous = b"";
            dynamic = false;
        }
        Lexeme::Word(w) => {
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
                if starts(&["PREPARE"]) || starts(&["EXECUTE", "IMMEDIATE"]) {
                    dynamic = true;
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
            previous = w;
        }
        Lexeme::Str(s) if dynamic => inner.push(s),
        Lexeme::Str(_) | Lexeme::Number(_) | Lexeme::Other(_) => {}
    });
    // The literal's escapes are left as written: what matters is its words.
    if depth < 4 {
        for text in inner {
            let more = inspect(text, depth + 1);
            found.account |= more.account;
            found.lock |= more.lock;
            found.shows_account |= more.shows_account;
            found.runs_unseen |= more.runs_unseen;
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
    Ok(found.shows_account || found.runs_unseen)
}

/// The error for a statement being prepared: what [`review`] refuses, and statements whose
/// binary-protocol rows would show an account's definition (the same statement as a plain
/// query works, and is rewritten).
pub fn prepare_refusal(sql: &[u8], role: Role) -> Option<MyError> {
    review(sql, role).err().or_else(|| {
        inspect(sql, 0).shows_account.then(|| {
            MyError::new(
                1295,
                "HY000",
                "This command is not supported in the prepared statement protocol yet; \
                 run it as a plain query",
            )
        })
    })
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
            "PREPARE s FROM @q",
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
        assert!(prepare_refusal(b"SHOW GRANTS", Role::Readwrite).is_some_and(|e| e.code == 1295));
        assert!(prepare_refusal(b"SELECT 1 FOR UPDATE", Role::Readonly).is_some());
        assert!(prepare_refusal(b"SELECT 1", Role::Readonly).is_none());
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
