//! MySQL transaction-level multiplexing: many clients share a few backend connections;
//! transactions, locks and other session state pin a client for exactly as long as they last;
//! session variables, schemas and prepared statements follow a client to whichever connection
//! it borrows; a busy pool answers with a clear error after a bounded wait; and under pressure
//! no reply ever reaches the wrong client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dormouse_proxy::control::RouteLimits;
use dormouse_proxy::mysql::state::PinReason;
use dormouse_tests::scripted::{MYSQLI_STEPS, run_job};
use dormouse_tests::{Cluster, eventually, stdout};
use mysql_async::ChangeUserOpts;
use mysql_async::prelude::*;

/// A cluster whose databases get at most `max_backend` backend connections and a short pool
/// wait, with a MySQL database `shop`; returns the cluster and a token for it.
async fn setup(max_backend: u32) -> anyhow::Result<(Cluster, String)> {
    setup_waiting(max_backend, Duration::from_millis(300)).await
}

async fn setup_waiting(max_backend: u32, wait: Duration) -> anyhow::Result<(Cluster, String)> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.database_caps = Some(RouteLimits { max_clients: 10_000, max_backend });
            proxy.mysql.pool.wait = wait;
        }
    })
    .await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "shop", "mysql").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok((cluster, token))
}

async fn connect(cluster: &Cluster, token: &str) -> anyhow::Result<mysql_async::Conn> {
    Ok(mysql_async::Conn::new(cluster.mysql_opts("shop", token, false)).await?)
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

fn pins(cluster: &Cluster, reason: PinReason) -> u64 {
    let pool = cluster
        .running()
        .mysql_pool
        .as_ref()
        .map(|p| p.stats.pins[reason as usize].load(Ordering::Relaxed));
    pool.unwrap_or_default()
}

/// The backend sessions of the database's internal users, as the server counts them.
async fn server_sessions(conn: &mut mysql_async::Conn) -> anyhow::Result<u64> {
    let n: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER LIKE 'dormouse%'",
        )
        .await?;
    Ok(n.unwrap_or_default())
}

/// Asserts that a query from `other` cannot get a connection (the pool's only one is held),
/// and gets the pool's clear error.
async fn assert_pool_held(other: &mut mysql_async::Conn, what: &str) {
    let err = other.query_drop("SELECT 1").await.expect_err(what);
    assert_eq!(server_code(&err), Some(1040), "{what}: {err}");
    assert!(err.to_string().contains("stayed busy"), "{what}: {err}");
}

