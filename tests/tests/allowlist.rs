//! Per-database address allowlists: a client from outside its database's list is refused on
//! both protocols exactly as a wrong token is (and wakes no sleeping database), the list is set
//! and changed through the API, and bad lists get a 400 naming the bad entry. Clients bind 127.0.0.x (all of 127/8 is loopback)
//! to come from another address.

use std::net::Ipv4Addr;

use dormouse_proxy::allowlist::AllowList;
use dormouse_proxy::control::{ControlPlane, HttpControl};
use dormouse_tests::resp::RawRedis;
use dormouse_tests::{ApiResponse, Cluster, stdout};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALLOWED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Creates a database with `body`'s extra fields; returns the API's answer and the
/// database's token.
async fn create(
    cluster: &Cluster,
    admin: &str,
    name: &str,
    engine: &str,
    extra: Value,
) -> anyhow::Result<(Value, String)> {
    let mut body = json!({ "name": name, "engine": engine });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let r = cluster.api(Method::POST, "/v1/databases", Some(admin), Some(body)).await?;
    anyhow::ensure!(r.status == StatusCode::CREATED, "creating {name}: {r:?}");
    let token = r.body["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok((r.body, token))
}

async fn patch(
    cluster: &Cluster,
    admin: &str,
    name: &str,
    body: Value,
) -> anyhow::Result<ApiResponse> {
    cluster.api(Method::PATCH, &format!("/v1/databases/{name}"), Some(admin), Some(body)).await
}

/// A Redis client from `from` sends `AUTH user token`; returns the reply as text. Once logged
/// in it also runs a command, so a login that "succeeds" without a working session fails.
async fn redis_login(
    cluster: &Cluster,
    from: Ipv4Addr,
    user: &str,
    token: &str,
) -> anyhow::Result<String> {
    let mut client = RawRedis::connect_from(from, cluster.redis_port()).await?;
    let reply = String::from_utf8_lossy(&client.call(&["AUTH", user, token]).await?).into_owned();
    if reply == "+OK\r\n" {
        let echo = client.call(&["ECHO", "hi"]).await?;
        anyhow::ensure!(echo == b"$2\r\nhi\r\n", "after login: {echo:?}");
    }
    Ok(reply)
}

/// A PyMySQL client bound to `from` logs in and runs `SELECT 41 + 1`; prints `ok 42` or
/// `error <code> <message>`.
const PYMYSQL_LOGIN: &str = r#"
import os, pymysql
try:
    c = pymysql.connect(host="127.0.0.1", port=int(os.environ["PORT"]), user=os.environ["DB"],
                        password=os.environ["TOKEN"], database=os.environ["DB"],
                        bind_address=os.environ["FROM"], connect_timeout=20)
    cur = c.cursor()
    cur.execute("SELECT 41 + 1")
    print("ok", cur.fetchone()[0])
except pymysql.err.OperationalError as e:
    print("error", e.args[0], e.args[1])
"#;

async fn mysql_login(
    cluster: &Cluster,
    from: Ipv4Addr,
    user: &str,
    token: &str,
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", PYMYSQL_LOGIN])
        .env("PORT", cluster.mysql_port().to_string())
        .env("DB", user)
        .env("TOKEN", token)
        .env("FROM", from.to_string())
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout(&out))
}

fn denied(user: &str, from: Ipv4Addr) -> String {
    format!("error 1045 Access denied for user '{user}'@'{from}' (using password: YES)")
}

