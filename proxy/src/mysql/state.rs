//! What a client's MySQL session holds while it shares backend connections: its default
//! schema, session variables and last insert id (replayed on whichever connection it borrows),
//! and the reasons it must keep the connection it is on (pins). Changes come from the server's
//! session tracking and from reading the statement text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::errors::MyError;
use super::ok::StateChanges;
use super::response::SERVER_STATUS_IN_TRANS;
use super::sql::Traits;

/// Why a client keeps its backend connection between statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    /// An open transaction (`SERVER_STATUS_IN_TRANS`).
    Transaction,
    /// `LOCK TABLES` in force.
    LockedTables,
    /// `SET TRANSACTION ...` waiting for the next transaction.
    TransactionCharacteristics,
    /// Temporary tables, SQL prepared statements, HANDLER, XA, or any change the server
    /// reported without saying what it was.
    SessionObjects,
    UserVariables,
    /// Advisory locks (`GET_LOCK`) held.
    AdvisoryLocks,
    /// The client asked which server session it is on (`CONNECTION_ID()`).
    ConnectionId,
    /// A variable that cannot be replayed (`timestamp`, `insert_id`, session tracking, ...).
    Variable,
    /// The default schema was dropped; no other connection can be put in that state.
    NoSchema,
    /// `SQL_CALC_FOUND_ROWS`: until the next statement (`FOUND_ROWS()`).
    FoundRows,
    /// Warnings or an error: until the next statement (`SHOW WARNINGS`).
    Diagnostics,
    /// An open cursor (`COM_STMT_FETCH` follows).
    Cursor,
    /// Parameter data sent ahead of `COM_STMT_EXECUTE`.
    LongData,
}

impl PinReason {
    pub const ALL: [PinReason; 13] = [
        PinReason::Transaction,
        PinReason::LockedTables,
        PinReason::TransactionCharacteristics,
        PinReason::SessionObjects,
        PinReason::UserVariables,
        PinReason::AdvisoryLocks,
        PinReason::ConnectionId,
        PinReason::Variable,
        PinReason::NoSchema,
        PinReason::FoundRows,
        PinReason::Diagnostics,
        PinReason::Cursor,
        PinReason::LongData,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PinReason::Transaction => "transaction",
            PinReason::LockedTables => "locked_tables",
            PinReason::TransactionCharacteristics => "transaction_characteristics",
            PinReason::SessionObjects => "session_objects",
            PinReason::UserVariables => "user_variables",
            PinReason::AdvisoryLocks => "advisory_locks",
            PinReason::ConnectionId => "connection_id",
            PinReason::Variable => "variable",
            PinReason::NoSchema => "no_schema",
            PinReason::FoundRows => "found_rows",
            PinReason::Diagnostics => "diagnostics",
            PinReason::Cursor => "cursor",
            PinReason::LongData => "long_data",
        }
    }

    /// Whether the state stays on the server session when the client leaves, so the
    /// connection must be reset before anyone else uses it.
    pub fn leaves_state(self) -> bool {
        !self.gives_way()
    }

    /// Whether the pin only keeps something readable (warnings, `FOUND_ROWS()`), so a client
    /// that would otherwise wait for a connection may take it. The taker never sees them (the
    /// proxy clears warnings first); the reader then finds them gone, as in a new session.
    pub fn gives_way(self) -> bool {
        matches!(self, PinReason::FoundRows | PinReason::Diagnostics)
    }
}

/// The replayable part of a session: the same shape for a client and a backend connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionVars {
    pub schema: String,
    /// System variables changed since the session started, as the server reported them.
    pub variables: BTreeMap<String, String>,
    /// What `LAST_INSERT_ID()` returns.
    pub last_insert_id: u64,
}

impl SessionVars {
    pub fn new(schema: &str) -> Self {
        Self { schema: schema.to_owned(), ..Self::default() }
    }
}

/// Variables whose value the server reports but which must not be replayed: they mean
/// something only on their own session (a fixed `timestamp`, the next `insert_id`), or they
/// change what the server reports.
fn replayable(name: &str) -> bool {
    const NOT: [&str; 14] = [
        "timestamp",
        "insert_id",
        "last_insert_id",
        "identity",
        "rand_seed1",
        "rand_seed2",
        "pseudo_thread_id",
        "pseudo_slave_mode",
        "gtid_seq_no",
        "gtid_domain_id",
        "server_id",
        "sql_log_bin",
        "skip_replication",
        "warning_count",
    ];
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("session_track")
        && !NOT.contains(&name)
}