#[tokio::test]
async fn a_hundred_clients_share_four_backend_connections() -> anyhow::Result<()> {
    let (cluster, token) = setup(4).await?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&cluster, &token).await?);
    }
    let tasks = clients.into_iter().enumerate().map(|(i, mut c)| async move {
        for round in 0..5 {
            let marker = format!("client-{i}-round-{round}");
            let got: Option<String> = c.exec_first("SELECT ?", (marker.clone(),)).await?;
            anyhow::ensure!(got.as_deref() == Some(marker.as_str()), "{marker}: got {got:?}");
        }
        anyhow::Ok(c)
    });
    let mut clients = futures::future::try_join_all(tasks).await?;
    let sessions = server_sessions(&mut clients[0]).await?;
    assert!(sessions <= 4, "100 clients hold {sessions} server sessions");
    let opened =
        cluster.running().mysql_pool.as_ref().map(|p| p.stats.misses.load(Ordering::Relaxed));
    assert!(opened.unwrap_or_default() <= 4, "opened {opened:?} backend connections");
    for c in clients {
        c.disconnect().await?;
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_transaction_keeps_its_connection_and_a_busy_pool_answers_1040() -> anyhow::Result<()> {
    let (cluster, token) = setup(1).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    a.query_drop("CREATE TABLE t (id INT PRIMARY KEY)").await?;

    a.query_drop("BEGIN").await?;
    a.query_drop("INSERT INTO t VALUES (1)").await?;
    assert_pool_held(&mut b, "inside a transaction").await;
    let mine: Vec<i32> = a.query("SELECT id FROM t").await?;
    assert_eq!(mine, [1], "the transaction sees its own row");
    a.query_drop("COMMIT").await?;
    let seen: Vec<i32> = b.query("SELECT id FROM t").await?;
    assert_eq!(seen, [1], "committed, and the connection is free again");

    // With autocommit off, the first statement opens a transaction.
    a.query_drop("SET autocommit = 0").await?;
    let idle: Vec<i32> = b.query("SELECT id FROM t").await?;
    assert_eq!(idle, [1], "autocommit=0 alone holds nothing");
    a.query_drop("INSERT INTO t VALUES (2)").await?;
    assert_pool_held(&mut b, "an implicit transaction").await;
    a.query_drop("ROLLBACK").await?;
    let after: Vec<i32> = b.query("SELECT id FROM t").await?;
    assert_eq!(after, [1], "rolled back");
    let autocommit: Option<i32> = a.query_first("SELECT @@autocommit").await?;
    assert_eq!(autocommit, Some(0), "the client's autocommit=0 follows it");
    let theirs: Option<i32> = b.query_first("SELECT @@autocommit").await?;
    assert_eq!(theirs, Some(1), "and stays the client's own");
    assert!(pins(&cluster, PinReason::Transaction) >= 2);
    a.disconnect().await?;
    b.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn pins_hold_while_their_state_exists_and_end_with_it() -> anyhow::Result<()> {
    let (cluster, token) = setup(1).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    a.query_drop("CREATE TABLE t (id INT)").await?;

    let held: Option<i32> = a.query_first("SELECT GET_LOCK('jobs', 0)").await?;
    assert_eq!(held, Some(1));
    assert_pool_held(&mut b, "an advisory lock").await;
    a.query_drop("DO RELEASE_LOCK('jobs')").await?;
    b.query_drop("SELECT 1").await?;
    assert_eq!(pins(&cluster, PinReason::AdvisoryLocks), 1);

    // Two locks; releasing one keeps the pin.
    a.query_drop("DO GET_LOCK('x', 0), GET_LOCK('y', 0)").await?;
    a.query_drop("DO RELEASE_LOCK('x')").await?;
    assert_pool_held(&mut b, "one lock left").await;
    a.query_drop("DO RELEASE_LOCK('y')").await?;
    b.query_drop("SELECT 1").await?;

    a.query_drop("LOCK TABLES t READ").await?;
    assert_pool_held(&mut b, "locked tables").await;
    a.query_drop("UNLOCK TABLES").await?;
    b.query_drop("SELECT 1").await?;

    a.query_drop("SET TRANSACTION READ ONLY").await?;
    assert_pool_held(&mut b, "characteristics for the next transaction").await;
    a.query_drop("START TRANSACTION").await?;
    let err = a.query_drop("INSERT INTO t VALUES (1)").await.expect_err("read only");
    assert_eq!(server_code(&err), Some(1792), "{err}");
    a.query_drop("COMMIT").await?;
    b.query_drop("SELECT 1").await?;

    // User variables and temporary tables live in one server session: the client keeps it
    // until it resets its connection.
    a.query_drop("SET @mine = 42").await?;
    let first: Option<u64> = a.query_first("SELECT CONNECTION_ID()").await?;
    assert_pool_held(&mut b, "a user variable").await;
    let mine: Option<i32> = a.query_first("SELECT @mine").await?;
    assert_eq!(mine, Some(42));
    let again: Option<u64> = a.query_first("SELECT CONNECTION_ID()").await?;
    assert_eq!(first, again, "the same server session throughout");
    a.reset().await?;
    let gone: Option<Option<i32>> = a.query_first("SELECT @mine").await?;
    assert_eq!(gone, Some(None), "COM_RESET_CONNECTION cleared it");
    // Reading a user variable pins too (its value lives in the session); a reset ends it.
    a.reset().await?;
    b.query_drop("SELECT 1").await?;

    a.query_drop("CREATE TEMPORARY TABLE tmp (x INT)").await?;
    assert_pool_held(&mut b, "a temporary table").await;
    a.query_drop("INSERT INTO tmp VALUES (1)").await?;
    a.disconnect().await?;
    // The connection was reset before b got it: no temporary table there.
    let err = b.query_drop("SELECT * FROM tmp").await.expect_err("not b's table");
    assert_eq!(server_code(&err), Some(1146), "{err}");
    assert!(pins(&cluster, PinReason::UserVariables) >= 1);
    assert!(pins(&cluster, PinReason::SessionObjects) >= 1);
    b.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn session_variables_and_schemas_follow_each_client() -> anyhow::Result<()> {
    let (cluster, token) = setup(2).await?;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = connect(&cluster, &token).await?;
        let zone = format!("+{:02}:00", i % 12);
        c.query_drop(format!("SET time_zone = '{zone}'")).await?;
        if i % 2 == 0 {
            c.query_drop("SET NAMES latin1").await?;
            c.query_drop("SET sql_mode = 'ANSI_QUOTES'").await?;
        }
        if i % 3 == 0 {
            c.query_drop("USE information_schema").await?;
        }
        clients.push((i, zone, c));
    }
    let tasks = clients.into_iter().map(|(i, zone, mut c)| async move {
        for _ in 0..5 {
            let row: Option<(String, String, String, Option<String>)> = c
                .query_first("SELECT @@time_zone, @@character_set_client, @@sql_mode, DATABASE()")
                .await?;
            let (tz, charset, mode, db) = row.unwrap_or_default();
            anyhow::ensure!(tz == zone, "client {i}: time zone {tz}, wanted {zone}");
            let want = if i % 2 == 0 { "latin1" } else { "utf8mb4" };
            anyhow::ensure!(charset == want, "client {i}: charset {charset}");
            anyhow::ensure!((i % 2 == 0) == (mode == "ANSI_QUOTES"), "client {i}: mode {mode}");
            let schema = if i % 3 == 0 { "information_schema" } else { "shop" };
            anyhow::ensure!(db.as_deref() == Some(schema), "client {i}: schema {db:?}");
        }
        anyhow::Ok(c)
    });
    let clients = futures::future::try_join_all(tasks).await?;
    let pinned: u64 = PinReason::ALL
        .iter()
        .filter(|r| !matches!(r, PinReason::Diagnostics))
        .map(|r| pins(&cluster, *r))
        .sum();
    assert_eq!(pinned, 0, "variables and schemas are replayed, never pinned");
    for c in clients {
        c.disconnect().await?;
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn prepared_statements_run_on_whichever_connection_is_free() -> anyhow::Result<()> {
    let (cluster, token) = setup(2).await?;
    let mut setup_conn = connect(&cluster, &token).await?;
    setup_conn.query_drop("CREATE TABLE items (id INT PRIMARY KEY, name TEXT)").await?;
    setup_conn.query_drop("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, NULL)").await?;
    setup_conn.disconnect().await?;

    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connect(&cluster, &token).await?);
    }
    let tasks = clients.into_iter().enumerate().map(|(i, mut c)| async move {
        let echo = c.prep("SELECT ? + 0, CONCAT('c', ?), ?").await?;
        let item = c.prep("SELECT name FROM items WHERE id = ?").await?;
        for round in 0..20i64 {
            let n = (i as i64) * 1000 + round;
            let row: Option<(i64, String, Option<i64>)> =
                c.exec_first(&echo, (n, n, None::<i64>)).await?;
            anyhow::ensure!(row == Some((n, format!("c{n}"), None)), "client {i}: {row:?}");
            let id = round % 3 + 1;
            let name: Option<Option<String>> = c.exec_first(&item, (id,)).await?;
            let want = match id {
                1 => Some("one".to_owned()),
                2 => Some("two".to_owned()),
                _ => None,
            };
            anyhow::ensure!(name == Some(want), "client {i}, item {id}: {name:?}");
        }
        c.close(echo).await?;
        anyhow::Ok(c)
    });
    let mut clients = futures::future::try_join_all(tasks).await?;

    // A statement resolves its tables in the schema it was prepared in, wherever it runs.
    let c = &mut clients[0];
    let stmt = c.prep("SELECT COUNT(*) FROM items").await?;
    c.query_drop("USE information_schema").await?;
    let n: Option<i64> = c.exec_first(&stmt, ()).await?;
    assert_eq!(n, Some(3));
    let err = c.query_drop("SELECT COUNT(*) FROM items").await.expect_err("not here");
    assert!(matches!(server_code(&err), Some(1109 | 1146)), "{err}");
    assert_eq!(pins(&cluster, PinReason::SessionObjects), 0, "statements never pinned");
    for c in clients {
        c.disconnect().await?;
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn parameter_data_that_cannot_reach_a_server_fails_its_execute_in_step() -> anyhow::Result<()>
{
    // COM_STMT_SEND_LONG_DATA has no reply: when no connection is free for the data, the
    // statement's execute must carry the error, and the client must stay in step.
    let (cluster, token) = setup(1).await?;
    let mut admin = connect(&cluster, &token).await?;
    admin.query_drop("CREATE TABLE docs (id INT PRIMARY KEY, body BLOB)").await?;
    let put = "INSERT INTO docs VALUES (?, ?)";
    let steps = serde_json::json!([
        ["prepare", 0, "put", put, 0],
        ["query", 1, "BEGIN"],
        ["query", 1, "SELECT COUNT(*) FROM docs"],
        ["bind", 0, "put", "ib", [1, null]],
        ["long", 0, "put", 1, "first"],
        // Waits, as the data did, for the connection c1 holds.
        ["query", 0, "SELECT 1"],
        // The connection is free again, but the data must not arrive without its start.
        ["query", 1, "COMMIT"],
        ["long", 0, "put", 1, "more"],
        ["execute", 0, "put", "", []],
        ["long", 0, "put", 1, "second"],
        ["execute", 0, "put", "", []],
        ["query", 0, "SELECT id, body FROM docs"],
    ]);
    let job = serde_json::json!({
        "host": "127.0.0.1", "port": cluster.mysql_port(), "user": "shop", "password": token,
        "database": "shop", "clients": 2, "steps": steps,
    });
    let got = run_job("php", &[MYSQLI_STEPS], &job).await?;
    let want = [
        "0 c0 params 2 fields 0",
        "4 c0 sent",
        "5 c0 ERR 1040 08004 ",
        "7 c0 sent",
        "8 c0 ERR 1040 08004 ",
        "9 c0 sent",
        "10 c0 affected 1 id 0 warnings 0 info null",
        "11 c0 fields [[\"id\",3],[\"body\",252]] rows [[\"1\",\"second\"]]",
    ];
    for line in want {
        assert!(got.iter().any(|l| l.starts_with(line)), "no {line:?} in {got:#?}");
    }
    let busy = got.iter().find(|l| l.starts_with("8 c0")).map_or("", String::as_str);
    assert!(busy.contains("stayed busy"), "{busy}");
    admin.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn insert_ids_found_rows_and_warnings_belong_to_their_client() -> anyhow::Result<()> {
    let (cluster, token) = setup(1).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    a.query_drop("CREATE TABLE seq (id INT PRIMARY KEY AUTO_INCREMENT, who TEXT)").await?;
    a.query_drop("INSERT INTO seq (who) VALUES ('a')").await?;
    b.query_drop("INSERT INTO seq (who) VALUES ('b'), ('b')").await?;
    let a_id: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await?;
    let b_id: Option<u64> = b.query_first("SELECT LAST_INSERT_ID()").await?;
    assert_eq!((a_id, b_id), (Some(1), Some(2)), "each client's own insert id");
    let stmt = a.prep("SELECT LAST_INSERT_ID()").await?;
    let again: Option<u64> = a.exec_first(&stmt, ()).await?;
    assert_eq!(again, Some(1), "through a prepared statement too");

    let page: Vec<i32> = a.query("SELECT SQL_CALC_FOUND_ROWS id FROM seq LIMIT 1").await?;
    assert_eq!(page.len(), 1);
    let total: Option<u64> = a.query_first("SELECT FOUND_ROWS()").await?;
    assert_eq!(total, Some(3));

    a.query_drop("SELECT 1/0").await?;
    let warnings: Vec<(String, u32, String)> = a.query("SHOW WARNINGS").await?;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].1, 1365, "division by zero");
    assert_eq!(pins(&cluster, PinReason::Transaction), 0);
    a.disconnect().await?;
    b.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn warnings_stay_readable_without_making_other_clients_wait() -> anyhow::Result<()> {
    let (cluster, token) = setup(1).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    a.query_drop("SELECT 1/0").await?;
    // The server keeps warnings across statements that use no table.
    a.query_drop("SELECT 1").await?;
    a.query_drop("COMMIT").await?;
    let warnings: Vec<(String, u32, String)> = a.query("SHOW WARNINGS").await?;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].1, 1365, "division by zero");

    // Idle a moment, a sets its connection aside; no one else wanted it, so a gets it back,
    // warnings and all.
    let pool = || cluster.running().mysql_pool.clone();
    let idle = || pool().map(|p| p.idle_count()).unwrap_or_default();
    let aside = || pool().map(|p| p.stats.taken_aside.load(Ordering::Relaxed)).unwrap_or_default();
    a.query_drop("SELECT 1/0").await?;
    eventually(Duration::from_secs(5), "a to set its connection aside", || async {
        (idle() == 1).then_some(())
    })
    .await?;
    let warnings: Vec<(String, u32, String)> = a.query("SHOW WARNINGS").await?;
    assert_eq!(warnings.len(), 1, "{warnings:?}");

    // Set aside, not held: b takes it rather than wait out the pool.
    a.query_drop("SELECT 1/0").await?;
    b.query_drop("SELECT 1").await?;
    assert_eq!(aside(), 1, "b took the connection a had set aside");
    // a's warnings were on it, and `SELECT 1` would have left them; b never sees them.
    let seen: Vec<(String, u32, String)> = b.query("SHOW WARNINGS").await?;
    assert!(seen.is_empty(), "b saw a's warnings: {seen:?}");
    let one: Option<i32> = a.query_first("SELECT 1").await?;
    assert_eq!(one, Some(1), "a borrows again as usual");
    assert!(pins(&cluster, PinReason::Diagnostics) >= 2);
    a.disconnect().await?;

    // Nor do the warnings of a client that left reach the next one on its connection.
    let mut c = connect(&cluster, &token).await?;
    c.query_drop("SELECT 1/0").await?;
    c.disconnect().await?;
    let seen: Vec<(String, u32, String)> = b.query("SHOW WARNINGS").await?;
    assert!(seen.is_empty(), "b saw c's warnings: {seen:?}");
    let count: Option<u32> = b.query_first("SELECT @@warning_count").await?;
    assert_eq!(count, Some(0));
    b.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn change_user_starts_afresh_on_the_same_connection() -> anyhow::Result<()> {
    let (cluster, token) = setup(1).await?;
    let admin = cluster.tenant("other-tenant").await?;
    let elsewhere = cluster.database(&admin, "elsewhere", "mysql").await?;
    let elsewhere = elsewhere["token"]["token"].as_str().unwrap_or_default().to_owned();
    let same = |pass: &str| ChangeUserOpts::default().with_pass(Some(pass.to_owned()));
    let mut a = connect(&cluster, &token).await?;
    a.query_drop("CREATE TABLE kv (k INT)").await?;
    a.query_drop("SET @mark = 7, time_zone = '+03:00'").await?;
    a.query_drop("BEGIN").await?;
    a.query_drop("INSERT INTO kv VALUES (1)").await?;
    // The session holds the only connection; the change must give it up, not wait for it.
    a.change_user(same(&token)).await?;

    // A wrong token is refused, and that connection ends.
    let mut b = connect(&cluster, &token).await?;
    let err = b.change_user(same("not-a-token")).await.expect_err("refused");
    assert_eq!(server_code(&err), Some(1045), "{err}");
    assert!(b.query_drop("SELECT 1").await.is_err(), "the connection ended");

    // A token of another database cannot take this connection there.
    let other = ChangeUserOpts::default()
        .with_user(Some("elsewhere".into()))
        .with_pass(Some(elsewhere))
        .with_db_name(Some("elsewhere".into()));
    let mut c = connect(&cluster, &token).await?;
    let err = c.change_user(other).await.expect_err("refused");
    assert_eq!(server_code(&err), Some(1044), "{err}");
    assert!(err.to_string().contains("connect anew"), "{err}");

    // Last, as reading a user variable pins a client to its connection.
    let rows: Option<i64> = a.query_first("SELECT COUNT(*) FROM kv").await?;
    assert_eq!(rows, Some(0), "the open transaction was rolled back");
    let fresh: Option<(Option<i64>, String, u8)> =
        a.query_first("SELECT @mark, @@time_zone, @@in_transaction").await?;
    assert_eq!(fresh, Some((None, "SYSTEM".into(), 0)));
    a.query_drop("INSERT INTO kv VALUES (2)").await?;
    a.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_insert_id_follows_its_client_into_a_transaction_on_another_connection()
-> anyhow::Result<()> {
    let (cluster, token) = setup(2).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    a.query_drop("CREATE TABLE seq (id INT PRIMARY KEY AUTO_INCREMENT, who TEXT)").await?;
    a.query_drop("INSERT INTO seq (who) VALUES ('a')").await?;
    // b takes the connection a's insert ran on, so a's transaction starts on the other one.
    b.query_drop("BEGIN").await?;
    b.query_drop("INSERT INTO seq (who) VALUES ('b'), ('b')").await?;
    a.query_drop("BEGIN").await?;
    let a_id: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await?;
    let b_id: Option<u64> = b.query_first("SELECT LAST_INSERT_ID()").await?;
    assert_eq!((a_id, b_id), (Some(1), Some(2)), "each client's own insert id");
    a.query_drop("COMMIT").await?;
    b.query_drop("COMMIT").await?;
    assert_eq!(pins(&cluster, PinReason::Transaction), 2);
    a.disconnect().await?;
    b.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

/// Many clients of two protocol flavours (mysql_async: DEPRECATE_EOF, session tracking;
/// PyMySQL: neither) on four backend connections; every result must carry the marker of the
/// query that asked for it.
#[tokio::test]
async fn soak_no_reply_ever_reaches_the_wrong_client() -> anyhow::Result<()> {
    // Transactions hold connections across client round trips: with 180 clients on four
    // connections, waits of a second or more are expected.
    let (cluster, token) = setup_waiting(4, Duration::from_secs(30)).await?;
    let mut admin = connect(&cluster, &token).await?;
    admin.query_drop("CREATE TABLE marks (client INT, round INT, mark VARCHAR(64))").await?;
    let checked = Arc::new(AtomicU64::new(0));

    let python = r#"
import os, sys, threading, pymysql
errors = []
def run(n):
    try:
        c = pymysql.connect(host="127.0.0.1", port=int(os.environ["PORT"]), user="shop",
                            password=os.environ["TOKEN"], database="shop", autocommit=True)
        cur = c.cursor()
        for r in range(40):
            mark = "py-%d-%d" % (n, r)
            cur.execute("SELECT %s, LENGTH(%s)", (mark, mark))
            row = cur.fetchone()
            if row != (mark, len(mark)):
                errors.append("%s got %r" % (mark, row))
            if r % 10 == 0:
                cur.execute("SET time_zone = %s", ("+%02d:00" % (n % 12),))
                cur.execute("SELECT @@time_zone")
                tz = cur.fetchone()[0]
                if tz != "+%02d:00" % (n % 12):
                    errors.append("%s time zone %s" % (mark, tz))
        c.close()
    except Exception as e:
        errors.append("%d: %r" % (n, e))
threads = [threading.Thread(target=run, args=(n,)) for n in range(30)]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors))
for e in errors[:5]: print(e)
"#;
    let py = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", python])
        .env("PORT", cluster.mysql_port().to_string())
        .env("TOKEN", &token)
        .output();

    let mut clients = Vec::new();
    for _ in 0..150 {
        clients.push(connect(&cluster, &token).await?);
    }
    let rust = futures::future::try_join_all(clients.into_iter().enumerate().map(|(i, mut c)| {
        let checked = checked.clone();
        async move {
            for round in 0..30usize {
                let mark = format!("rs-{i}-{round}");
                match round % 3 {
                    0 => {
                        let got: Option<String> = c.query_first(format!("SELECT '{mark}'")).await?;
                        anyhow::ensure!(got.as_deref() == Some(mark.as_str()), "{mark}: {got:?}");
                    }
                    1 => {
                        let got: Option<(String, usize)> =
                            c.exec_first("SELECT ?, ?", (mark.clone(), i)).await?;
                        anyhow::ensure!(got == Some((mark.clone(), i)), "{mark}: {got:?}");
                    }
                    _ => {
                        // A transaction: its rows are its own until commit.
                        let mut tx = c.start_transaction(Default::default()).await?;
                        tx.exec_drop(
                            "INSERT INTO marks VALUES (?, ?, ?)",
                            (i, round, mark.clone()),
                        )
                        .await?;
                        let got: Vec<String> = tx
                            .exec(
                                "SELECT mark FROM marks WHERE client = ? AND round = ?",
                                (i, round),
                            )
                            .await?;
                        anyhow::ensure!(got == [mark.clone()], "{mark}: {got:?}");
                        tx.commit().await?;
                    }
                }
                checked.fetch_add(1, Ordering::Relaxed);
            }
            c.disconnect().await?;
            anyhow::Ok(())
        }
    }));
    let (rust, py) = tokio::join!(rust, py);
    rust?;
    let py = py?;
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(stdout(&py).lines().next(), Some("0"), "python clients: {}", stdout(&py));
    assert_eq!(checked.load(Ordering::Relaxed), 150 * 30);
    let rows: Option<u64> = admin.query_first("SELECT COUNT(*) FROM marks").await?;
    assert_eq!(rows, Some(150 * 10));
    let sessions = server_sessions(&mut admin).await?;
    assert!(sessions <= 4, "{sessions} server sessions");
    admin.disconnect().await?;
    cluster.stop().await;
    Ok(())
}
