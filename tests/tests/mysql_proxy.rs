//! Stock MySQL clients (`mariadb` CLI, `mysql_async`, PyMySQL) through the proxy to real
//! `mariadbd` servers, with TLS and without: queries, transactions, prepared statements, large
//! rows, errors, refused logins, isolation, connection reuse and login limits.

use std::time::Duration;

use dormouse_proxy::claims::{Claims, Role};
use dormouse_tests::{Cluster, eventually, stdout, unix_socket_connections};
use mysql_async::prelude::*;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tenant `acme` with a MySQL database `shop`; returns (cluster, tenant admin token, db token).
async fn setup_with(
    configure: impl FnOnce(&mut dormouse_control::up::UpConfig),
) -> anyhow::Result<(Cluster, String, String)> {
    let cluster = Cluster::start_with(configure).await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "shop", "mysql").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok((cluster, admin, token))
}

async fn setup() -> anyhow::Result<(Cluster, String, String)> {
    setup_with(|_| {}).await
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_mariadb_cli_connects_with_tls_by_default_and_without_through_rsa() -> anyhow::Result<()>
{
    let (cluster, _, token) = setup().await?;
    let tls = cluster.mariadb("shop", &token, &["-e", "status"]).await?;
    assert!(stdout(&tls).contains("Cipher in use is TLS"), "{tls:?}");
    let plain = cluster.mariadb("shop", &token, &["--skip-ssl", "-e", "status"]).await?;
    assert!(stdout(&plain).contains("Not in use"), "{plain:?}");

    for extra in [&[][..], &["--skip-ssl"][..]] {
        let sql = "CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY, v VARCHAR(10)); \
                   REPLACE INTO t VALUES (1,'a'),(2,'b'),(3,'c'); SELECT id, v FROM t ORDER BY id";
        let mut args = extra.to_vec();
        args.extend(["-e", sql]);
        let out = cluster.mariadb("shop", &token, &args).await?;
        assert_eq!(stdout(&out), "id\tv\n1\ta\n2\tb\n3\tc", "{out:?}");
    }
    // The server's own errors arrive with its code and SQLSTATE.
    let out = cluster.mariadb("shop", &token, &["-e", "SELEC 1"]).await?;
    assert!(stderr(&out).contains("ERROR 1064 (42000)"), "{out:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn mysql_async_runs_transactions_prepared_statements_and_errors() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    for tls in [false, true] {
        let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, tls)).await?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, name TEXT, price DOUBLE)",
        )
        .await?;
        conn.query_drop("DELETE FROM items").await?;
        // Binary protocol: prepare once, execute many.
        conn.exec_batch(
            "INSERT INTO items VALUES (?, ?, ?)",
            (1..=50).map(|i| (i, format!("item {i}"), f64::from(i) * 1.5)),
        )
        .await?;
        let rows: Vec<(i32, String, f64)> =
            conn.exec("SELECT id, name, price FROM items WHERE id > ? ORDER BY id", (45,)).await?;
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0], (46, "item 46".into(), 69.0));

        // A rolled-back transaction leaves nothing; a committed one stays.
        let mut tx = conn.start_transaction(mysql_async::TxOpts::default()).await?;
        tx.exec_drop("INSERT INTO items VALUES (?, ?, ?)", (100, "gone", 0.0)).await?;
        tx.rollback().await?;
        let mut tx = conn.start_transaction(mysql_async::TxOpts::default()).await?;
        tx.exec_drop("INSERT INTO items VALUES (?, ?, ?)", (101, "kept", 0.0)).await?;
        tx.commit().await?;
        let ids: Vec<i32> = conn.query("SELECT id FROM items WHERE id >= 100").await?;
        assert_eq!(ids, [101], "tls={tls}");

        // Multi-statement text queries with several result sets.
        let mut result = conn.query_iter("SELECT 1; SELECT 2, 3").await?;
        let first: Vec<i32> = result.collect().await?;
        let second: Vec<(i32, i32)> = result.collect().await?;
        assert_eq!((first, second), (vec![1], vec![(2, 3)]));

        let err = conn.query_drop("SELECT * FROM missing_table").await.expect_err("no table");
        assert_eq!(server_code(&err), Some(1146), "{err}");
        let err = conn.exec_drop("SELEC ?", (1,)).await.expect_err("syntax");
        assert_eq!(server_code(&err), Some(1064), "{err}");
        // The session survives the errors.
        let one: Option<i32> = conn.query_first("SELECT 1").await?;
        assert_eq!(one, Some(1));
        conn.disconnect().await?;
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn rows_larger_than_a_16_mib_packet_round_trip() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    conn.query_drop("CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB)").await?;
    let big: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    conn.exec_drop("INSERT INTO blobs VALUES (1, ?)", (big.clone(),)).await?;
    let back: Option<Vec<u8>> =
        conn.exec_first("SELECT data FROM blobs WHERE id = ?", (1,)).await?;
    assert!(back.as_ref() == Some(&big), "binary protocol round trip");
    let back: Option<Vec<u8>> = conn.query_first("SELECT data FROM blobs").await?;
    assert!(back.as_ref() == Some(&big), "text protocol round trip");
    // Exactly 16 MiB - 1 bytes of payload ends with an empty continuation packet.
    let len: Option<u64> = conn.query_first("SELECT LENGTH(REPEAT('x', 16777215 - 4))").await?;
    assert_eq!(len, Some(16_777_211));
    let text: Option<String> = conn.query_first("SELECT REPEAT('y', 16777211)").await?;
    assert_eq!(text.map(|t| t.len()), Some(16_777_211));
    conn.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn pymysql_connects_with_and_without_tls() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let script = r#"