/// Read-only variables the server sets itself and reports as they change: `last_gtid`, the
/// GTID of the session's last write, reported after every write since the binary log is on.
/// Nothing to replay and no reason to pin (every write would); a client that reads it after
/// its session moved sees the connection's value.
fn server_maintained(name: &str) -> bool {
    name == "last_gtid"
}

/// Variables a reset restores to the values of the login handshake, where `DEFAULT` would
/// give the server's global value instead.
fn set_by_handshake(name: &str) -> bool {
    name.starts_with("character_set_") || name == "collation_connection"
}

/// A value as SQL: numbers bare, `NULL` for an unset character set, other text quoted (as a
/// hex literal when it holds quotes or backslashes, which escape differently under
/// `NO_BACKSLASH_ESCAPES`).
fn sql_value(name: &str, value: &str) -> String {
    let numeric = {
        let digits = value.strip_prefix('-').unwrap_or(value);
        let mut parts = digits.splitn(2, '.');
        let whole = parts.next().unwrap_or("");
        let fraction = parts.next();
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
    };
    if numeric {
        value.to_owned()
    } else if value.is_empty() && name.starts_with("character_set_") {
        "NULL".to_owned()
    } else {
        sql_string(value)
    }
}

/// A string literal, as a hex literal when it holds quotes or backslashes.
fn sql_string(value: &str) -> String {
    if value.contains(['\'', '\\']) {
        let mut hex = String::with_capacity(3 + 2 * value.len());
        hex.push_str("X'");
        for b in value.bytes() {
            let _ = write!(hex, "{b:02X}");
        }
        hex.push('\'');
        hex
    } else {
        format!("'{value}'")
    }
}

/// What to do to a borrowed connection so it holds the client's session.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// COM_RESET_CONNECTION then COM_INIT_DB of the database first: the connection has
    /// character-set variables the client does not.
    pub reset: bool,
    /// COM_INIT_DB to this schema.
    pub schema: Option<String>,
    /// One `SET` statement for the variables (and last insert id) that differ.
    pub set: Option<String>,
    /// The `SET` includes the last insert id.
    pub insert_id: bool,
    /// Clear the warnings or error the last client left (see [`CLEAR_DIAGNOSTICS`]).
    pub clear_diagnostics: bool,
}

impl SyncPlan {
    pub fn is_empty(&self) -> bool {
        !self.reset && self.schema.is_none() && self.set.is_none() && !self.clear_diagnostics
    }
}

/// A statement that returns nothing and, since it reads a (derived) table, empties the
/// server's diagnostics area.
pub const CLEAR_DIAGNOSTICS: &str = "DO (SELECT 1 FROM (SELECT 1) AS t)";

/// The plan that turns `conn` into `client`. `home` is the schema a reset leaves;
/// `insert_id` says whether the statement reads `LAST_INSERT_ID()`.
pub fn plan(conn: &SessionVars, client: &SessionVars, home: &str, insert_id: bool) -> SyncPlan {
    let reset = conn
        .variables
        .iter()
        .any(|(k, v)| set_by_handshake(k) && client.variables.get(k) != Some(v));
    let baseline;
    let from = if reset {
        baseline = SessionVars::new(home);
        &baseline
    } else {
        conn
    };
    let mut set = String::new();
    let mut assign = |name: &str, value: &str| {
        set.push_str(if set.is_empty() { "SET " } else { ", " });
        let _ = write!(set, "@@SESSION.{name} = {value}");
    };
    for (name, value) in &client.variables {
        if from.variables.get(name) != Some(value) {
            assign(name, &sql_value(name, value));
        }
    }
    for name in from.variables.keys() {
        if !client.variables.contains_key(name) {
            assign(name, "DEFAULT");
        }
    }
    let insert_id = insert_id && from.last_insert_id != client.last_insert_id;
    if insert_id {
        assign("last_insert_id", &client.last_insert_id.to_string());
    }
    SyncPlan {
        reset,
        schema: (from.schema != client.schema).then(|| client.schema.clone()),
        set: (!set.is_empty()).then_some(set),
        insert_id,
        clear_diagnostics: false,
    }
}

