//! Backups and restores end to end: real servers, real clients, the local store and a real
//! S3-compatible server (moto).

use std::time::Duration;

use anyhow::Context;
use dormouse_control::store::{BackupKind, BackupRecord, BackupStatus};
use dormouse_tests::s3::MotoServer;
use dormouse_tests::{ApiResponse, Cluster, eventually};
use object_store::ObjectStoreExt;
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Takes a backup of `db` and waits until it has finished.
async fn backup(cluster: &Cluster, admin: &str, db: &str) -> anyhow::Result<Value> {
    let path = format!("/v1/databases/{db}/backups");
    let r = cluster.api(Method::POST, &path, Some(admin), Some(json!({"name": "t"}))).await?;
    anyhow::ensure!(r.status == StatusCode::ACCEPTED, "backup of {db}: {r:?}");
    let id = r.body["id"].as_str().context("id")?.to_owned();
    finished(cluster, admin, &id).await
}

async fn finished(cluster: &Cluster, admin: &str, id: &str) -> anyhow::Result<Value> {
    let path = format!("/v1/backups/{id}");
    eventually(Duration::from_secs(120), "the backup to finish", || async {
        let r = cluster.api(Method::GET, &path, Some(admin), None).await.ok()?;
        matches!(r.body["status"].as_str(), Some("completed" | "failed")).then_some(r.body)
    })
    .await
}

async fn restore_in_place(
    cluster: &Cluster,
    admin: &str,
    db: &str,
    backup: &str,
) -> anyhow::Result<ApiResponse> {
    let path = format!("/v1/databases/{db}/restore");
    cluster.api(Method::POST, &path, Some(admin), Some(json!({ "backup": backup }))).await
}