#[tokio::test]
async fn a_client_outside_the_allowlist_is_refused_like_a_wrong_token_on_both_protocols()
-> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let only = json!({ "allowed_cidrs": ["127.0.0.2/32"] });
    let (_, cache) = create(&cluster, &admin, "cache", "redis", only.clone()).await?;
    // A bare address is a single host, shown normalised.
    let single = json!({ "allowed_cidrs": ["127.0.0.2"] });
    let (shop_body, shop) = create(&cluster, &admin, "shop", "mysql", single).await?;
    assert_eq!(shop_body["allowed_cidrs"], json!(["127.0.0.2/32"]), "{shop_body}");

    // Redis: the allowed address logs in; any other gets the very reply a wrong token gets.
    assert_eq!(redis_login(&cluster, ALLOWED, "cache", &cache).await?, "+OK\r\n");
    let wrong_token = redis_login(&cluster, ALLOWED, "cache", "not-a-token").await?;
    assert!(wrong_token.starts_with("-WRONGPASS"), "{wrong_token}");
    for from in [OTHER, Ipv4Addr::LOCALHOST] {
        assert_eq!(redis_login(&cluster, from, "cache", &cache).await?, wrong_token, "{from}");
    }

    // MySQL: the same, with the 1045 a wrong token gets.
    assert_eq!(mysql_login(&cluster, ALLOWED, "shop", &shop).await?, "ok 42");
    assert_eq!(
        mysql_login(&cluster, ALLOWED, "shop", "not-a-token").await?,
        denied("shop", ALLOWED)
    );
    assert_eq!(mysql_login(&cluster, OTHER, "shop", &shop).await?, denied("shop", OTHER));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn changing_the_allowlist_through_the_api_takes_effect_at_once() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let (body, cache) = create(&cluster, &admin, "cache", "redis", json!({})).await?;
    assert_eq!(body["allowed_cidrs"], json!([]), "any address by default: {body}");
    let (_, shop) = create(&cluster, &admin, "shop", "mysql", json!({})).await?;
    assert_eq!(redis_login(&cluster, OTHER, "cache", &cache).await?, "+OK\r\n");
    assert_eq!(mysql_login(&cluster, OTHER, "shop", &shop).await?, "ok 42");

    for name in ["cache", "shop"] {
        let r = patch(&cluster, &admin, name, json!({ "allowed_cidrs": ["127.0.0.2/32"] })).await?;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["allowed_cidrs"], json!(["127.0.0.2/32"]), "{r:?}");
    }
    // The proxy had both routes cached from the logins above: the change reaches it anyway.
    assert!(redis_login(&cluster, OTHER, "cache", &cache).await?.starts_with("-WRONGPASS"));
    assert_eq!(redis_login(&cluster, ALLOWED, "cache", &cache).await?, "+OK\r\n");
    assert_eq!(mysql_login(&cluster, OTHER, "shop", &shop).await?, denied("shop", OTHER));
    assert_eq!(mysql_login(&cluster, ALLOWED, "shop", &shop).await?, "ok 42");

    // Another setting changed alone leaves the list as it is; shown by GET.
    let r = patch(&cluster, &admin, "cache", json!({ "idle_timeout_seconds": 600 })).await?;
    assert_eq!(r.body["allowed_cidrs"], json!(["127.0.0.2/32"]), "{r:?}");
    let r = cluster.api(Method::GET, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(r.body["allowed_cidrs"], json!(["127.0.0.2/32"]), "{r:?}");

    // `null` (or `[]`) lets any address in again.
    let r = patch(&cluster, &admin, "cache", json!({ "allowed_cidrs": null })).await?;
    assert_eq!(r.body["allowed_cidrs"], json!([]), "{r:?}");
    let r = patch(&cluster, &admin, "shop", json!({ "allowed_cidrs": [] })).await?;
    assert_eq!(r.body["allowed_cidrs"], json!([]), "{r:?}");
    assert_eq!(redis_login(&cluster, OTHER, "cache", &cache).await?, "+OK\r\n");
    assert_eq!(mysql_login(&cluster, OTHER, "shop", &shop).await?, "ok 42");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_cidr_is_refused_with_400_naming_it_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let bad = json!({ "name": "cache", "engine": "redis",
                      "allowed_cidrs": ["10.0.0.0/8", "10.0.0.0/33"] });
    let r = cluster.api(Method::POST, "/v1/databases", Some(&admin), Some(bad)).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_allowed_cidrs"));
    assert!(r.body["error"]["message"].as_str().unwrap_or("").contains("\"10.0.0.0/33\""), "{r:?}");
    let r = cluster.api(Method::GET, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "not created: {r:?}");

    let (_, _) = create(&cluster, &admin, "cache", "redis", json!({})).await?;
    let r = patch(
        &cluster,
        &admin,
        "cache",
        json!({ "idle_timeout_seconds": 60, "allowed_cidrs": ["127.0.0.1", "nope"] }),
    )
    .await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_allowed_cidrs"));
    assert!(r.body["error"]["message"].as_str().unwrap_or("").contains("\"nope\""), "{r:?}");
    let many: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
    let r = patch(&cluster, &admin, "cache", json!({ "allowed_cidrs": many })).await?;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "invalid_allowed_cidrs"));
    assert!(r.body["error"]["message"].as_str().unwrap_or("").contains("at most 100"), "{r:?}");
    let r = patch(&cluster, &admin, "cache", json!({ "allowed_cidrs": "10.0.0.0/8" })).await?;
    // A string, not a list: refused as any ill-typed body is.
    assert_eq!((r.status, r.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_json"));

    let r = cluster.api(Method::GET, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(r.body["idle_timeout_seconds"], 300, "unchanged: {r:?}");
    assert_eq!(r.body["allowed_cidrs"], json!([]), "unchanged: {r:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn logins_refused_by_the_allowlist_count_as_failed_logins() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.failed_logins_per_second = 1; // a burst of 5
        }
    })
    .await?;
    let admin = cluster.tenant("acme").await?;
    let only = json!({ "allowed_cidrs": ["127.0.0.2/32"] });
    let (_, cache) = create(&cluster, &admin, "cache", "redis", only).await?;
    let mut replies = Vec::new();
    for _ in 0..7 {
        replies.push(redis_login(&cluster, OTHER, "cache", &cache).await?);
    }
    assert!(replies[0].starts_with("-WRONGPASS"), "{replies:?}");
    let last = replies.last().map(String::as_str).unwrap_or_default();
    assert!(last.contains("too many failed logins"), "{replies:?}");
    // The allowed address is not held back by another address's failures.
    assert_eq!(redis_login(&cluster, ALLOWED, "cache", &cache).await?, "+OK\r\n");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_refused_client_does_not_wake_a_suspended_database() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    let only = json!({ "allowed_cidrs": ["127.0.0.2/32"] });
    let (_, cache) = create(&cluster, &admin, "cache", "redis", only.clone()).await?;
    let (_, shop) = create(&cluster, &admin, "shop", "mysql", only).await?;
    let status = |name: &'static str| {
        let admin = admin.clone();
        let cluster = &cluster;
        async move {
            let path = format!("/v1/databases/{name}");
            let r = cluster.api(Method::GET, &path, Some(&admin), None).await?;
            anyhow::Ok(r.body["status"].as_str().unwrap_or_default().to_owned())
        }
    };
    for name in ["cache", "shop"] {
        let path = format!("/v1/databases/{name}/suspend");
        let r = cluster.api(Method::POST, &path, Some(&admin), None).await?;
        assert_eq!(r.body["status"], "suspended", "{r:?}");
    }

    assert!(redis_login(&cluster, OTHER, "cache", &cache).await?.starts_with("-WRONGPASS"));
    assert_eq!(mysql_login(&cluster, OTHER, "shop", &shop).await?, denied("shop", OTHER));
    assert_eq!(status("cache").await?, "suspended");
    assert_eq!(status("shop").await?, "suspended");

    // A proxy running apart asks control the same over HTTP.
    let remote = HttpControl::new(cluster.running().api_url(), cluster.admin_token());
    let expected = AllowList::parse(&["127.0.0.2/32"])?;
    assert_eq!(remote.allowlist(&tenant_id, "cache").await?, Some(expected));
    assert_eq!(remote.allowlist(&tenant_id, "nope").await?, None);

    // A client it admits wakes it as usual.
    assert_eq!(redis_login(&cluster, ALLOWED, "cache", &cache).await?, "+OK\r\n");
    assert_eq!(status("cache").await?, "running");
    cluster.stop().await;
    Ok(())
}