/// The result of one command, as far as session state goes.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Status flags of the last OK or EOF.
    pub status: Option<u16>,
    /// Warnings of the last OK or EOF.
    pub warnings: u16,
    /// The command failed (ERR).
    pub error: bool,
    /// Session-state items, one entry per OK that carried any.
    pub changes: Vec<StateChanges>,
    /// The last non-zero insert id reported.
    pub insert_id: Option<u64>,
}

/// A client session's state beyond its [`SessionVars`].
#[derive(Debug, Default)]
pub struct ClientState {
    pub vars: SessionVars,
    /// A pin that lasts until COM_RESET_CONNECTION or the end of the session.
    sticky: Option<PinReason>,
    /// Advisory locks that may be held, by name.
    locks: BTreeSet<String>,
    in_transaction: bool,
    locked_tables: bool,
    characteristics: bool,
    /// A pin for the next command only.
    next: Option<PinReason>,
    /// The command running had the diagnostics pin: the previous one left warnings or errors.
    had_diagnostics: bool,
    /// Client statements with a cursor open, and the backend statement that holds it.
    pub cursors: BTreeMap<u32, u32>,
    /// Client statements with parameter data sent, and the backend statement that holds it.
    pub long_data: BTreeMap<u32, u32>,
    /// Client statements whose parameter data could not be sent: their execute fails so.
    pub lost_long_data: BTreeMap<u32, MyError>,
}

impl ClientState {
    pub fn new(schema: &str) -> Self {
        Self { vars: SessionVars::new(schema), ..Self::default() }
    }

    /// Why the client must keep its connection now, if it must.
    pub fn pin(&self) -> Option<PinReason> {
        if self.in_transaction {
            Some(PinReason::Transaction)
        } else if self.locked_tables {
            Some(PinReason::LockedTables)
        } else if self.characteristics {
            Some(PinReason::TransactionCharacteristics)
        } else if let Some(reason) = self.sticky {
            Some(reason)
        } else if !self.locks.is_empty() {
            Some(PinReason::AdvisoryLocks)
        } else if !self.cursors.is_empty() {
            Some(PinReason::Cursor)
        } else if !self.long_data.is_empty() {
            Some(PinReason::LongData)
        } else {
            self.next
        }
    }

    /// Whether the server session holds state the proxy cannot replay, so its connection
    /// must be reset before it serves anyone else.
    pub fn leaves_state(&self) -> bool {
        self.pin().is_some_and(PinReason::leaves_state)
    }

    /// Consumes a pin meant for one more command.
    pub fn start_command(&mut self) {
        self.had_diagnostics = self.next.take() == Some(PinReason::Diagnostics);
    }

    /// Whether the proxy must ask the server if it still holds the client's diagnostics: the
    /// command that just ran had the diagnostics pin and raised nothing new, yet a statement
    /// that uses no table (`SELECT 1`, `COMMIT`, `SET`, a cursor fetch) leaves them. When
    /// another pin keeps the connection anyway, the pin stays without asking: the question is
    /// a statement of its own, which would change `ROW_COUNT()` and `FOUND_ROWS()`.
    pub fn must_ask_diagnostics(&mut self) -> bool {
        if !self.had_diagnostics || self.next.is_some() {
            return false;
        }
        if self.pin().is_some() {
            self.keep_diagnostics();
            return false;
        }
        true
    }

    /// The server still holds diagnostics: they stay readable on this connection.
    pub fn keep_diagnostics(&mut self) {
        self.next = Some(PinReason::Diagnostics);
    }

    /// COM_RESET_CONNECTION: the server forgets everything but the schema.
    pub fn reset(&mut self) {
        *self = Self::new(&self.vars.schema);
    }

    /// The status flags a local reply reports.
    pub fn status(&self) -> u16 {
        let autocommit = self.vars.variables.get("autocommit").is_none_or(|v| v != "OFF");
        let mut status = if autocommit { 0x0002 } else { 0 };
        if self.in_transaction {
            status |= SERVER_STATUS_IN_TRANS;
        }
        status
    }

    fn stick(&mut self, reason: PinReason, started: &mut Vec<PinReason>) {
        if self.sticky.is_none() {
            self.sticky = Some(reason);
            started.push(reason);
        }
    }