async fn redis(
    cluster: &Cluster,
    db: &str,
    token: &str,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(cluster.redis_url(db, token))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

fn status(body: &Value) -> &str {
    body["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn redis_backups_restore_in_place_undoably_and_into_a_branch() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "cache", "redis").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = redis(&cluster, "cache", &token).await?;
    let () = conn.set("before", "1").await?;

    let taken = backup(&cluster, &admin, "cache").await?;
    assert_eq!(status(&taken), "completed", "{taken}");
    assert_eq!((taken["hot"].as_bool(), taken["format"].as_str()), (Some(true), Some("rdb")));
    assert_eq!(taken["sha256"].as_str().map(str::len), Some(64));
    assert!(taken["stored_bytes"].as_u64() > Some(0));
    let id = taken["id"].as_str().context("id")?;
    let () = conn.set("after", "2").await?;

    let r = restore_in_place(&cluster, &admin, "cache", id).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["database"]["status"], "running");
    let kept = &r.body["previous_data"];
    assert_eq!((status(kept), kept["kind"].as_str()), ("completed", Some("pre_restore")));
    // The same token reaches the restored data.
    let mut conn = redis(&cluster, "cache", &token).await?;
    assert_eq!(conn.get::<_, Option<String>>("before").await?, Some("1".into()));
    assert_eq!(conn.get::<_, Option<String>>("after").await?, None, "written after the backup");

    // Undo: the data the restore replaced comes back.
    let kept = kept["id"].as_str().context("kept id")?;
    assert_eq!(restore_in_place(&cluster, &admin, "cache", kept).await?.status, StatusCode::OK);
    let mut conn = redis(&cluster, "cache", &token).await?;
    assert_eq!(conn.get::<_, Option<String>>("after").await?, Some("2".into()));

    // A branch: a new database from the first backup; the engine comes from the backup.
    let body = json!({ "name": "cache-branch", "restore": { "backup": id } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["engine"], "redis");
    let branch_token = r.body["token"]["token"].as_str().context("token")?;
    let mut branch = redis(&cluster, "cache-branch", branch_token).await?;
    assert_eq!(branch.get::<_, Option<String>>("before").await?, Some("1".into()));
    assert_eq!(branch.get::<_, Option<String>>("after").await?, None);

    let listed =
        cluster.api(Method::GET, "/v1/databases/cache/backups", Some(&admin), None).await?;
    let kinds: Vec<&str> = listed.body["backups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["pre_restore", "pre_restore", "manual"], "newest first");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_suspended_database_is_backed_up_and_restored_without_a_wake() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "sleepy", "redis").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = redis(&cluster, "sleepy", &token).await?;
    let () = conn.set("k", "v").await?;
    drop(conn);
    let r = cluster.api(Method::POST, "/v1/databases/sleepy/suspend", Some(&admin), None).await?;
    assert_eq!(status(&r.body), "suspended", "{r:?}");
    let wakes = cluster.running().service.metrics().wakes_ok(dormouse_engines::EngineKind::Redis);

    let taken = backup(&cluster, &admin, "sleepy").await?;
    assert_eq!(status(&taken), "completed", "{taken}");
    assert_eq!((taken["hot"].as_bool(), taken["format"].as_str()), (Some(false), Some("tar")));
    let id = taken["id"].as_str().context("id")?;
    let r = restore_in_place(&cluster, &admin, "sleepy", id).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["database"]["status"], "suspended", "no compute ran");
    assert_eq!(r.body["previous_data"]["hot"], false);
    assert_eq!(
        cluster.running().service.metrics().wakes_ok(dormouse_engines::EngineKind::Redis),
        wakes,
        "nothing woke"
    );

    let mut conn = redis(&cluster, "sleepy", &token).await?;
    assert_eq!(conn.get::<_, Option<String>>("k").await?, Some("v".into()));

    // A database created lazily and never started has nothing to keep, and stays asleep.
    let body = json!({ "name": "fresh", "engine": "redis", "lazy": true });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    let fresh_token = r.body["token"]["token"].as_str().context("token")?.to_owned();
    let r = restore_in_place(&cluster, &admin, "fresh", id).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        (r.body["database"]["status"].as_str(), &r.body["previous_data"]),
        (Some("suspended"), &Value::Null)
    );
    let mut conn = redis(&cluster, "fresh", &fresh_token).await?;
    assert_eq!(conn.get::<_, Option<String>>("k").await?, Some("v".into()));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn mysql_backups_in_s3_branch_under_a_new_name_and_a_tampered_one_is_refused()
-> anyhow::Result<()> {
    let s3 = MotoServer::start("dormouse-backups").await?;
    let config = s3.backup_config("prod")?;
    let cluster = Cluster::start_with(|c| c.backup = config).await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "shop", "mysql").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let setup = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20)); \
                 INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');";
    let out = cluster.mariadb("shop", &token, &["shop", "-e", setup]).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let taken = backup(&cluster, &admin, "shop").await?;
    assert_eq!(status(&taken), "completed", "{taken}");
    assert_eq!((taken["hot"].as_bool(), taken["format"].as_str()), (Some(true), Some("xbstream")));
    let id = taken["id"].as_str().context("id")?.to_owned();
    // Stored in the bucket, under the prefix, sealed: no table data in the clear.
    let record: BackupRecord =
        cluster.running().service.store().backup(&id).await?.context("row")?;
    let key = object_store::path::Path::from(record.object_key.clone().context("object key")?);
    let objects = cluster.running().service.backups().objects().clone();
    let stored = objects.get(&key).await?.bytes().await?;
    assert_eq!(stored.len() as u64, record.stored_bytes);
    assert!(!stored.windows(5).any(|w| w == b"three"));

    let body = json!({ "name": "shop-branch", "restore": { "backup": id } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let branch_token = r.body["token"]["token"].as_str().context("token")?;
    let out = cluster
        .mariadb(
            "shop-branch",
            branch_token,
            &["shop-branch", "-e", "SELECT name FROM items ORDER BY id"],
        )
        .await?;
    assert_eq!(
        dormouse_tests::stdout(&out),
        "name\none\ntwo\nthree",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Someone with the bucket changes one byte: the restore is refused, nothing is created.
    let mut changed = stored.to_vec();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    objects.put(&key, changed.into()).await?;
    let body = json!({ "name": "shop-bad", "restore": { "backup": id } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "backup_corrupt"),
        "{r:?}"
    );
    let r = cluster.api(Method::GET, "/v1/databases/shop-bad", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // In place too: refused, and the database keeps its data.
    let r = restore_in_place(&cluster, &admin, "shop", &id).await?;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let out =
        cluster.mariadb("shop", &token, &["shop", "-e", "SELECT COUNT(*) AS n FROM items"]).await?;
    assert_eq!(dormouse_tests::stdout(&out), "n\n3");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_backup_running_when_control_stops_is_failed_at_its_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    cluster
        .api(
            Method::POST,
            "/v1/databases",
            Some(&admin),
            Some(json!({"name": "c", "engine": "redis", "lazy": true})),
        )
        .await?;
    let service = &cluster.running().service;
    let db = service.store().database(&tenant_id, "c").await?.context("db")?;
    // A row as a control that stopped mid-backup left it.
    let running = BackupRecord {
        id: "b-interrupted".into(),
        tenant_id: tenant_id.clone(),
        database_id: db.id.clone(),
        database_name: "c".into(),
        engine: db.engine,
        plan: db.plan.clone(),
        name: None,
        kind: BackupKind::Manual,
        status: BackupStatus::Running,
        reason: None,
        format: None,
        hot: true,
        parent_id: None,
        object_key: None,
        plain_bytes: 0,
        stored_bytes: 0,
        sha256: None,
        position: None,
        data_version: None,
        created_at: 1,
        started_at: Some(1),
        completed_at: None,
        expires_at: None,
    };
    service.store().insert_backup(&running).await?;
    cluster.restart().await?;
    let r = cluster.api(Method::GET, "/v1/backups/b-interrupted", Some(&admin), None).await?;
    assert_eq!(status(&r.body), "failed", "{r:?}");
    assert!(r.body["reason"].as_str().unwrap_or_default().contains("control stopped"), "{r:?}");
    let r = restore_in_place(&cluster, &admin, "c", "b-interrupted").await?;
    assert_eq!(r.status, StatusCode::CONFLICT, "a failed backup is never restored: {r:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn backup_mistakes_get_precise_errors_and_tenants_see_only_their_own() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let other = cluster.tenant("rival").await?;
    cluster.database(&admin, "kv", "redis").await?;
    let taken = backup(&cluster, &admin, "kv").await?;
    let id = taken["id"].as_str().context("id")?;

    let r = cluster.api(Method::GET, "/v1/backups/b-nope", Some(&admin), None).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::NOT_FOUND, "not_found"));
    for (method, path) in
        [(Method::GET, format!("/v1/backups/{id}")), (Method::DELETE, format!("/v1/backups/{id}"))]
    {
        let r = cluster.api(method, &path, Some(&other), None).await?;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "another tenant's backup: {r:?}");
    }
    let r = cluster.api(Method::GET, "/v1/backups", Some(&other), None).await?;
    assert_eq!(r.body["backups"], json!([]));
    let body = json!({ "name": "stolen", "restore": { "backup": id } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&other), Some(body)).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

    let body = json!({ "name": "sql", "engine": "mysql", "restore": { "backup": id } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_restore"), "{r:?}");
    assert!(r.body["error"]["message"].as_str().unwrap_or_default().contains("redis"), "{r:?}");
    let body = json!({ "name": "x", "restore": { "database": "kv", "time": "yesterday" } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_restore"), "{r:?}");

    let (_, readonly) = cluster.token(&admin, json!({ "role": "readonly" })).await?;
    let r = cluster.api(Method::POST, "/v1/databases/kv/backups", Some(&readonly), None).await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = cluster.api(Method::GET, "/v1/backups", Some(&readonly), None).await?;
    assert_eq!(r.body["backups"].as_array().map(Vec::len), Some(1), "readers may list");
    let r = cluster.api(Method::DELETE, &format!("/v1/backups/{id}"), Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = cluster.api(Method::GET, &format!("/v1/backups/{id}"), Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn schedules_skip_unchanged_data_and_retention_prunes_old_backups() -> anyhow::Result<()> {
    use dormouse_control::backup::schedule::tick;
    let cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    let created = cluster.database(&admin, "s", "redis").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let service = cluster.running().service.clone();
    let born = service.store().database(&tenant_id, "s").await?.context("db")?.created_at;
    let mut conn = redis(&cluster, "s", &token).await?;
    let () = conn.set("k", 1).await?;

    // The default schedule is daily: nothing is due an hour in.
    let pass = tick(&service, born + 3600).await?;
    assert!(pass.queued.is_empty() && pass.unchanged.is_empty(), "{pass:?}");
    let change = json!({ "every": "1h", "keep_count": 2, "keep_days": 1 });
    let path = "/v1/databases/s/backup-schedule";
    let r = cluster.api(Method::PATCH, path, Some(&admin), Some(change)).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let bad = json!({ "every": "whenever" });
    let r = cluster.api(Method::PATCH, path, Some(&admin), Some(bad)).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_every"));

    // Hourly now: each pass an hour apart backs up what changed, and only that.
    let mut taken = Vec::new();
    for hour in 1..=5 {
        let pass = tick(&service, born + hour * 3600).await?;
        if hour % 2 == 1 {
            let [id] = pass.queued.as_slice() else { anyhow::bail!("hour {hour}: {pass:?}") };
            assert_eq!(status(&finished(&cluster, &admin, id).await?), "completed");
            taken.push(id.clone());
        } else {
            assert_eq!(pass.unchanged, ["s"], "hour {hour}: {pass:?}");
            // A write after the backup makes the next pass take one.
            let () = conn.incr("k", 1).await?;
        }
    }
    let r = cluster.api(Method::GET, path, Some(&admin), None).await?;
    assert_eq!(r.body["last_result"], "queued", "{r:?}");

    // Three days on, keeping the newest two and anything younger than a day: the oldest goes.
    let pass = tick(&service, born + 3 * 86_400).await?;
    assert_eq!(pass.deleted, [taken[0].clone()], "{pass:?}");
    let r =
        cluster.api(Method::GET, &format!("/v1/backups/{}", taken[0]), Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn expired_and_deleted_databases_come_back_within_the_undo_window() -> anyhow::Result<()> {
    use dormouse_control::backup::schedule::tick;
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let body = json!({ "name": "preview", "engine": "redis", "ttl_seconds": 3600 });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert!(r.body["expires_at"].is_string(), "{r:?}");
    let token = r.body["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = redis(&cluster, "preview", &token).await?;
    let () = conn.set("k", "kept").await?;
    drop(conn);

    let service = cluster.running().service.clone();
    let now = dormouse_control::service::now();
    let pass = tick(&service, now + 2 * 3600).await?;
    assert_eq!(pass.expired, ["preview"], "{pass:?}");
    let r = cluster.api(Method::GET, "/v1/databases/preview", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(redis(&cluster, "preview", &token).await.is_err(), "its tokens went with it");

    let r = cluster.api(Method::POST, "/v1/databases/preview/undelete", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["status"], "suspended", "no compute until a client comes");
    let token = r.body["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = redis(&cluster, "preview", &token).await?;
    assert_eq!(conn.get::<_, Option<String>>("k").await?, Some("kept".into()));
    drop(conn);
    let r = cluster.api(Method::POST, "/v1/databases/preview/undelete", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::CONFLICT, "it exists: {r:?}");

    // Deleted again, and the undo window passes: it is gone for good.
    let r = cluster.api(Method::DELETE, "/v1/databases/preview", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let pass = tick(&service, now + 8 * 86_400).await?;
    assert_eq!(pass.deleted.len(), 1, "the final backup: {pass:?}");
    let r = cluster.api(Method::POST, "/v1/databases/preview/undelete", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    cluster.stop().await;
    Ok(())
}

/// The server's clock, through the proxy.
async fn server_second(conn: &mut mysql_async::Conn) -> anyhow::Result<i64> {
    use mysql_async::prelude::Queryable;
    conn.query_first::<i64, _>("SELECT UNIX_TIMESTAMP()").await?.context("a time")
}

/// Waits (polling the server's clock) until its second is past `after`; returns it.
async fn second_after(conn: &mut mysql_async::Conn, after: i64) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = server_second(conn).await?;
        if now > after {
            return Ok(now);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the clock stood still");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mysql_restores_to_a_second_between_two_writes_in_place_and_as_a_branch()
-> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "ledger", "mysql").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("ledger", &token, false)).await?;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)").await?;
    conn.query_drop("INSERT INTO t VALUES (1)").await?;
    let base = backup(&cluster, &admin, "ledger").await?;
    assert_eq!(status(&base), "completed", "{base}");
    assert!(base["position"]["binlog_file"].is_string(), "{base}");

    // Row 2 in one second, the point to restore to in a later one, row 3 and the disaster in
    // a later one still: the log's resolution is a second.
    let taken = server_second(&mut conn).await?;
    second_after(&mut conn, taken).await?;
    conn.query_drop("INSERT INTO t VALUES (2)").await?;
    let written = server_second(&mut conn).await?;
    let point = second_after(&mut conn, written).await?;
    second_after(&mut conn, point).await?;
    conn.query_drop("INSERT INTO t VALUES (3)").await?;
    conn.query_drop("DROP TABLE t").await?;
    drop(conn);
    let time = dormouse_control::api::routes::timestamp(point);

    let body = json!({ "name": "ledger-then", "restore": { "database": "ledger", "time": time } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let branch_token = r.body["token"]["token"].as_str().context("token")?;
    let mut branch =
        mysql_async::Conn::new(cluster.mysql_opts("ledger-then", branch_token, false)).await?;
    let ids: Vec<i32> = branch.query("SELECT id FROM t ORDER BY id").await?;
    assert_eq!(ids, [1, 2], "every row before the point, none after");
    drop(branch);
    // The log the branch archived and the in-place restore's own backup fall in different
    // seconds (archive times and backup times are seconds), for the pruning below.
    let branched = dormouse_control::service::now();
    while dormouse_control::service::now() <= branched {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let path = "/v1/databases/ledger/restore";
    let r = cluster.api(Method::POST, path, Some(&admin), Some(json!({ "time": time }))).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("ledger", &token, false)).await?;
    let ids: Vec<i32> = conn.query("SELECT id FROM t ORDER BY id").await?;
    assert_eq!(ids, [1, 2], "the dropped table is back as it was");
    drop(conn);

    let future = dormouse_control::api::routes::timestamp(point + 3600);
    let r = cluster.api(Method::POST, path, Some(&admin), Some(json!({ "time": future }))).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_restore"), "{r:?}");
    let past = dormouse_control::api::routes::timestamp(point - 86_400);
    let r = cluster.api(Method::POST, path, Some(&admin), Some(json!({ "time": past }))).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_restore"), "{r:?}");
    assert!(r.body["error"]["message"].as_str().unwrap_or_default().contains("oldest backup"));

    // Without the base backup, the log archived before the next oldest one serves no restore.
    let service = cluster.running().service.clone();
    assert_eq!(service.prune_archived_logs().await?, 0, "everything is still of use");
    let id = base["id"].as_str().context("id")?;
    let r = cluster.api(Method::DELETE, &format!("/v1/backups/{id}"), Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert!(service.prune_archived_logs().await? > 0, "the files between the two are gone");
    let r = cluster.api(Method::POST, path, Some(&admin), Some(json!({ "time": time }))).await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no backup before the point now: {r:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn mysql_incremental_chains_restore_to_each_link_and_hold_their_base() -> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "inc", "mysql").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("inc", &token, false)).await?;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, pad TEXT)").await?;
    conn.query_drop("INSERT INTO t SELECT seq, REPEAT('x', 1000) FROM seq_1_to_2000").await?;
    let mut links: Vec<Value> = Vec::new();
    for (round, rows) in [(0, 2000), (1, 2001), (2, 2002)] {
        let path = "/v1/databases/inc/backups";
        let body = json!({ "incremental": round > 0 });
        let r = cluster.api(Method::POST, path, Some(&admin), Some(body)).await?;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        let done = finished(&cluster, &admin, r.body["id"].as_str().context("id")?).await?;
        assert_eq!(status(&done), "completed", "{done}");
        let parent = links.last().map(|p| p["id"].clone()).unwrap_or(Value::Null);
        assert_eq!(done["parent_id"], parent, "round {round}");
        links.push(done);
        conn.query_drop(format!("INSERT INTO t VALUES ({}, 'y')", rows + 1)).await?;
    }
    drop(conn);
    let (full, last) = (&links[0], &links[2]);
    assert!(
        last["stored_bytes"].as_u64() < full["stored_bytes"].as_u64(),
        "an increment stores less: {} vs {}",
        last["stored_bytes"],
        full["stored_bytes"]
    );
    for (link, rows) in [(&links[1], 2001), (&links[2], 2002)] {
        let name = format!("inc-{rows}");
        let body = json!({ "name": name, "restore": { "backup": link["id"] } });
        let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        let branch_token = r.body["token"]["token"].as_str().context("token")?;
        let mut branch =
            mysql_async::Conn::new(cluster.mysql_opts(&name, branch_token, false)).await?;
        let count: Option<i64> = branch.query_first("SELECT COUNT(*) FROM t").await?;
        assert_eq!(count, Some(rows), "restored from {}", link["id"]);
    }
    let id = full["id"].as_str().context("id")?;
    let r = cluster.api(Method::DELETE, &format!("/v1/backups/{id}"), Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::CONFLICT, "a chain's base stays while it has links: {r:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_store_fails_the_backup_and_the_database_keeps_serving() -> anyhow::Result<()>
{
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut s3 =
        dormouse_control::backup::S3Config::from_url("s3://gone/x").map_err(anyhow::Error::msg)?;
    s3.endpoint = Some(format!("http://127.0.0.1:{closed}"));
    s3.access_key_id = Some("test".into());
    s3.secret_access_key = Some("test".into());
    let config = dormouse_control::backup::BackupConfig {
        storage: dormouse_control::backup::StorageConfig::S3(s3),
        concurrency: 1,
    };
    let cluster = Cluster::start_with(|c| c.backup = config).await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "kv", "redis").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = redis(&cluster, "kv", &token).await?;
    let () = conn.set("k", "v").await?;

    let failed = backup(&cluster, &admin, "kv").await?;
    assert_eq!(status(&failed), "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("object store could not be written"), "{failed}");
    assert!(
        !reason.contains("127.0.0.1") && !reason.contains("i-"),
        "no addresses or ids: {reason}"
    );
    assert_eq!(failed["sha256"], Value::Null, "nothing half-written is a backup: {failed}");
    assert_eq!(conn.get::<_, Option<String>>("k").await?, Some("v".into()), "still serving");

    // Its final backup cannot be stored, so the database is not deleted.
    let r = cluster.api(Method::DELETE, "/v1/databases/kv", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert!(
        r.body["error"]["message"].as_str().unwrap_or_default().contains("not deleted"),
        "{r:?}"
    );
    let mut conn = redis(&cluster, "kv", &token).await?;
    assert_eq!(conn.get::<_, Option<String>>("k").await?, Some("v".into()), "data intact");
    cluster.stop().await;
    Ok(())
}

/// The Redis server's clock, through the proxy.
async fn redis_second(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let (seconds, _micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(seconds)
}

/// Waits (polling the Redis server's clock) until its second is past `after`; returns it.
async fn redis_second_after(
    conn: &mut redis::aio::MultiplexedConnection,
    after: i64,
) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = redis_second(conn).await?;
        if now > after {
            return Ok(now);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the clock stood still");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_restores_to_a_second_between_two_writes_in_place_and_as_a_branch()
-> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "feed", "redis").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = redis(&cluster, "feed", &token).await?;

    // k1 in one second, the point to restore to in a later one, k2 and the disaster in a
    // later one still: the append-only file's time marks have a second's resolution.
    let () = conn.set("k1", "1").await?;
    let written = redis_second(&mut conn).await?;
    let point = redis_second_after(&mut conn, written).await?;
    redis_second_after(&mut conn, point).await?;
    let () = conn.set("k2", "2").await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
    drop(conn);
    let time = dormouse_control::api::routes::timestamp(point);

    let body = json!({ "name": "feed-then", "restore": { "database": "feed", "time": time } });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(body)).await?;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["engine"], "redis");
    let branch_token = r.body["token"]["token"].as_str().context("token")?;
    let mut branch = redis(&cluster, "feed-then", branch_token).await?;
    assert_eq!(branch.get::<_, Option<String>>("k1").await?, Some("1".into()));
    assert_eq!(branch.get::<_, Option<String>>("k2").await?, None, "written after the point");
    drop(branch);

    let path = "/v1/databases/feed/restore";
    let r = cluster.api(Method::POST, path, Some(&admin), Some(json!({ "time": time }))).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["database"]["status"], "running");
    let mut conn = redis(&cluster, "feed", &token).await?;
    assert_eq!(conn.get::<_, Option<String>>("k1").await?, Some("1".into()), "flushed, and back");
    assert_eq!(conn.get::<_, Option<String>>("k2").await?, None);
    // The restored data is the database's own again: it takes writes and keeps them.
    let () = conn.set("k3", "3").await?;
    drop(conn);

    let past = dormouse_control::api::routes::timestamp(point - 86_400);
    let r = cluster.api(Method::POST, path, Some(&admin), Some(json!({ "time": past }))).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_restore"), "{r:?}");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("oldest archived log"), "{r:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restore_to_a_time_after_an_in_place_restore_follows_the_restored_data()
-> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "tl", "mysql").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("tl", &token, false)).await?;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)").await?;
    conn.query_drop("INSERT INTO t VALUES (1)").await?;
    drop(conn);
    let first = backup(&cluster, &admin, "tl").await?;
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("tl", &token, false)).await?;
    conn.query_drop("INSERT INTO t VALUES (2)").await?;
    drop(conn);
    let id = first["id"].as_str().context("id")?;
    let r = restore_in_place(&cluster, &admin, "tl", id).await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("tl", &token, false)).await?;
    conn.query_drop("INSERT INTO t VALUES (3)").await?;
    let written = server_second(&mut conn).await?;
    let point = second_after(&mut conn, written).await?;
    drop(conn);

    let time = dormouse_control::api::routes::timestamp(point);
    let r = cluster
        .api(Method::POST, "/v1/databases/tl/restore", Some(&admin), Some(json!({ "time": time })))
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("tl", &token, false)).await?;
    let ids: Vec<i32> = conn.query("SELECT id FROM t ORDER BY id").await?;
    assert_eq!(ids, [1, 3], "the restored data and what came after it, not the old timeline");
    drop(conn);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_statement_that_would_split_the_log_replay_is_refused_not_run_as_root()
-> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "p4", "mysql").await?;
    let token = created["token"]["token"].as_str().context("token")?.to_owned();
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("p4", &token, false)).await?;
    conn.query_drop("CREATE TABLE kept (id INT PRIMARY KEY)").await?;
    drop(conn);
    backup(&cluster, &admin, "p4").await?;
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("p4", &token, false)).await?;
    // The server reads everything after `--\x01` as a comment; the client that replays the
    // log would end the statement at `/*!*/;` and run the rest as root.
    conn.query_drop(
        "CREATE TABLE planted (a INT) --\x01 /*!*/; CREATE DEFINER=`root`@`localhost` \
         PROCEDURE p4.escalate() SQL SECURITY DEFINER SELECT 1",
    )
    .await?;
    let now = server_second(&mut conn).await?;
    drop(conn);

    let time = dormouse_control::api::routes::timestamp(now);
    let r = cluster
        .api(Method::POST, "/v1/databases/p4/restore", Some(&admin), Some(json!({ "time": time })))
        .await?;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "restore_failed"),
        "{r:?}"
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be replayed safely"),
        "{r:?}"
    );
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("p4", &token, false)).await?;
    let routines: Vec<String> = conn
        .query("SELECT routine_name FROM information_schema.routines WHERE routine_schema = 'p4'")
        .await?;
    assert!(routines.is_empty(), "nothing ran as root: {routines:?}");
    let tables: Vec<String> = conn.query("SHOW TABLES").await?;
    assert_eq!(tables, ["kept", "planted"], "the failed restore put the data back");
    drop(conn);
    cluster.stop().await;
    Ok(())
}
