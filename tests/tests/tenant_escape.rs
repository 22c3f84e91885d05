//! A tenant holding a valid token tries to leave its database or lock other clients out of
//! it: reserved and wildcard names, account changes (`SET PASSWORD`, `ALTER USER`, and the
//! same through dynamic SQL, which the account repair undoes), password hashes in `SHOW
//! GRANTS`, and locks taken with a read-only token.

use dormouse_tests::Cluster;
use mysql_async::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn system_schema_names_are_refused_for_mysql_databases_at_once() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    for name in ["mysql", "sys", "performance_schema", "information_schema", "test"] {
        let body = json!({ "name": name, "engine": "mysql" });
        let started = std::time::Instant::now();
        let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {r:?}");
        assert_eq!(r.error_code(), "invalid_name", "{name}: {r:?}");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("reserved"), "{name}: {message}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "answered at once");
    }
    // A Redis database has no schemas: the name is fine there.
    cluster.database(&admin, "mysql", "redis").await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_wildcard_in_the_name_grants_that_schema_alone() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    // `_` matches any character in a grant: unescaped, `m_sql` would cover `mysql`.
    let db = cluster.database(&admin, "m_sql", "mysql").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("m_sql", &token, false)).await?;
    conn.query_drop("CREATE TABLE t (a INT)").await?;
    let grants: Vec<String> = conn.query("SHOW GRANTS").await?;
    assert!(grants.iter().any(|g| g.contains("ON `m\\_sql`.*")), "{grants:?}");
    assert!(!grants.iter().any(|g| g.contains("ON `m_sql`")), "{grants:?}");
    for sql in [
        "SELECT COUNT(*) FROM mysql.global_priv",
        "UPDATE mysql.global_priv SET Priv = '{}' WHERE User = 'dormouse'",
        "USE mysql",
    ] {
        let e = conn.query_drop(sql).await.expect_err(sql);
        assert!(matches!(server_code(&e), Some(1044 | 1142)), "{sql}: {e}");
    }
    conn.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn no_password_hash_reaches_the_tenant() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "shop", "mysql").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let mut shown: Vec<String> = conn.query("SHOW GRANTS").await?;
    shown.extend(conn.query::<String, _>("SHOW GRANTS FOR CURRENT_USER()").await?);
    conn.query_drop("CREATE PROCEDURE g() SHOW GRANTS").await?;
    shown.extend(conn.query::<String, _>("CALL g()").await?);
    conn.query_drop("PREPARE s FROM 'SHOW GRANTS'").await?;
    shown.extend(conn.query::<String, _>("EXECUTE s").await?);
    shown.extend(
        conn.query::<String, _>("SET STATEMENT max_statement_time=0 FOR SHOW GRANTS").await?,
    );
    // A prepared CALL's rows are binary: the hash is blanked in place.
    let called: Vec<String> = conn.exec("CALL g()", ()).await?;
    let blanked = |row: &String| {
        row.split("PASSWORD '")
            .skip(1)
            .all(|rest| rest.split('\'').next().is_some_and(|h| h.bytes().all(|b| b == b'*')))
    };
    assert!(called.iter().any(|g| g.contains("PASSWORD '*")), "{called:?}");
    assert!(called.iter().all(blanked), "{called:?}");
    // With backslashes taken literally, the text below is `SELECT '\'` and then SHOW GRANTS:
    // the proxy reads it both ways.
    conn.query_drop("SET sql_mode = 'NO_BACKSLASH_ESCAPES'").await?;
    let mut hidden = conn.query_iter(r"SELECT '\'; SHOW GRANTS; #'").await?;
    while !hidden.is_empty() {
        let rows: Vec<mysql_async::Row> = hidden.collect().await?;
        for row in rows {
            shown.push(row.get::<String, _>(0).unwrap_or_default());
        }
    }
    drop(hidden);
    assert!(shown.len() >= 6, "{shown:?}");
    for row in &shown {
        assert!(!row.contains("PASSWORD"), "{row}");
        assert!(!row.contains("dormouse"), "{row}");
    }
    // The binary protocol would carry the rows unrewritten: refused with a clear error.
    let e = conn.exec_drop("SHOW GRANTS", ()).await.expect_err("prepared SHOW GRANTS");
    assert_eq!(server_code(&e), Some(1295), "{e}");
    conn.disconnect().await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_session_cannot_change_the_shared_account_and_a_changed_one_heals() -> anyhow::Result<()>
{
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "shop", "mysql").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let (_, readonly) = cluster
        .token(&admin, json!({ "database": "shop", "role": "readonly", "ttl_seconds": 3600 }))
        .await?;
    for (who, token) in [("readwrite", &token), ("readonly", &readonly)] {
        let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", token, false)).await?;
        for sql in [
            "SET PASSWORD = PASSWORD('x')",
            "ALTER USER CURRENT_USER() IDENTIFIED BY 'x'",
            "PREPARE s FROM 'SET PASSWORD = PASSWORD(''x'')'",
            "EXECUTE IMMEDIATE 'SET PASSWORD = PASSWORD(''x'')'",
            "SET STATEMENT max_statement_time=0 FOR SET PASSWORD = PASSWORD('x')",
            "BEGIN NOT ATOMIC SET PASSWORD = PASSWORD('x'); END",
        ] {
            let e = conn.query_drop(sql).await.expect_err(sql);
            assert_eq!(server_code(&e), Some(1227), "{who}: {sql}: {e}");
            assert!(e.to_string().contains("Dormouse manages"), "{e}");
        }
        conn.disconnect().await?;
    }

    // Built in a variable, the statement gets past the proxy and changes the password of the
    // account every pooled connection logs in as.
    let mut attacker = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    attacker.query_drop("SET @q = CONCAT('SET PASSWORD = ', 'PASSWORD(''x'')')").await?;
    attacker.query_drop("PREPARE s FROM @q").await?;
    attacker.query_drop("EXECUTE s").await?;
    // Clients that each hold a connection of their own make the pool log in anew: those
    // logins are refused until control repairs the account, which they do not notice.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
        c.query_drop("BEGIN").await?;
        let one: Option<u8> = c.query_first("SELECT 1").await?;
        assert_eq!(one, Some(1));
        clients.push(c);
    }
    for c in clients {
        c.disconnect().await?;
    }
    attacker.disconnect().await?;
    let shown = cluster.api(Method::GET, "/v1/databases/shop", Some(&admin), None).await?;
    let reason = shown.body["last_error"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("restored the account"), "{:?}", shown.body);
    assert_eq!(shown.body["status"], "running");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_read_only_token_takes_no_row_or_named_locks() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "shop", "mysql").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let mut writer = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    writer.query_drop("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB").await?;
    writer.query_drop("INSERT INTO t VALUES (1)").await?;
    let (_, readonly) = cluster
        .token(&admin, json!({ "database": "shop", "role": "readonly", "ttl_seconds": 3600 }))
        .await?;
    let mut reader = mysql_async::Conn::new(cluster.mysql_opts("shop", &readonly, false)).await?;
    reader.query_drop("BEGIN").await?;
    for sql in [
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT GET_LOCK('jobs', 0)",
        "LOCK TABLES t READ",
    ] {
        let e = reader.query_drop(sql).await.expect_err(sql);
        assert_eq!(server_code(&e), Some(1227), "{sql}: {e}");
    }
    // Nor through SQL built at run time, which the proxy cannot read first.
    for sql in ["EXECUTE IMMEDIATE CONCAT('SELECT GET_', 'LOCK(''x'', 99)')", "PREPARE s FROM @q"] {
        let e = reader.query_drop(sql).await.expect_err(sql);
        assert_eq!(server_code(&e), Some(1227), "{sql}: {e}");
    }
    let e = reader.exec_drop("SELECT * FROM t WHERE id = ? FOR UPDATE", (1,)).await;
    assert_eq!(e.as_ref().err().and_then(server_code), Some(1227), "{e:?}");
    let ids: Vec<u32> = reader.query("SELECT id FROM t").await?;
    assert_eq!(ids, [1]);
    // The writer is never held up by the reader.
    writer.query_drop("UPDATE t SET id = 2 WHERE id = 1").await?;
    reader.disconnect().await?;
    writer.disconnect().await?;
    cluster.stop().await;
    Ok(())
}