    /// Takes in what a command did, from its text (`traits`, for statements) and its result,
    /// on the client and on the connection `conn` it ran on. Returns the pins it started.
    pub fn apply(
        &mut self,
        traits: Option<&Traits>,
        outcome: &Outcome,
        conn: &mut SessionVars,
    ) -> Vec<PinReason> {
        let before = self.pin();
        let mut started = Vec::new();
        let ephemeral = traits.is_some_and(|t| t.set_statement);
        for changes in &outcome.changes {
            if !ephemeral {
                for (name, value) in &changes.variables {
                    if server_maintained(name) {
                        continue;
                    }
                    if replayable(name) {
                        self.vars.variables.insert(name.clone(), value.clone());
                        conn.variables.insert(name.clone(), value.clone());
                    } else {
                        self.stick(PinReason::Variable, &mut started);
                    }
                }
            }
            if let Some(schema) = &changes.schema {
                if schema.is_empty() {
                    self.stick(PinReason::NoSchema, &mut started);
                } else {
                    self.vars.schema.clone_from(schema);
                    conn.schema.clone_from(schema);
                }
            }
            if let Some(state) = &changes.transaction_state {
                self.locked_tables = state.ends_with('L');
            }
            if let Some(characteristics) = &changes.characteristics {
                self.characteristics = !characteristics.is_empty();
            }
            // A change the server did not describe: user variables, temporary tables, SQL
            // prepared statements. Only a reset undoes those.
            if changes.state_changed && changes.variables.is_empty() && changes.schema.is_none() {
                self.stick(PinReason::SessionObjects, &mut started);
            }
        }
        if let Some(status) = outcome.status {
            self.in_transaction = status & SERVER_STATUS_IN_TRANS != 0;
        }
        if let Some(id) = outcome.insert_id {
            self.vars.last_insert_id = id;
            conn.last_insert_id = id;
        }
        if let Some(t) = traits {
            if t.user_variables {
                self.stick(PinReason::UserVariables, &mut started);
            }
            if t.connection_id {
                self.stick(PinReason::ConnectionId, &mut started);
            }
            if t.session_objects {
                self.stick(PinReason::SessionObjects, &mut started);
            }
            if t.sets_last_insert_id {
                self.stick(PinReason::Variable, &mut started);
            }
            if t.unnamed_lock {
                self.stick(PinReason::AdvisoryLocks, &mut started);
            }
            if t.releases_all_locks {
                self.locks.clear();
            }
            self.locks.extend(t.lock_names.iter().cloned());
        }
        // Any command's warnings or error stay readable with SHOW WARNINGS, statement or not.
        if traits.is_some_and(|t| t.calc_found_rows) {
            self.next = Some(PinReason::FoundRows);
        } else if outcome.warnings > 0
            || outcome.error
            || (traits.is_some_and(|t| t.reads_diagnostics) && self.had_diagnostics)
        {
            self.next = Some(PinReason::Diagnostics);
        }
        if let Some(now) = self.pin()
            && before != Some(now)
            && !started.contains(&now)
        {
            started.push(now);
        }
        started
    }

    /// Names of the advisory locks the client may hold, to ask the server about after a
    /// `RELEASE_LOCK`; `None` when one has no known name.
    pub fn lock_names(&self) -> Option<&BTreeSet<String>> {
        (self.sticky != Some(PinReason::AdvisoryLocks) && !self.locks.is_empty())
            .then_some(&self.locks)
    }

    /// The server said no advisory lock is held any more.
    pub fn locks_released(&mut self) {
        self.locks.clear();
    }

    /// Records the connection collation the server reported on request, on the client and
    /// on the connection `conn` it is in effect on.
    pub fn collation_is(&mut self, collation: String, conn: &mut SessionVars) {
        conn.variables.insert(COLLATION.to_owned(), collation.clone());
        self.vars.variables.insert(COLLATION.to_owned(), collation);
    }
}

const COLLATION: &str = "collation_connection";

/// Whether a command changed the connection's character set without MariaDB saying what its
/// collation became: its tracker reports `SET NAMES cs COLLATE c` as the three `character_set_*`
/// variables only, and replaying those alone would give the character set's default collation.
pub fn collation_unreported(traits: Option<&Traits>, outcome: &Outcome) -> bool {
    let reported =
        |name: &str| outcome.changes.iter().any(|c| c.variables.iter().any(|v| v.0 == name));
    !traits.is_some_and(|t| t.set_statement)
        && reported("character_set_connection")
        && !reported(COLLATION)
}

/// The query that reads the collation [`collation_unreported`] asks about.
pub const COLLATION_QUERY: &str = "SELECT @@SESSION.collation_connection";

