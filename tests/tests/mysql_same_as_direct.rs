//! The proxy answers exactly as the server does: scripted sessions of transactions, session
//! state, locks, temporary tables, warnings and prepared statements (with cursors and
//! parameter data in pieces) run once against the server directly and once through the proxy,
//! whose small pool other clients keep busy; every result set, OK packet and error must match.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use dormouse_proxy::control::RouteLimits;
use dormouse_tests::scripted::{MYSQLI_STEPS, run_job};
use dormouse_tests::{Background, Cluster, first_difference};
use mysql_async::prelude::{Protocol, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, QueryResult, Value};

/// A parameter of a prepared statement.
#[derive(Clone, Copy)]
enum P {
    Null,
    Int(i64),
    Text(&'static str),
    Float(f64),
    /// year, month, day, hour, minute, second, microsecond
    Time(u16, u8, u8, u8, u8, u8, u32),
}

impl From<P> for Value {
    fn from(p: P) -> Self {
        match p {
            P::Null => Value::NULL,
            P::Int(i) => Value::Int(i),
            P::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
            P::Float(f) => Value::Double(f),
            P::Time(y, mo, d, h, mi, s, us) => Value::Date(y, mo, d, h, mi, s, us),
        }
    }
}

/// One step of a scripted session.
enum Step {
    /// Client `.0` runs `.1` as text (all its result sets).
    Q(usize, &'static str),
    /// Client `.0` prepares `.1` and executes it with `.2`.
    X(usize, &'static str, &'static [P]),
    /// Client `.0` resets its session (COM_RESET_CONNECTION).
    R(usize),
}
use Step::{Q, R, X};

struct Script {
    name: &'static str,
    clients: usize,
    steps: &'static [Step],
}

const CREATE: &str = "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(8) NOT NULL, \
                      d DECIMAL(6,2), at DATETIME(3), f DOUBLE, b BLOB, UNIQUE (v))";

const SCRIPTS: &[Script] = &[
    Script {
        name: "writes, errors and transactions",
        clients: 2,
        steps: &[
            Q(0, CREATE),
            Q(0, "INSERT INTO t (v, d) VALUES ('a', 1.5), ('b', NULL)"),
            Q(0, "INSERT INTO t (v) VALUES ('a')"),
            Q(0, "INSERT INTO t (v) VALUES ('far too long')"),
            Q(0, "SELECT LAST_INSERT_ID()"),
            Q(0, "UPDATE t SET d = d * 2"),
            Q(0, "SELEC 1"),
            Q(1, "SELECT * FROM nosuch"),
            Q(0, "BEGIN"),
            Q(0, "INSERT INTO t (v) VALUES ('c')"),
            Q(1, "SELECT v, d FROM t ORDER BY id"),
            Q(0, "SELECT v, d, @@in_transaction FROM t ORDER BY id"),
            Q(0, "SAVEPOINT s"),
            Q(0, "UPDATE t SET d = 7 WHERE v = 'c'"),
            Q(0, "ROLLBACK TO SAVEPOINT s"),
            Q(0, "SELECT v, d FROM t WHERE v = 'c'"),
            Q(0, "ROLLBACK"),
            Q(1, "SELECT COUNT(*), @@in_transaction FROM t"),
            Q(1, "START TRANSACTION READ ONLY"),
            Q(1, "INSERT INTO t (v) VALUES ('ro')"),
            Q(1, "COMMIT"),
            // Warnings inside a transaction: no statement of the proxy's between the client's.
            Q(0, "BEGIN"),
            Q(0, "SELECT 1/0"),
            Q(0, "UPDATE t SET d = d + 1"),
            Q(0, "SELECT ROW_COUNT()"),
            Q(0, "SELECT v FROM t"),
            Q(0, "SELECT FOUND_ROWS(), @@warning_count"),
            Q(0, "ROLLBACK"),
            Q(0, "START TRANSACTION"),
            Q(0, "INSERT INTO t (v) VALUES ('d')"),
            Q(0, "COMMIT"),
            Q(1, "SELECT id, v FROM t ORDER BY id"),
            Q(0, "SELECT 1 AS one; SELECT 'x' AS s, NULL AS n; DO 1"),
            Q(0, "SELECT id FROM t WHERE id = 999"),
            Q(0, "DELETE FROM t WHERE v = 'd'"),
        ],
    },
    Script {
        name: "session state",
        clients: 2,
        steps: &[
            Q(0, "SELECT 1/0, CAST('12x' AS INTEGER)"),
            Q(1, "SELECT 1"),
            Q(0, "SHOW WARNINGS"),
            Q(1, "SHOW WARNINGS"),
            Q(0, "SELECT 1/0"),
            Q(0, "SELECT 1"),
            Q(1, "SELECT 2"),
            Q(0, "BEGIN"),
            Q(0, "COMMIT"),
            Q(1, "SELECT 3"),
            Q(0, "SHOW WARNINGS"),
            Q(0, "SELECT nosuch"),
            Q(0, "DO 1"),
            Q(1, "SELECT 4"),
            Q(0, "SHOW ERRORS"),
            Q(0, "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'nosuch'"),
            Q(1, "SELECT 5"),
            Q(0, "SHOW WARNINGS"),
            Q(0, "SET NAMES utf8mb4 COLLATE utf8mb4_bin"),
            Q(0, "SET time_zone = '+05:30', sql_mode = 'ANSI_QUOTES'"),
            Q(1, "SELECT @@time_zone, @@sql_mode, @@collation_connection"),
            Q(0, "SELECT @@time_zone, @@sql_mode, @@collation_connection"),
            Q(0, "SELECT \"x\""),
            Q(0, "SET @a = 41"),
            Q(1, "SELECT @a"),
            Q(0, "SELECT @a + 1"),
            Q(0, "SELECT GET_LOCK('l', 0)"),
            Q(1, "SELECT GET_LOCK('l', 0), IS_USED_LOCK('l') IS NOT NULL"),
            Q(0, "SELECT RELEASE_LOCK('l')"),
            Q(1, "SELECT GET_LOCK('l', 0)"),
            Q(1, "SELECT RELEASE_LOCK('l'), RELEASE_LOCK('l')"),
            Q(0, "CREATE TEMPORARY TABLE tmp (x INT)"),
            Q(0, "INSERT INTO tmp VALUES (1), (2)"),
            Q(1, "SELECT * FROM tmp"),
            Q(0, "SELECT SQL_CALC_FOUND_ROWS x FROM tmp LIMIT 1"),
            Q(0, "SELECT FOUND_ROWS()"),
            Q(0, "DROP TEMPORARY TABLE tmp"),
            Q(0, "SELECT * FROM tmp"),
            Q(1, "SELECT DATABASE()"),
        ],
    },
    Script {
        name: "prepared statements",
        clients: 2,
        steps: &[
            Q(0, CREATE),
            X(0, "SELECT ? + 1, ?, CONCAT(?, 'x')", &[P::Int(1), P::Null, P::Text("a")]),
            X(1, "SELECT ? + 1, ?, CONCAT(?, 'x')", &[P::Int(-9), P::Float(0.5), P::Text("é")]),
            X(
                0,
                "INSERT INTO t (v, d, at, f, b) VALUES (?, ?, ?, ?, ?)",
                &[
                    P::Text("p"),
                    P::Text("2.50"),
                    P::Time(2026, 11, 24, 1, 2, 3, 4000),
                    P::Float(0.25),
                    P::Text("\0blob\n"),
                ],
            ),
            X(
                1,
                "INSERT INTO t (v, d, at, f, b) VALUES (?, ?, ?, ?, ?)",
                &[P::Text("q"), P::Null, P::Null, P::Float(-1e300), P::Null],
            ),
            X(1, "INSERT INTO t (v) VALUES (?)", &[P::Text("p")]),
            X(
                0,
                "SELECT id, v, d, at, f, b FROM t WHERE v IN (?, ?) ORDER BY id",
                &[P::Text("p"), P::Text("q")],
            ),
            X(
                1,
                "SELECT id, v, d, at, f, b FROM t WHERE v IN (?, ?) ORDER BY id",
                &[P::Text("q"), P::Text("none")],
            ),
            X(0, "SELECT * FROM nosuch WHERE id = ?", &[P::Int(1)]),
            X(0, "SELECT CAST(? AS UNSIGNED) DIV 0, LAST_INSERT_ID()", &[P::Text("3")]),
            Q(0, "SHOW WARNINGS"),
            Q(1, "BEGIN"),
            X(1, "UPDATE t SET d = ? WHERE v = ?", &[P::Text("9.99"), P::Text("p")]),
            X(0, "SELECT d FROM t WHERE v = ?", &[P::Text("p")]),
            Q(1, "COMMIT"),
            X(0, "SELECT d FROM t WHERE v = ?", &[P::Text("p")]),
        ],
    },
    Script {
        name: "autocommit, diagnostics, character sets, procedures",
        clients: 2,
        steps: &[
            Q(0, CREATE),
            Q(0, "SELECT 1; SELECT * FROM nosuch; SELECT 2"),
            Q(0, "SET autocommit = 0"),
            Q(0, "INSERT INTO t (v) VALUES ('ac')"),
            Q(1, "SELECT COUNT(*) FROM t"),
            Q(0, "SELECT @@autocommit, @@in_transaction"),
            Q(0, "COMMIT"),
            Q(0, "SET autocommit = 1"),
            Q(1, "SELECT COUNT(*) FROM t"),
            Q(0, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            Q(1, "SELECT @@tx_isolation"),
            Q(0, "SELECT @@tx_isolation"),
            Q(0, "LOCK TABLES t WRITE"),
            Q(0, "INSERT INTO t (v) VALUES ('lk')"),
            Q(0, "UNLOCK TABLES"),
            Q(0, "SET sql_mode = ''"),
            Q(0, "INSERT INTO t (v) VALUES ('truncated value')"),
            Q(0, "SELECT @@warning_count"),
            Q(0, "SHOW WARNINGS"),
            Q(1, "SELECT nosuch FROM t"),
            Q(1, "SHOW ERRORS"),
            Q(0, "USE information_schema"),
            Q(0, "SELECT DATABASE()"),
            Q(1, "SELECT DATABASE()"),
            Q(0, "USE shop"),
            Q(0, "PREPARE s FROM 'SELECT ? * 2'"),
            Q(0, "SET @x = 21"),
            Q(0, "EXECUTE s USING @x"),
            Q(0, "DEALLOCATE PREPARE s"),
            Q(0, "EXECUTE s USING @x"),
            Q(
                1,
                "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT COUNT(*), SUM(i) FROM n",
            ),
            Q(
                1,
                "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) SELECT i, REPEAT('x', i) FROM n",
            ),
            Q(1, "SET NAMES latin1"),
            Q(1, "SELECT 'é', CHARSET('é'), @@character_set_results"),
            Q(0, "SELECT 'é', CHARSET('é'), @@character_set_results"),
            Q(1, "SET character_set_results = NULL"),
            Q(1, "SELECT 'é'"),
            Q(
                0,
                "CREATE PROCEDURE p (IN a INT, OUT b INT) BEGIN SELECT a; SELECT a + 1; SET b = a * 10; END",
            ),
            Q(0, "CALL p(4, @out)"),
            Q(1, "SELECT @out"),
            Q(0, "SELECT @out"),
            Q(0, "DROP PROCEDURE p"),
            X(1, "SELECT v FROM t ORDER BY id", &[]),
            Q(0, "ALTER TABLE t ADD COLUMN extra INT DEFAULT 5"),
            X(1, "SELECT v, extra FROM t ORDER BY id LIMIT 1", &[]),
        ],
    },
    Script {
        name: "more variables, replays and refusals",
        clients: 2,
        steps: &[
            Q(0, CREATE),
            Q(0, "INSERT INTO t (v, d) VALUES ('a', 1), ('b', 2), ('c', 3)"),
            Q(0, "INSERT INTO t (v, d) VALUES ('a', 9) ON DUPLICATE KEY UPDATE d = VALUES(d)"),
            Q(0, "REPLACE INTO t (id, v, d) VALUES (2, 'b2', 5)"),
            Q(0, "SELECT LAST_INSERT_ID(42)"),
            Q(1, "SELECT 1"),
            Q(0, "SELECT LAST_INSERT_ID()"),
            Q(1, "SET sql_select_limit = 1, group_concat_max_len = 4"),
            Q(0, "SELECT v FROM t ORDER BY id"),
            Q(1, "SELECT v FROM t ORDER BY id"),
            Q(1, "SELECT GROUP_CONCAT(v ORDER BY id) FROM t"),
            Q(1, "SET sql_select_limit = DEFAULT"),
            Q(1, "SELECT COUNT(*) FROM (SELECT v FROM t) x"),
            Q(1, "SET SQL_SAFE_UPDATES = 1"),
            Q(1, "UPDATE t SET d = 0"),
            Q(0, "UPDATE t SET d = d"),
            Q(0, "SET sql_mode = 'NO_BACKSLASH_ESCAPES', time_zone = '-03:00'"),
            Q(0, "SET @@session.optimizer_switch = 'index_merge=off'"),
            Q(1, "SELECT 1"),
            Q(
                0,
                "SELECT 'a\\b', LENGTH('a\\b'), CONVERT_TZ('2020-01-01 00:00:00', @@time_zone, '+00:00')",
            ),
            Q(0, "SELECT @@optimizer_switch LIKE 'index_merge=off%'"),
            Q(0, "SET NAMES utf8"),
            Q(0, "SELECT @@character_set_client, @@collation_connection"),
            Q(0, "SET character_set_client = latin1"),
            Q(
                0,
                "SELECT @@character_set_client, @@character_set_connection, @@collation_connection",
            ),
            Q(0, "SET collation_connection = utf8mb4_unicode_ci"),
            Q(1, "SELECT 1"),
            Q(0, "SELECT @@character_set_connection, @@collation_connection"),
            Q(0, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Q(1, "SELECT 1"),
            Q(0, "BEGIN"),
            Q(0, "SELECT @@tx_isolation, @@in_transaction"),
            Q(0, "COMMIT"),
            Q(0, "SELECT @@tx_isolation"),
            Q(0, "SET SESSION TRANSACTION READ ONLY"),
            Q(1, "SELECT 1"),
            Q(0, "INSERT INTO t (v) VALUES ('ro')"),
            Q(0, "SET SESSION TRANSACTION READ WRITE"),
            Q(0, "USE nosuch"),
            Q(0, "SELECT * FROM mysql.user"),
            Q(0, "SELECT DATABASE()"),
            Q(0, "BEGIN"),
            Q(0, "INSERT INTO t (v) VALUES ('x1')"),
            Q(0, "INSERT INTO t (v) VALUES ('a')"),
            Q(0, "ROLLBACK"),
            Q(1, "SELECT v FROM t ORDER BY id"),
            Q(0, "SELECT v INTO @first FROM t ORDER BY id LIMIT 1"),
            Q(0, "SELECT @first"),
            Q(1, "DO GET_LOCK('g', 0)"),
            Q(0, "SELECT IS_FREE_LOCK('g'), IS_USED_LOCK('g') IS NOT NULL"),
            Q(1, "DO RELEASE_LOCK('g')"),
            Q(0, "SELECT IS_FREE_LOCK('g')"),
        ],
    },
    Script {
        name: "resets",
        clients: 2,
        steps: &[
            Q(0, CREATE),
            Q(0, "SET @u = 1, time_zone = '+02:00', sql_mode = 'ANSI_QUOTES'"),
            Q(0, "CREATE TEMPORARY TABLE tmp (x INT)"),
            Q(0, "BEGIN"),
            Q(0, "INSERT INTO t (v) VALUES ('gone')"),
            Q(0, "SELECT GET_LOCK('r', 0)"),
            R(0),
            Q(0, "SELECT @u, @@time_zone, @@sql_mode, @@in_transaction"),
            Q(0, "SELECT * FROM tmp"),
            Q(1, "SELECT COUNT(*), IS_FREE_LOCK('r') FROM t"),
            Q(0, "SELECT 1/0"),
            R(0),
            Q(0, "SHOW WARNINGS"),
            Q(0, "SET NAMES latin1"),
            Q(0, "SET autocommit = 0"),
            R(0),
            Q(1, "SELECT 1"),
            Q(0, "SELECT @@character_set_client, @@autocommit"),
            Q(0, "USE information_schema"),
            R(0),
            Q(0, "SELECT DATABASE()"),
            X(0, "SELECT ? + 1", &[P::Int(1)]),
            R(0),
            X(0, "SELECT ? + 1", &[P::Int(2)]),
            Q(0, "INSERT INTO t (v) VALUES ('kept')"),
            R(0),
            Q(0, "SELECT LAST_INSERT_ID()"),
            R(1),
            Q(1, "SELECT v FROM t"),
        ],
    },
];

/// Everything a client can see of one statement's outcome.
async fn render<P: Protocol>(mut result: QueryResult<'_, 'static, P>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let columns: Vec<String> = result
            .columns()
            .map(|cs| {
                cs.iter().map(|c| format!("{}:{:?}", c.name_str(), c.column_type())).collect()
            })
            .unwrap_or_default();
        let rows: Vec<mysql_async::Row> = match result.collect().await {
            Ok(rows) => rows,
            Err(e) => {
                out.push(error(&e));
                return out;
            }
        };
        let rows: Vec<Vec<String>> =
            rows.into_iter().map(|row| row.unwrap().iter().map(value).collect()).collect();
        out.push(format!(
            "columns {columns:?} rows {rows:?} affected {} insert id {:?} warnings {} info {:?}",
            result.affected_rows(),
            result.last_insert_id(),
            result.warnings(),
            result.info(),
        ));
        if result.is_empty() {
            return out;
        }
    }
}

/// Drops what the scripts create.
async fn clean(admin: &mut Conn) -> anyhow::Result<()> {
    admin.query_drop("DROP TABLE IF EXISTS t").await?;
    admin.query_drop("DROP PROCEDURE IF EXISTS p").await?;
    Ok(())
}

/// Notes where `got` first differs from `expected`: the server's own answers, in which the
/// proxy names the internal user `internal`@127.0.0.1 as the client, 'shop'@'%'.
fn compare(
    name: &str,
    internal: &str,
    expected: &[String],
    got: &[String],
    mismatches: &mut Vec<String>,
) {
    let account = format!("'{internal}'@'127.0.0.1'");
    let expected: Vec<String> =
        expected.iter().map(|l| l.replace(&account, "'shop'@'%'")).collect();
    mismatches.extend(first_difference(name, &expected, got));
}

/// A value in full (the crate's `Debug` shortens long strings).
fn value(v: &Value) -> String {
    match v {
        Value::Bytes(b) => format!("{:?}", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    }
}

fn error(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("ERR {} {} {}", s.code, s.state, s.message),
        other => format!("client error: {other}"),
    }
}

/// Runs `script` with clients connected by `opts`; returns what each step received.
async fn run(script: &Script, opts: &Opts) -> anyhow::Result<Vec<String>> {
    let mut clients = Vec::new();
    for _ in 0..script.clients {
        clients.push(Conn::new(opts.clone()).await?);
    }
    let mut transcript = Vec::new();
    for (n, step) in script.steps.iter().enumerate() {
        let (c, lines) = match *step {
            Q(c, sql) => match clients[c].query_iter(sql).await {
                Ok(result) => (c, render(result).await),
                Err(e) => (c, vec![error(&e)]),
            },
            R(c) => match clients[c].reset().await {
                // `true`: by COM_RESET_CONNECTION, not by reconnecting.
                Ok(by_command) => (c, vec![format!("reset {by_command}")]),
                Err(e) => (c, vec![error(&e)]),
            },
            X(c, sql, params) => {
                let params: Vec<Value> = params.iter().map(|&p| p.into()).collect();
                match clients[c].exec_iter(sql, params).await {
                    Ok(result) => (c, render(result).await),
                    Err(e) => (c, vec![error(&e)]),
                }
            }
        };
        transcript.extend(lines.into_iter().map(|l| format!("{n} c{c} {l}")));
    }
    for client in clients {
        client.disconnect().await?;
    }
    Ok(transcript)
}

/// The same scripts through PyMySQL: the other protocol flavour (no `CLIENT_DEPRECATE_EOF`, no
/// session tracking, so EOF packets and OKs the proxy rewrites), prepared statements done
/// client side as text.
const PYMYSQL: &str = r#"
import datetime, json, sys, pymysql
from pymysql.constants import CLIENT
job = json.load(sys.stdin)
conns = [pymysql.connect(host=job["host"], port=job["port"], user=job["user"],
                         password=job["password"], database="shop", autocommit=True,
                         client_flag=CLIENT.MULTI_STATEMENTS) for _ in range(job["clients"])]
def param(p):
    return datetime.datetime(*p) if isinstance(p, list) else p
for n, (c, sql, params) in enumerate(job["steps"]):
    if sql is None:
        # COM_RESET_CONNECTION, which PyMySQL has no call for.
        conns[c]._execute_command(31, b"")
        conns[c]._read_ok_packet()
        print(n, "c%d" % c, "reset True")
        continue
    cur = conns[c].cursor()
    try:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql.replace("?", "%s"), [param(p) for p in params])
        while True:
            r = cur._result
            print(n, "c%d" % c, json.dumps([[d[0], d[1]] for d in cur.description or []]),
                  repr(cur.fetchall()), cur.rowcount, cur.lastrowid, r.warning_count,
                  repr(r.message))
            if not cur.nextset():
                break
    except pymysql.err.MySQLError as e:
        print(n, "c%d" % c, "ERR", repr(e.args))
for c in conns:
    c.close()
"#;

/// Runs `script` through PyMySQL, logged in as `user` with `password` at `port`.
async fn run_pymysql(
    script: &Script,
    port: u16,
    user: &str,
    password: &str,
) -> anyhow::Result<Vec<String>> {
    let steps: Vec<serde_json::Value> = script
        .steps
        .iter()
        .map(|step| match *step {
            Q(c, sql) => serde_json::json!([c, sql, null]),
            R(c) => serde_json::json!([c, null, null]),
            X(c, sql, params) => {
                let params: Vec<serde_json::Value> =
                    params.iter().map(|&p| json_param(p)).collect();
                serde_json::json!([c, sql, params])
            }
        })
        .collect();
    let job = serde_json::json!({
        "host": "127.0.0.1", "port": port, "user": user, "password": password,
        "clients": script.clients, "steps": steps,
    });
    run_job("/usr/bin/python3", &["-c", PYMYSQL], &job).await
}

/// One step of a PHP mysqli session: what neither mysql_async nor PyMySQL sends, cursors
/// (COM_STMT_FETCH), parameter data in pieces (COM_STMT_SEND_LONG_DATA), statement resets.
enum M {
    Query(usize, &'static str),
    /// Client, name, SQL, rows per fetch through a read-only cursor (0: no cursor).
    Prepare(usize, &'static str, &'static str, u32),
    /// Client, name, parameter types (`b` for data sent in pieces), values.
    Bind(usize, &'static str, &'static str, &'static [P]),
    /// As `Bind`, then executes; types "" keep what was bound.
    Execute(usize, &'static str, &'static str, &'static [P]),
    Fetch(usize, &'static str, u32),
    /// Client, name, parameter, a piece of its data.
    Long(usize, &'static str, u32, &'static str),
    Reset(usize, &'static str),
    Close(usize, &'static str),
    /// COM_INIT_DB.
    SelectDb(usize, &'static str),
    Ping(usize),
    /// COM_CHANGE_USER to the job's user and password, and this schema.
    ChangeUser(usize, &'static str),
}

const ROWS: &str = "INSERT INTO t (v, d) WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 \
                    FROM n WHERE i < 10) SELECT CONCAT('r', i), i FROM n";
const AFTER: &str = "SELECT id, v, d FROM t WHERE id > ? ORDER BY id";

const MYSQLI_SCRIPTS: &[(&str, &[M])] = &[
    (
        "cursors",
        &[
            M::Query(0, CREATE),
            M::Query(0, ROWS),
            M::Prepare(0, "a", AFTER, 3),
            M::Execute(0, "a", "i", &[P::Int(2)]),
            M::Fetch(0, "a", 2),
            M::Query(1, "UPDATE t SET d = d + 100 WHERE id = 9"),
            M::Query(0, "SELECT COUNT(*) FROM t"),
            M::Prepare(0, "b", "SELECT v FROM t WHERE id <= ?", 2),
            M::Execute(0, "b", "i", &[P::Int(3)]),
            M::Fetch(0, "b", 1),
            M::Query(0, "SELECT nosuch FROM t"),
            M::Fetch(0, "a", 3),
            M::Fetch(0, "b", 5),
            M::Fetch(0, "a", 10),
            M::Fetch(0, "a", 1),
            M::Execute(0, "a", "i", &[P::Int(7)]),
            M::Fetch(0, "a", 1),
            M::Execute(0, "a", "i", &[P::Int(8)]),
            M::Fetch(0, "a", 1),
            M::Reset(0, "a"),
            M::Fetch(0, "a", 1),
            M::Close(0, "a"),
            M::Query(0, "SELECT 1"),
            M::Query(1, "BEGIN"),
            M::Prepare(1, "c", "SELECT id, 1 / ? FROM t ORDER BY id LIMIT 4", 2),
            M::Execute(1, "c", "i", &[P::Int(0)]),
            M::Query(1, "COMMIT"),
            M::Fetch(1, "c", 1),
            M::Query(0, "SELECT 2"),
            M::Fetch(1, "c", 5),
            M::Query(1, "SHOW WARNINGS"),
            M::Prepare(1, "d", "SELECT v FROM t ORDER BY id", 4),
            M::Execute(1, "d", "", &[]),
            M::Fetch(1, "d", 1),
            M::Close(1, "d"),
            M::Prepare(1, "d", "SELECT v FROM t ORDER BY id", 4),
            M::Execute(1, "d", "", &[]),
            M::Fetch(1, "d", 2),
            M::Prepare(0, "e", "SELECT * FROM nosuch WHERE id = ?", 2),
            M::Prepare(0, "f", "SELECT id FROM t WHERE id = ?", 0),
            M::Execute(0, "f", "i", &[P::Int(4)]),
            M::Reset(0, "f"),
            M::Execute(0, "f", "", &[]),
        ],
    ),
    (
        "one text prepared twice, parameter data in pieces",
        &[
            M::Query(0, CREATE),
            M::Query(0, ROWS),
            M::Prepare(0, "a", AFTER, 2),
            M::Execute(0, "a", "i", &[P::Int(0)]),
            M::Fetch(0, "a", 1),
            M::Prepare(0, "a2", AFTER, 2),
            M::Execute(0, "a2", "i", &[P::Int(5)]),
            M::Query(1, "SELECT 1"),
            M::Fetch(0, "a", 3),
            M::Fetch(0, "a2", 2),
            M::Fetch(0, "a", 10),
            M::Fetch(0, "a2", 10),
            M::Close(0, "a2"),
            M::Execute(0, "a", "i", &[P::Int(8)]),
            M::Fetch(0, "a", 5),
            M::Prepare(0, "u", "UPDATE t SET b = ?, v = ? WHERE id = ?", 0),
            M::Prepare(0, "u2", "UPDATE t SET b = ?, v = ? WHERE id = ?", 0),
            M::Bind(0, "u", "bbi", &[P::Null, P::Null, P::Int(1)]),
            M::Bind(0, "u2", "ssi", &[P::Text("plain"), P::Text("p2"), P::Int(2)]),
            M::Long(0, "u", 0, "long-"),
            M::Query(1, "SELECT 2"),
            M::Long(0, "u", 0, "data"),
            M::Long(0, "u", 1, "lv"),
            M::Query(0, "SELECT COUNT(*) FROM t"),
            M::Execute(0, "u2", "", &[]),
            M::Execute(0, "u", "", &[]),
            M::Query(1, "SELECT id, v, b FROM t WHERE id <= 2 ORDER BY id"),
            M::Prepare(1, "w", "INSERT INTO t (v, b) VALUES (?, ?)", 0),
            M::Bind(1, "w", "sb", &[P::Text("w"), P::Null]),
            M::Long(1, "w", 1, "zzz"),
            M::Reset(1, "w"),
            M::Execute(1, "w", "", &[]),
            M::Bind(1, "w", "sb", &[P::Text("w2"), P::Null]),
            M::Long(1, "w", 1, "kept"),
            M::Close(1, "w"),
            M::Prepare(1, "w", "INSERT INTO t (v, b) VALUES (?, ?)", 0),
            M::Execute(1, "w", "ss", &[P::Text("w3"), P::Text("fresh")]),
            M::Query(0, "SELECT v, b FROM t WHERE v LIKE 'w%' ORDER BY id"),
        ],
    ),
    (
        "schemas, pings and procedures",
        &[
            M::Query(0, CREATE),
            M::Query(0, ROWS),
            M::SelectDb(0, "nosuch"),
            M::Query(0, "SHOW ERRORS"),
            M::SelectDb(0, "information_schema"),
            M::Query(1, "SELECT DATABASE()"),
            M::Query(0, "SELECT DATABASE()"),
            M::Ping(0),
            M::SelectDb(0, "shop"),
            M::Prepare(0, "n", "SELECT COUNT(*) FROM t", 0),
            M::SelectDb(0, "information_schema"),
            M::Query(1, "SELECT 1"),
            M::Execute(0, "n", "", &[]),
            M::SelectDb(0, "shop"),
            M::Query(
                0,
                "CREATE PROCEDURE p (IN a INT, OUT b INT) BEGIN SELECT a; SELECT v FROM t WHERE id <= a ORDER BY id; SET b = a * 10; END",
            ),
            M::Prepare(1, "call", "CALL p(?, @out)", 0),
            M::Execute(1, "call", "i", &[P::Int(3)]),
            M::Query(1, "SELECT @out"),
            M::Ping(1),
            M::Execute(1, "call", "i", &[P::Int(1)]),
            M::Prepare(1, "cur", "SELECT id FROM t WHERE id > ? ORDER BY id", 3),
            M::Execute(1, "cur", "i", &[P::Int(6)]),
            M::Ping(1),
            M::Query(0, "DROP TABLE nosuch"),
            M::Query(0, "SELECT 1"),
            M::Ping(0),
            M::Query(0, "SHOW WARNINGS"),
            M::Fetch(1, "cur", 10),
            // COM_CHANGE_USER (PHP's persistent connections send it on reuse) starts afresh.
            M::Query(1, "SET @mark = 7, time_zone = '+03:00'"),
            M::Query(1, "BEGIN"),
            M::Query(1, "INSERT INTO t (v) VALUES ('gone')"),
            M::Query(1, "SELECT 1/0"),
            M::ChangeUser(1, "information_schema"),
            M::Query(1, "SELECT @mark, @@time_zone, DATABASE(), @@in_transaction"),
            M::Query(1, "SHOW WARNINGS"),
            M::Query(0, "SELECT COUNT(*) FROM t WHERE v = 'gone'"),
            M::ChangeUser(1, "nosuch"),
        ],
    ),
];

/// Runs a mysqli script through PHP, logged in as `user` with `password` at `port`.
async fn run_mysqli(
    steps: &[M],
    port: u16,
    user: &str,
    password: &str,
) -> anyhow::Result<Vec<String>> {
    let params = |ps: &[P]| ps.iter().map(|&p| json_param(p)).collect::<Vec<_>>();
    let steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|step| match *step {
            M::Query(c, sql) => serde_json::json!(["query", c, sql]),
            M::Prepare(c, name, sql, rows) => serde_json::json!(["prepare", c, name, sql, rows]),
            M::Bind(c, name, types, ps) => serde_json::json!(["bind", c, name, types, params(ps)]),
            M::Execute(c, name, types, ps) => {
                serde_json::json!(["execute", c, name, types, params(ps)])
            }
            M::Fetch(c, name, rows) => serde_json::json!(["fetch", c, name, rows]),
            M::Long(c, name, param, data) => serde_json::json!(["long", c, name, param, data]),
            M::Reset(c, name) => serde_json::json!(["reset", c, name]),
            M::Close(c, name) => serde_json::json!(["close", c, name]),
            M::SelectDb(c, schema) => serde_json::json!(["select_db", c, schema]),
            M::Ping(c) => serde_json::json!(["ping", c]),
            M::ChangeUser(c, schema) => serde_json::json!(["change_user", c, schema]),
        })
        .collect();
    let clients = steps.iter().filter_map(|s| s[1].as_u64()).max().map_or(0, |c| c + 1);
    let job = serde_json::json!({
        "host": "127.0.0.1", "port": port, "user": user, "password": password,
        "database": "shop", "clients": clients, "steps": steps,
    });
    run_job("php", &[MYSQLI_STEPS], &job).await
}

fn json_param(p: P) -> serde_json::Value {
    match p {
        P::Null => serde_json::Value::Null,
        P::Int(i) => i.into(),
        P::Text(s) => s.into(),
        P::Float(f) => f.into(),
        P::Time(y, mo, d, h, mi, s, us) => serde_json::json!([y, mo, d, h, mi, s, us]),
    }
}

#[tokio::test]
async fn scripted_sessions_get_the_same_results_through_the_proxy_as_from_the_server()
-> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            // Fewer backend connections than the scripts' clients plus the background load.
            proxy.database_caps = Some(RouteLimits { max_clients: 10_000, max_backend: 4 });
            proxy.mysql.pool.wait = Duration::from_secs(10);
            // The scripts read warnings right after the statement that raised them, as drivers
            // do; a step slowed past the usual moment on a loaded machine must not lose them.
            proxy.mysql.pool.set_aside_after = Duration::from_secs(5);
        }
    })
    .await?;
    let (admin_token, tenant_id) = cluster.tenant_with_id("acme").await?;
    let db = cluster.database(&admin_token, "shop", "mysql").await?;
    let token = db["token"]["token"].as_str().context("token")?.to_owned();
    let route = cluster.backend(&tenant_id, "shop").await?;
    let direct: Opts = OptsBuilder::default()
        .ip_or_hostname(route.host.clone())
        .tcp_port(route.port)
        .user(Some(route.user.clone()))
        .pass(Some(route.password.0.clone()))
        .db_name(Some("shop"))
        .prefer_socket(false)
        .into();
    let proxied = cluster.mysql_opts("shop", &token, false);
    let mut admin = Conn::new(direct.clone()).await?;
    admin.query_drop("CREATE TABLE load_rows (id INT PRIMARY KEY, marker INT)").await?;

    // Other clients keep the pool busy while the scripts run through the proxy.
    let mut load = Background::default();
    for i in 0..12 {
        let opts = proxied.clone();
        load.spawn(|stop| async move {
            let mut conn = Conn::new(opts).await?;
            conn.exec_drop("INSERT INTO load_rows VALUES (?, 0)", (i,)).await?;
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                conn.exec_drop("UPDATE load_rows SET marker = ? WHERE id = ?", (n, i)).await?;
                let got: Option<i64> =
                    conn.exec_first("SELECT marker FROM load_rows WHERE id = ?", (i,)).await?;
                anyhow::ensure!(got == Some(n), "load client {i} read {got:?}, wrote {n}");
            }
            conn.disconnect().await?;
            anyhow::Ok(n.unsigned_abs())
        });
    }

    let mut mismatches = Vec::new();
    let (port, user, password) = (route.port, route.user.as_str(), route.password.0.as_str());
    for script in SCRIPTS {
        let expected = run(script, &direct).await.context(script.name)?;
        clean(&mut admin).await?;
        let got = run(script, &proxied).await.context(script.name)?;
        clean(&mut admin).await?;
        compare(&format!("{} (mysql_async)", script.name), user, &expected, &got, &mut mismatches);
        let expected = run_pymysql(script, port, user, password).await.context(script.name)?;
        clean(&mut admin).await?;
        let got = run_pymysql(script, cluster.mysql_port(), "shop", &token).await?;
        clean(&mut admin).await?;
        compare(&format!("{} (PyMySQL)", script.name), user, &expected, &got, &mut mismatches);
    }
    for (name, steps) in MYSQLI_SCRIPTS {
        let expected = run_mysqli(steps, port, user, password).await.context(*name)?;
        clean(&mut admin).await?;
        let got = run_mysqli(steps, cluster.mysql_port(), "shop", &token).await.context(*name)?;
        clean(&mut admin).await?;
        compare(&format!("{name} (PHP mysqli)"), user, &expected, &got, &mut mismatches);
    }
    load.finish().await?;
    assert!(mismatches.is_empty(), "results differ:\n{}", mismatches.join("\n"));
    Ok(())
}
