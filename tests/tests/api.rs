//! The REST API: what tenants and the operator can do, and a clear 4xx in our error JSON for
//! every kind of bad input.

use dormouse_tests::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_tenant_creates_lists_shows_and_deletes_a_database() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let created = cluster.database(&admin, "cache", "redis").await?;
    assert_eq!(created["status"], "running");
    assert_eq!(created["plan"], "micro");
    let command = created["connection"]["command"].as_str().unwrap_or_default();
    let token = created["token"]["token"].as_str().unwrap_or_default();
    assert!(command.starts_with("redis-cli -h 127.0.0.1 -p "), "{command}");
    assert!(command.contains(&format!("--user cache --pass {token}")), "{command}");
    assert!(token.len() <= 400);

    let list = cluster.api(Method::GET, "/v1/databases", Some(&admin), None).await?;
    assert_eq!(list.body["databases"][0]["name"], "cache");
    let shown = cluster.api(Method::GET, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.body["connection"]["uri"].as_str().unwrap_or_default().contains("<token>"));
    // A database-scoped token sees its database only.
    let scoped = cluster.api(Method::GET, "/v1/databases", Some(token), None).await?;
    assert_eq!(scoped.body["databases"].as_array().map(Vec::len), Some(1));

    let instances = cluster.data_dir().join("instances");
    // Instance directories, not the warm pool's (hidden) one.
    let count = || -> std::io::Result<usize> {
        Ok(std::fs::read_dir(&instances)?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count())
    };
    assert_eq!(count()?, 1);
    let deleted = cluster.api(Method::DELETE, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(count()?, 0, "its data is gone");
    let gone = cluster.api(Method::GET, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // A new database of the same name is not reachable with the old database's token.
    cluster.database(&admin, "cache", "redis").await?;
    let out = cluster.redis_cli(Some("cache"), Some(token), &["PING"]).await?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("WRONGPASS"), "{out:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let operator = cluster.admin_token();
    let admin = cluster.tenant("acme").await?;
    cluster.database(&admin, "cache", "redis").await?;
    let (_, readwrite) = cluster.token(&admin, json!({})).await?;

    let cases = [
        // (method, path, token, body, status, code)
        (
            Method::POST,
            "/v1/databases",
            Some(&admin),
            Some(json!({"name": "Bad Name", "engine": "redis"})),
            400,
            "invalid_name",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&admin),
            Some(json!({"name": "cache", "engine": "redis"})),
            409,
            "already_exists",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&admin),
            Some(json!({"name": "x", "engine": "postgres"})),
            400,
            "invalid_engine",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&admin),
            Some(json!({"name": "x", "engine": "redis", "plan": "huge"})),
            400,
            "invalid_plan",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&admin),
            Some(json!({"name": "x"})),
            400,
            "invalid_engine",
        ),
        (
            Method::POST,
            "/v1/databases",
            None,
            Some(json!({"name": "x", "engine": "redis"})),
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&"garbage".to_owned()),
            Some(json!({"name": "x", "engine": "redis"})),
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&readwrite),
            Some(json!({"name": "x", "engine": "redis"})),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/databases",
            Some(&operator),
            Some(json!({"name": "x", "engine": "redis"})),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/tenants",
            Some(&admin),
            Some(json!({"name": "evil"})),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/tenants",
            Some(&operator),
            Some(json!({"name": "acme"})),
            409,
            "already_exists",
        ),
        (
            Method::POST,
            "/v1/tenants",
            Some(&operator),
            Some(json!({"name": ""})),
            400,
            "invalid_name",
        ),
        (
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some(json!({"role": "root"})),
            400,
            "invalid_role",
        ),
        (
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some(json!({"ttl_seconds": 0})),
            400,
            "invalid_ttl_seconds",
        ),
        (
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some(json!({"database": "nope"})),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some(json!({"database": "cache", "role": "admin"})),
            400,
            "invalid_role",
        ),
        (Method::DELETE, "/v1/tokens/nope", Some(&admin), None, 404, "not_found"),
        (Method::GET, "/v1/databases/nope", Some(&admin), None, 404, "not_found"),
        (Method::GET, "/v1/nothing", Some(&admin), None, 404, "not_found"),
        (Method::PUT, "/v1/databases", Some(&admin), None, 405, "method_not_allowed"),
        (Method::GET, "/internal/v1/revocations", Some(&admin), None, 403, "forbidden"),
    ];
    for (method, path, token, body, status, code) in cases {
        let r = cluster.api(method.clone(), path, token.map(String::as_str), body.clone()).await?;
        assert_eq!(
            (r.status.as_u16(), r.error_code()),
            (status, code),
            "{method} {path} {body:?}: {r:?}"
        );
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Malformed JSON.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/databases", cluster.running().api_url()))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "invalid_json");

    // A revoked token no longer works on the API either.
    let (id, victim) = cluster.token(&admin, json!({})).await?;
    cluster.api(Method::DELETE, &format!("/v1/tokens/{id}"), Some(&admin), None).await?;
    let r = cluster.api(Method::GET, "/v1/databases", Some(&victim), None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn health_and_jwks_are_served() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let health = cluster.api(Method::GET, "/healthz", None, None).await?;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["parts"]["proxy"], "up");
    let jwks = cluster.api(Method::GET, "/.well-known/jwks.json", None, None).await?;
    let key = &jwks.body["keys"][0];
    assert_eq!((key["kty"].as_str(), key["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(key.get("d").is_none(), "no private part");
    cluster.stop().await;
    Ok(())
}