import os, sys, pymysql
ssl = {"ca": os.environ["CA"]} if sys.argv[1] == "tls" else None
c = pymysql.connect(host="127.0.0.1", port=int(os.environ["PORT"]), user="shop",
                    password=os.environ["TOKEN"], database="shop", ssl=ssl)
cur = c.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS py (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT)")
cur.execute("INSERT INTO py (v) VALUES (%s), (%s)", ("x", "y"))
c.commit()
cur.execute("SELECT COUNT(*) FROM py")
cur.execute("SHOW STATUS LIKE 'Ssl_version'")
print(cur.rowcount, sys.argv[1])
try:
    cur.execute("SELECT * FROM nope")
except pymysql.err.ProgrammingError as e:
    print("error", e.args[0])
"#;
    for mode in ["plain", "tls"] {
        let out = tokio::process::Command::new("/usr/bin/python3")
            .args(["-c", script, mode])
            .env("PORT", cluster.mysql_port().to_string())
            .env("TOKEN", &token)
            .env("CA", cluster.tls_cert())
            .output()
            .await?;
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("1 {mode}\nerror 1146"), "{mode}");
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn wrong_expired_revoked_and_foreign_tokens_get_1045() -> anyhow::Result<()> {
    let (cluster, admin, token) = setup().await?;
    let service = &cluster.running().service;
    let tenant_id = service.store().list_tenants().await?.first().map(|t| t.id.clone());
    let expired = service.keys().sign(&Claims {
        sub: tenant_id,
        db: Some("shop".into()),
        role: Role::Readwrite,
        exp: jsonwebtoken::get_current_timestamp() - 3600,
        jti: "expired0000000000".into(),
    })?;
    let (id, revoked) = cluster.token(&admin, json!({ "database": "shop" })).await?;
    cluster.api(Method::DELETE, &format!("/v1/tokens/{id}"), Some(&admin), None).await?;
    let other_tenant = cluster.tenant("globex").await?;
    let other_db = cluster.database(&other_tenant, "shop", "mysql").await?;
    let other_db_token = other_db["token"]["token"].as_str().unwrap_or_default().to_owned();
    cluster.database(&admin, "second", "mysql").await?;

    let cases = [
        ("shop", "not-a-token".to_owned()),
        ("shop", expired),
        ("shop", revoked),
        ("shop", cluster.admin_token()),
        ("second", token.clone()),
        ("nosuchdb", admin.clone()),
        ("nosuchdb", other_tenant.clone()),
    ];
    for tls in [false, true] {
        for (user, password) in &cases {
            let err = mysql_async::Conn::new(cluster.mysql_opts(user, password, tls)).await.err();
            let err = err.ok_or_else(|| anyhow::anyhow!("{user} logged in"))?;
            assert_eq!(server_code(&err), Some(1045), "{user}: {err}");
            assert!(
                err.to_string().contains(&format!(
                    "Access denied for user '{user}'@'127.0.0.1' (using password: YES)"
                )),
                "{err}"
            );
        }
    }
    // The other tenant's database of the same name is its own, not ours.
    let mut conn =
        mysql_async::Conn::new(cluster.mysql_opts("shop", &other_db_token, false)).await?;
    conn.query_drop("CREATE TABLE theirs (id INT)").await?;
    conn.disconnect().await?;
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let tables: Vec<String> = conn.query("SHOW TABLES").await?;
    assert!(tables.is_empty(), "{tables:?}");
    conn.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_proxy_reaches_a_server_on_its_host_over_the_unix_socket() -> anyhow::Result<()> {
    let (cluster, admin, token) = setup().await?;
    let (_, readonly) =
        cluster.token(&admin, json!({ "database": "shop", "role": "readonly" })).await?;
    // The server calls socket clients `localhost`; TCP ones would be `127.0.0.1`.
    for (token, internal) in [(&token, "dormouse@localhost"), (&readonly, "dormouse_ro@localhost")]
    {
        let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", token, false)).await?;
        let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        assert_eq!(user.as_deref(), Some(internal));
        conn.disconnect().await?;
    }
    assert!(unix_socket_connections(cluster.data_dir(), "mysqld.sock")? >= 1);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_token_that_logged_in_before_passes_fast_until_it_is_revoked() -> anyhow::Result<()> {
    let (cluster, admin, _) = setup().await?;
    let (id, token) = cluster.token(&admin, json!({ "database": "shop" })).await?;
    // The first login hands the token over (RSA, no TLS); later ones send only its scramble
    // and take caching_sha2_password's fast path, with and without TLS.
    for tls in [false, false, true, false] {
        let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, tls)).await?;
        let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
        assert!(user.is_some());
        conn.disconnect().await?;
    }
    // A scramble of another password for a user with remembered tokens does not pass.
    let err = mysql_async::Conn::new(cluster.mysql_opts("shop", "not-the-token", false)).await;
    assert_eq!(err.err().as_ref().and_then(server_code), Some(1045));
    // A remembered token is still checked in full at every login.
    cluster.api(Method::DELETE, &format!("/v1/tokens/{id}"), Some(&admin), None).await?;
    for tls in [false, true] {
        let err = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, tls)).await.err();
        assert_eq!(err.as_ref().and_then(server_code), Some(1045), "revoked, tls={tls}: {err:?}");
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_token_longer_than_the_rsa_limit_gets_a_clear_error_not_a_hang() -> anyhow::Result<()> {
    let (cluster, _, _) = setup().await?;
    let long = "x".repeat(600);
    let started = std::time::Instant::now();
    // Without TLS the client cannot encrypt it: it says so itself.
    let out = cluster.mariadb("shop", &long, &["--skip-ssl", "-e", "SELECT 1"]).await?;
    assert!(!out.status.success());
    assert!(!stderr(&out).is_empty(), "{out:?}");
    // With TLS it reaches the proxy, which refuses it like any bad token.
    let out = cluster.mariadb("shop", &long, &["-e", "SELECT 1"]).await?;
    assert!(stderr(&out).contains("ERROR 1045 (28000)"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_tenant_sees_only_its_schema_and_cannot_grant_itself_privileges() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let dbs: Vec<String> = conn.query("SHOW DATABASES").await?;
    assert_eq!(dbs, ["information_schema", "shop"]);
    for (sql, code) in [
        ("SELECT * FROM mysql.user", 1142),
        ("CREATE DATABASE other", 1044),
        // Refused by the proxy: Dormouse manages the accounts.
        ("GRANT ALL ON *.* TO CURRENT_USER()", 1227),
        ("CREATE USER evil IDENTIFIED BY 'x'", 1227),
        ("SHUTDOWN", 1227),
        ("SELECT LOAD_FILE('/etc/passwd') IS NULL", 0),
    ] {
        match conn.query_drop(sql).await {
            Err(e) => assert_eq!(server_code(&e), Some(code), "{sql}: {e}"),
            Ok(()) => assert_eq!(code, 0, "{sql} succeeded"),
        }
    }
    let file: Option<Option<String>> = conn.query_first("SELECT LOAD_FILE('/etc/passwd')").await?;
    assert_eq!(file, Some(None), "no FILE privilege");
    let err = conn
        .query_drop("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE x")
        .await
        .expect_err("refused");
    assert!(server_code(&err).is_some(), "{err}");
    conn.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn kill_reaches_only_the_clients_own_session() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let mut a = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let mut b = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let a_id: Option<u64> = a.query_first("SELECT CONNECTION_ID()").await?;
    let a_id = a_id.unwrap_or_default();
    for sql in [
        format!("KILL {a_id}"),
        format!("KILL QUERY {a_id}"),
        "KILL USER dormouse".into(),
        format!("SELECT 1; /*!50000 KILL {a_id} */"),
    ] {
        let err = b.query_drop(&sql).await.expect_err("refused");
        assert_eq!(server_code(&err), Some(1095), "{sql}: {err}");
    }
    let still: Option<i32> = a.query_first("SELECT 1").await?;
    assert_eq!(still, Some(1), "a was not killed");
    a.disconnect().await?;
    b.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn closed_connections_are_reused_and_no_state_crosses_between_clients() -> anyhow::Result<()>
{
    let (cluster, _, token) = setup().await?;
    let opts = cluster.mysql_opts("shop", &token, false);
    let pool = cluster.running().mysql_pool.clone().ok_or_else(|| anyhow::anyhow!("no pool"))?;

    let mut admin = mysql_async::Conn::new(opts.clone()).await?;
    admin.query_drop("CREATE TABLE t (id INT PRIMARY KEY)").await?;
    let before = backend_connections(&mut admin).await?;
    for _ in 0..200 {
        let mut c = mysql_async::Conn::new(opts.clone()).await?;
        let one: Option<i32> = c.query_first("SELECT 1").await?;
        assert_eq!(one, Some(1));
        c.disconnect().await?;
    }
    let after = backend_connections(&mut admin).await?;
    assert!(
        after - before < 20,
        "200 client connections cost {} backend connections",
        after - before
    );
    admin.disconnect().await?;

    // One client leaves state behind; the next client on the same backend session sees none.
    // Wait until every earlier session's connection is back, so the dirty one is the newest.
    settled(&pool).await?;
    let mut dirty = mysql_async::Conn::new(opts.clone()).await?;
    let session: Option<u64> = dirty.query_first("SELECT CONNECTION_ID()").await?;
    dirty.query_drop("SET @secret = 42").await?;
    dirty.query_drop("SET time_zone = '+05:00'").await?;
    dirty.query_drop("CREATE TEMPORARY TABLE tmp (x INT)").await?;
    dirty.query_drop("BEGIN").await?;
    dirty.query_drop("INSERT INTO t VALUES (7)").await?;
    dirty.disconnect().await?;
    settled(&pool).await?;

    let mut clean = mysql_async::Conn::new(opts.clone()).await?;
    let same: Option<u64> = clean.query_first("SELECT CONNECTION_ID()").await?;
    assert_eq!(same, session, "the same backend session was reused");
    let secret: Option<Option<i64>> = clean.query_first("SELECT @secret").await?;
    assert_eq!(secret, Some(None));
    let tz: Option<String> = clean.query_first("SELECT @@time_zone").await?;
    assert_eq!(tz.as_deref(), Some("SYSTEM"));
    let err = clean.query_drop("SELECT * FROM tmp").await.expect_err("temp table gone");
    assert_eq!(server_code(&err), Some(1146));
    let rows: Vec<i32> = clean.query("SELECT id FROM t").await?;
    assert!(rows.is_empty(), "the open transaction was rolled back");
    let db: Option<String> = clean.query_first("SELECT DATABASE()").await?;
    assert_eq!(db.as_deref(), Some("shop"));
    clean.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

/// Waits until every lease of the pool has ended (returned or discarded).
async fn settled(pool: &dormouse_proxy::mysql::pool::Pool) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    eventually(Duration::from_secs(10), "pooled connections to come back", || {
        let s = &pool.stats;
        let ended = s.returned.load(Relaxed) + s.discarded.load(Relaxed);
        let leased = s.hits.load(Relaxed) + s.misses.load(Relaxed);
        async move { (ended >= leased).then_some(()) }
    })
    .await
}

/// How many connections the backend server has accepted so far.
async fn backend_connections(conn: &mut mysql_async::Conn) -> anyhow::Result<u64> {
    let row: Option<(String, u64)> =
        conn.query_first("SHOW GLOBAL STATUS LIKE 'Connections'").await?;
    Ok(row.map(|(_, n)| n).unwrap_or_default())
}

/// Reads one packet's payload from a raw connection.
async fn read_payload(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(payload)
}

fn err_code(payload: &[u8]) -> Option<u16> {
    (payload.first() == Some(&0xff)).then(|| u16::from_le_bytes([payload[1], payload[2]]))
}

#[tokio::test]
async fn slow_malformed_oversized_and_excess_connections_get_errors_not_hangs() -> anyhow::Result<()>
{
    let (cluster, _, token) = setup_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.mysql.handshake_timeout = Duration::from_millis(300);
            proxy.mysql.max_packet = 1024 * 1024;
            proxy.max_client_connections = 3;
        }
    })
    .await?;
    let port = cluster.mysql_port();

    // Silent after the greeting: 1043 once the handshake deadline passes.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await?;
    let greeting = read_payload(&mut silent).await?;
    assert_eq!(greeting[0], 10, "protocol 10 greeting");
    let err = tokio::time::timeout(Duration::from_secs(5), read_payload(&mut silent)).await??;
    assert_eq!(err_code(&err), Some(1043));
    drop(silent);

    // Garbage instead of a handshake response.
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).await?;
    read_payload(&mut garbage).await?;
    garbage.write_all(&[5, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0x00]).await?;
    let err = tokio::time::timeout(Duration::from_secs(5), read_payload(&mut garbage)).await??;
    assert_eq!(err_code(&err), Some(1043));
    drop(garbage);

    // A command over the packet limit.
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let huge = format!("SELECT '{}'", "z".repeat(2 * 1024 * 1024));
    let err = conn.query_drop(huge).await.expect_err("too large");
    assert_eq!(server_code(&err), Some(1153), "{err}");
    drop(conn);

    // The listener's connection limit: the fourth client is told so.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?);
    }
    let err = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false))
        .await
        .expect_err("over the limit");
    assert_eq!(server_code(&err), Some(1040), "{err}");
    for conn in held {
        conn.disconnect().await?;
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_told_to_slow_down_but_a_valid_token_still_logs_in()
-> anyhow::Result<()> {
    let (cluster, _, token) = setup_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.failed_logins_per_second = 1; // a burst of 5
        }
    })
    .await?;
    for expected in [1045, 1045, 1045, 1045, 1045, 1226] {
        let err = mysql_async::Conn::new(cluster.mysql_opts("shop", "wrong", false))
            .await
            .expect_err("bad");
        assert_eq!(server_code(&err), Some(expected), "{err}");
    }
    // Successful logins are never throttled, whatever else came from the address.
    let conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    conn.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_readonly_token_can_read_but_not_write() -> anyhow::Result<()> {
    let (cluster, admin, token) = setup().await?;
    let mut rw = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    rw.query_drop("CREATE TABLE t (v INT); INSERT INTO t VALUES (1)").await?;
    rw.disconnect().await?;
    let (_, readonly) =
        cluster.token(&admin, json!({ "database": "shop", "role": "readonly" })).await?;
    for tls in [false, true] {
        let mut ro = mysql_async::Conn::new(cluster.mysql_opts("shop", &readonly, tls)).await?;
        let v: Option<i32> = ro.query_first("SELECT v FROM t").await?;
        assert_eq!(v, Some(1));
        for write in
            ["INSERT INTO t VALUES (2)", "DELETE FROM t", "DROP TABLE t", "CREATE TABLE u (x INT)"]
        {
            let err = ro.query_drop(write).await.expect_err("read-only");
            assert_eq!(server_code(&err), Some(1142), "{write}: {err}");
        }
        ro.disconnect().await?;
    }
    // A read-write session right after still writes (pools are kept apart by user).
    let mut rw = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    rw.query_drop("INSERT INTO t VALUES (3)").await?;
    // COM_CHANGE_USER to the read-only token on the same connection: read-only from then on,
    // and back.
    let to = |pass: &str| mysql_async::ChangeUserOpts::default().with_pass(Some(pass.into()));
    rw.change_user(to(&readonly)).await?;
    let err = rw.query_drop("INSERT INTO t VALUES (4)").await.expect_err("read-only");
    assert_eq!(server_code(&err), Some(1142), "{err}");
    rw.change_user(to(&token)).await?;
    rw.query_drop("INSERT INTO t VALUES (5)").await?;
    rw.disconnect().await?;
    cluster.stop().await;
    Ok(())
}