/// How many warnings and errors the server holds for the session; uses no table, so it
/// clears none of them.
pub const DIAGNOSTICS_QUERY: &str = "SELECT @@warning_count";

/// The query that says whether this session still holds any of the advisory locks `names`:
/// one row, `1` if it does.
pub fn locks_query(names: &BTreeSet<String>) -> String {
    let mut sql = String::from("SELECT CONNECTION_ID() IN (");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "IS_USED_LOCK({})", sql_string(name));
    }
    sql.push(')');
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(schema: &str, pairs: &[(&str, &str)]) -> SessionVars {
        SessionVars {
            schema: schema.into(),
            variables: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            last_insert_id: 0,
        }
    }

    #[test]
    fn a_fresh_connection_gets_the_clients_variables_and_schema() {
        let client = vars("other", &[("time_zone", "+02:00"), ("wait_timeout", "100")]);
        let p = plan(&vars("shop", &[]), &client, "shop", false);
        assert!(!p.reset);
        assert_eq!(p.schema.as_deref(), Some("other"));
        assert_eq!(
            p.set.as_deref(),
            Some("SET @@SESSION.time_zone = '+02:00', @@SESSION.wait_timeout = 100")
        );
        assert!(plan(&client, &client, "shop", false).is_empty());
    }

    #[test]
    fn variables_the_client_never_set_go_back_to_their_defaults() {
        let conn = vars("shop", &[("autocommit", "OFF"), ("sql_mode", "")]);
        let client = vars("shop", &[("sql_mode", "")]);
        let p = plan(&conn, &client, "shop", false);
        assert_eq!(p.set.as_deref(), Some("SET @@SESSION.autocommit = DEFAULT"));
        // Character sets come from the handshake, so only a reset restores them.
        let conn = vars("other", &[("character_set_client", "latin1"), ("time_zone", "+01:00")]);
        let client = vars("shop", &[("time_zone", "+01:00")]);
        let p = plan(&conn, &client, "shop", false);
        assert!(p.reset);
        assert_eq!(p.schema, None, "the reset lands on the home schema");
        assert_eq!(p.set.as_deref(), Some("SET @@SESSION.time_zone = '+01:00'"));
    }

    #[test]
    fn a_character_set_change_without_its_collation_is_asked_about() {
        let outcome = |names: &[&str]| Outcome {
            changes: vec![crate::mysql::ok::StateChanges {
                variables: names.iter().map(|n| ((*n).to_owned(), "x".to_owned())).collect(),
                ..Default::default()
            }],
            ..Outcome::default()
        };
        // What MariaDB reports for `SET NAMES utf8mb4 COLLATE utf8mb4_bin`.
        let names = outcome(&["character_set_client", "character_set_connection"]);
        assert!(collation_unreported(None, &names));
        let with = outcome(&["character_set_connection", "collation_connection"]);
        assert!(!collation_unreported(None, &with));
        assert!(!collation_unreported(None, &outcome(&["time_zone"])));
        let once = crate::mysql::sql::inspect(
            b"SET STATEMENT character_set_connection=latin1 FOR SELECT 1",
        );
        assert!(!collation_unreported(Some(&once), &names));
    }

    #[test]
    fn the_last_insert_id_follows_only_statements_that_read_it() {
        let conn = vars("shop", &[]);
        let client = SessionVars { last_insert_id: 42, ..vars("shop", &[]) };
        assert!(plan(&conn, &client, "shop", false).is_empty());
        assert_eq!(
            plan(&conn, &client, "shop", true).set.as_deref(),
            Some("SET @@SESSION.last_insert_id = 42")
        );
    }

    #[test]
    fn values_are_written_as_sql() {
        assert_eq!(sql_value("max_statement_time", "1.500000"), "1.500000");
        assert_eq!(sql_value("auto_increment_offset", "-3"), "-3");
        assert_eq!(sql_value("character_set_results", ""), "NULL");
        assert_eq!(sql_value("sql_mode", ""), "''");
        assert_eq!(sql_value("time_zone", "1."), "'1.'");
        assert_eq!(sql_value("lc_messages", "it's"), "X'69742773'");
        assert_eq!(sql_value("x", "a\\b"), "X'615C62'");
    }

    fn changes(f: impl FnOnce(&mut StateChanges)) -> Outcome {
        let mut c = StateChanges::default();
        f(&mut c);
        Outcome { status: Some(2), changes: vec![c], ..Outcome::default() }
    }

    #[test]
    fn tracked_variables_are_recorded_and_undescribed_changes_pin() {
        let mut client = ClientState::new("shop");
        let mut conn = SessionVars::new("shop");
        let started = client.apply(
            Some(&Traits::default()),
            &changes(|c| {
                c.variables.push(("time_zone".into(), "+02:00".into()));
                c.state_changed = true;
            }),
            &mut conn,
        );
        assert!(started.is_empty());
        assert_eq!(client.pin(), None);
        assert_eq!(client.vars.variables.get("time_zone").map(String::as_str), Some("+02:00"));
        assert_eq!(conn.variables, client.vars.variables);

        let started = client.apply(None, &changes(|c| c.state_changed = true), &mut conn);
        assert_eq!(started, [PinReason::SessionObjects]);
        assert!(client.leaves_state());
        client.reset();
        assert_eq!(client.pin(), None);
        assert!(client.vars.variables.is_empty());
    }

    #[test]
    fn transactions_locks_and_characteristics_pin_until_they_end() {
        let mut client = ClientState::new("shop");
        let mut conn = SessionVars::new("shop");
        let begin = Outcome { status: Some(0x0003), ..Outcome::default() };
        assert_eq!(client.apply(None, &begin, &mut conn), [PinReason::Transaction]);
        let commit = Outcome { status: Some(0x0002), ..Outcome::default() };
        client.apply(None, &commit, &mut conn);
        assert_eq!(client.pin(), None);

        client.apply(None, &changes(|c| c.transaction_state = Some("_______L".into())), &mut conn);
        assert_eq!(client.pin(), Some(PinReason::LockedTables));
        client.apply(None, &changes(|c| c.transaction_state = Some("________".into())), &mut conn);
        assert_eq!(client.pin(), None);

        client.apply(
            None,
            &changes(|c| c.characteristics = Some("SET TRANSACTION READ ONLY;".into())),
            &mut conn,
        );
        assert_eq!(client.pin(), Some(PinReason::TransactionCharacteristics));
        client.apply(None, &changes(|c| c.characteristics = Some(String::new())), &mut conn);
        assert_eq!(client.pin(), None);
    }

    #[test]
    fn statement_traits_pin_the_session_or_the_next_statement() {
        let mut client = ClientState::new("shop");
        let mut conn = SessionVars::new("shop");
        let found = Traits { calc_found_rows: true, ..Traits::default() };
        client.apply(Some(&found), &Outcome::default(), &mut conn);
        assert_eq!(client.pin(), Some(PinReason::FoundRows));
        assert!(!client.leaves_state());
        client.start_command();
        client.apply(Some(&Traits::default()), &Outcome::default(), &mut conn);
        assert_eq!(client.pin(), None);

        let lock = Traits { lock_names: vec!["jobs".into()], ..Traits::default() };
        client.apply(Some(&lock), &Outcome::default(), &mut conn);
        assert_eq!(client.pin(), Some(PinReason::AdvisoryLocks));
        assert_eq!(
            locks_query(client.lock_names().expect("named")),
            "SELECT CONNECTION_ID() IN (IS_USED_LOCK('jobs'))"
        );
        client.locks_released();
        assert_eq!(client.pin(), None);

        let user = Traits { user_variables: true, ..Traits::default() };
        client.apply(Some(&user), &Outcome::default(), &mut conn);
        assert_eq!(client.pin(), Some(PinReason::UserVariables));
    }

    #[test]
    fn variables_that_cannot_be_replayed_pin() {
        let mut client = ClientState::new("shop");
        let mut conn = SessionVars::new("shop");
        let ts = changes(|c| c.variables.push(("timestamp".into(), "12345.000000".into())));
        client.apply(None, &ts, &mut conn);
        assert_eq!(client.pin(), Some(PinReason::Variable));
        assert!(client.vars.variables.is_empty());
        // SET STATEMENT reports values that are restored after the statement.
        let mut client = ClientState::new("shop");
        let set_statement = Traits { set_statement: true, ..Traits::default() };
        let tmp = changes(|c| c.variables.push(("max_statement_time".into(), "10".into())));
        client.apply(Some(&set_statement), &tmp, &mut conn);
        assert!(client.vars.variables.is_empty());
        assert_eq!(client.pin(), None);
    }
}
