//! Stock Redis clients (`redis-cli`, the `redis` crate, raw RESP) through the proxy: data
//! commands, pipelines, pub/sub, HELLO, and every way a login or a command is refused.

use std::time::Duration;

use dormouse_proxy::claims::{Claims, Role};
use dormouse_tests::{Cluster, eventually, stdout, unix_socket_connections};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tenant `acme` with a Redis database `cache`; returns (cluster, tenant admin token, db token).
async fn setup() -> anyhow::Result<(Cluster, String, String)> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok((cluster, admin, token))
}

/// Sends raw bytes and reads until `expect_lines` CRLF-terminated lines have arrived.
async fn raw(port: u16, request: &[u8], expect_lines: usize) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while buf.windows(2).filter(|w| w == b"\r\n").count() < expect_lines {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

#[tokio::test]
async fn redis_cli_runs_data_commands_through_the_proxy() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let cli = |args: &'static [&'static str]| cluster.redis_cli(Some("cache"), Some(&token), args);
    assert_eq!(stdout(&cli(&["SET", "greeting", "hello"]).await?), "OK");
    assert_eq!(stdout(&cli(&["GET", "greeting"]).await?), "hello");
    assert_eq!(stdout(&cli(&["INCR", "n"]).await?), "1");
    assert_eq!(stdout(&cli(&["INCRBY", "n", "41"]).await?), "42");
    assert_eq!(stdout(&cli(&["PING"]).await?), "PONG");
    // `-a <token>` alone works too: the token names its database.
    let out = cluster.redis_cli(None, Some(&token), &["GET", "n"]).await?;
    assert_eq!(stdout(&out), "42");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_proxy_reaches_a_server_on_its_host_over_the_unix_socket() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    assert_eq!(unix_socket_connections(cluster.data_dir(), "redis.sock")?, 0);
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["SET", "k", "v"]).await?;
    assert_eq!(stdout(&out), "OK");
    // The shared backend connection stays open in the pool, on the socket.
    assert!(unix_socket_connections(cluster.data_dir(), "redis.sock")? >= 1);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn pipelines_and_transactions_work_within_one_connection() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let client = redis::Client::open(cluster.redis_url("cache", &token))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let (a, b, n): (String, String, i64) = redis::pipe()
        .set("a", "1")
        .ignore()
        .set("b", "2")
        .ignore()
        .get("a")
        .get("b")
        .incr("n", 5)
        .query_async(&mut con)
        .await?;
    assert_eq!((a.as_str(), b.as_str(), n), ("1", "2", 5));
    let (x, y): (i64, i64) =
        redis::pipe().atomic().incr("n", 1).incr("n", 1).query_async(&mut con).await?;
    assert_eq!((x, y), (6, 7));

    // A thousand pipelined commands come back in order.
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("ECHO").arg(i);
    }
    let echoed: Vec<i64> = pipe.query_async(&mut con).await?;
    assert_eq!(echoed, (0..1000).collect::<Vec<_>>());
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_refused_command_inside_multi_aborts_the_transaction() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let mut req = resp(&["AUTH", "cache", &token]);
    for c in
        [&["MULTI"][..], &["SET", "k", "v"], &["CONFIG", "GET", "dir"], &["EXEC"], &["EXISTS", "k"]]
    {
        req.extend(resp(c));
    }
    let out = raw(cluster.redis_port(), &req, 6).await?;
    assert_eq!(
        out,
        "+OK\r\n+OK\r\n+QUEUED\r\n-NOPERM this command is not allowed on Dormouse: 'config|get'\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n:0\r\n"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn pubsub_delivers_messages_in_resp2_and_resp3() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    for protocol in ["", "?protocol=resp3"] {
        let url = format!("{}{protocol}", cluster.redis_url("cache", &token));
        let client = redis::Client::open(url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe("news").await?;
        pubsub.psubscribe("sport.*").await?;
        let mut publisher = client.get_multiplexed_async_connection().await?;
        let receivers: i64 =
            redis::cmd("PUBLISH").arg("news").arg("hello").query_async(&mut publisher).await?;
        assert_eq!(receivers, 1, "{url}");
        let _: i64 = redis::cmd("PUBLISH")
            .arg("sport.tennis")
            .arg("ace")
            .query_async(&mut publisher)
            .await?;
        let mut messages = pubsub.on_message();
        let first = tokio::time::timeout(Duration::from_secs(10), messages.next()).await?;
        let second = tokio::time::timeout(Duration::from_secs(10), messages.next()).await?;
        let got: Vec<(String, String)> = [first, second]
            .into_iter()
            .flatten()
            .map(|m| (m.get_channel_name().to_owned(), m.get_payload().unwrap_or_default()))
            .collect();
        assert_eq!(got, [("news".into(), "hello".into()), ("sport.tennis".into(), "ace".into())]);
        // The subscriber's own server connection closes after it leaves, not with it: the
        // next round counts receivers once it has.
        drop(messages);
        drop(pubsub);
        eventually(Duration::from_secs(10), "the subscriber's connection to close", || {
            let mut publisher = publisher.clone();
            async move {
                let subs: Option<(String, i64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("news")
                    .query_async(&mut publisher)
                    .await
                    .ok();
                subs.filter(|(_, n)| *n == 0)
            }
        })
        .await?;
    }

    // RESP2 by hand: after unsubscribing from everything the connection is an ordinary one again.
    let mut req = resp(&["AUTH", "cache", &token]);
    req.extend(resp(&["SUBSCRIBE", "a", "b"]));
    req.extend(resp(&["PING"]));
    req.extend(resp(&["UNSUBSCRIBE"]));
    req.extend(resp(&["LPUSH", "l", "message"]));
    req.extend(resp(&["LRANGE", "l", "0", "-1"]));
    let out = raw(cluster.redis_port(), &req, 1 + 6 + 6 + 5 + 12 + 1 + 3).await?;
    assert!(out.starts_with("+OK\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"), "{out}");
    assert!(out.contains("*2\r\n$4\r\npong\r\n$0\r\n\r\n"), "{out}");
    assert!(out.ends_with(":0\r\n:1\r\n*1\r\n$7\r\nmessage\r\n"), "{out}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn hello_3_with_auth_answers_in_resp3_like_redis_py_expects() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    // redis-py 8 opens with exactly this, then identifies itself.
    let mut req = resp(&["HELLO", "3", "AUTH", "default", &token]);
    req.extend(resp(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]));
    req.extend(resp(&[
        "CLIENT",
        "MAINT_NOTIFICATIONS",
        "ON",
        "moving-endpoint-type",
        "internal-fqdn",
    ]));
    req.extend(resp(&["GET", "missing"]));
    let out = raw(cluster.redis_port(), &req, 26 + 3).await?;
    assert!(out.starts_with("%7\r\n"), "HELLO 3 answers with a map: {out}");
    assert!(out.contains("$5\r\nproto\r\n:3\r\n"), "{out}");
    assert!(out.ends_with("+OK\r\n+OK\r\n_\r\n"), "RESP3 null for a missing key: {out}");

    let client = redis::Client::open(
        format!("{}?protocol=resp3", cluster.redis_url("cache", &token)).as_str(),
    )?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("HSET").arg("h").arg("f").arg("v").query_async(&mut con).await?;
    let map: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("h").query_async(&mut con).await?;
    assert_eq!(map.get("f").map(String::as_str), Some("v"));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn commands_before_auth_get_noauth() -> anyhow::Result<()> {
    let (cluster, _, _) = setup().await?;
    let out = cluster.redis_cli(None, None, &["GET", "k"]).await?;
    assert_eq!(stdout(&out), "NOAUTH Authentication required.");
    let out = raw(cluster.redis_port(), b"PING\r\nHELLO 3\r\nKEYS *\r\n", 3).await?;
    assert!(
        out.starts_with(
            "+PONG\r\n-NOAUTH HELLO must be called with the client already authenticated"
        ),
        "{out}"
    );
    assert!(out.ends_with("-NOAUTH Authentication required.\r\n"), "{out}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn wrong_expired_revoked_and_foreign_tokens_are_refused() -> anyhow::Result<()> {
    let (cluster, admin, token) = setup().await?;
    const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    let login = |user: &str, token: &str| resp(&["AUTH", user, token]);
    let port = cluster.redis_port();

    assert_eq!(raw(port, &login("cache", "not-a-token"), 1).await?, WRONGPASS);
    // A signature that does not verify.
    let mut forged = token.clone().into_bytes();
    let mid = forged.len() - 40;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    assert_eq!(raw(port, &login("cache", std::str::from_utf8(&forged)?), 1).await?, WRONGPASS);

    // Expired: signed by control's own key, but in the past.
    let expired = cluster.running().service.keys().sign(&Claims {
        sub: cluster.running().service.store().list_tenants().await?.first().map(|t| t.id.clone()),
        db: Some("cache".into()),
        role: Role::Readwrite,
        exp: jsonwebtoken::get_current_timestamp() - 3600,
        jti: "expired0000000000".into(),
    })?;
    assert_eq!(raw(port, &login("cache", &expired), 1).await?, WRONGPASS);

    // Revoked.
    let (id, revocable) = cluster.token(&admin, json!({ "database": "cache" })).await?;
    assert_eq!(raw(port, &login("cache", &revocable), 1).await?, "+OK\r\n");
    let r = cluster.api(Method::DELETE, &format!("/v1/tokens/{id}"), Some(&admin), None).await?;
    assert_eq!(r.status, 204);
    assert_eq!(raw(port, &login("cache", &revocable), 1).await?, WRONGPASS);

    // Another tenant's token, for a database of the same name and for one that does not exist:
    // the same refusal, so nothing leaks about what exists.
    let other = cluster.tenant("globex").await?;
    assert_eq!(raw(port, &login("cache", &other), 1).await?, WRONGPASS);
    assert_eq!(raw(port, &login("nosuchdb", &other), 1).await?, WRONGPASS);
    // A token for one database does not open another of the same tenant.
    cluster.database(&admin, "other", "redis").await?;
    assert_eq!(raw(port, &login("other", &token), 1).await?, WRONGPASS);
    // The operator's token opens no database.
    assert_eq!(raw(port, &login("cache", &cluster.admin_token()), 1).await?, WRONGPASS);

    let out = cluster.redis_cli(Some("cache"), Some("wrong"), &["GET", "k"]).await?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("WRONGPASS"), "{out:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn commands_a_tenant_must_not_run_get_noperm() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let refused: &[&[&str]] = &[
        &["CONFIG", "SET", "maxmemory", "0"],
        &["DEBUG", "SLEEP", "0"],
        &["SHUTDOWN"],
        &["MODULE", "LIST"],
        &["ACL", "WHOAMI"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SLAVEOF", "NO", "ONE"],
        &["MONITOR"],
        &["SAVE"],
        &["BGSAVE"],
        &["BGREWRITEAOF"],
        &["FAILOVER"],
        &["MIGRATE", "127.0.0.1", "1", "k", "0", "1000"],
        &["CLIENT", "KILL", "ID", "1"],
        &["CLIENT", "LIST"],
        &["CLIENT", "REPLY", "OFF"],
        &["SLOWLOG", "GET"],
        &["LATENCY", "DOCTOR"],
    ];
    let mut req = resp(&["AUTH", "cache", &token]);
    for c in refused {
        req.extend(resp(c));
    }
    req.extend(resp(&["PING"]));
    let out = raw(cluster.redis_port(), &req, refused.len() + 2).await?;
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "+OK");
    for (line, cmd) in lines[1..=refused.len()].iter().zip(refused) {
        assert!(line.starts_with("-NOPERM"), "{cmd:?} got {line}");
    }
    assert_eq!(lines[refused.len() + 1], "+PONG", "the connection stays usable");
    // redis-cli shows the same.
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["CONFIG", "GET", "dir"]).await?;
    assert!(stdout(&out).starts_with("NOPERM"), "{out:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn readonly_tokens_can_read_but_not_write() -> anyhow::Result<()> {
    let (cluster, admin, token) = setup().await?;
    cluster.redis_cli(Some("cache"), Some(&token), &["SET", "k", "v"]).await?;
    let (_, ro) = cluster.token(&admin, json!({ "database": "cache", "role": "readonly" })).await?;
    let cli = |args: &'static [&'static str]| cluster.redis_cli(Some("cache"), Some(&ro), args);
    assert_eq!(stdout(&cli(&["GET", "k"]).await?), "v");
    assert_eq!(stdout(&cli(&["EXISTS", "k"]).await?), "1");
    for write in [&["SET", "k", "w"][..], &["DEL", "k"], &["FLUSHALL"], &["EVAL", "return 1", "0"]]
    {
        let out = cluster.redis_cli(Some("cache"), Some(&ro), write).await?;
        assert!(stdout(&out).starts_with("NOPERM this token is read-only"), "{write:?}: {out:?}");
    }
    assert_eq!(
        stdout(&cli(&["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k"]).await?),
        "v"
    );
    assert_eq!(stdout(&cli(&["GET", "k"]).await?), "v");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn oversized_requests_are_refused_with_an_error_not_buffered() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let port = cluster.redis_port();
    // Before auth, even a 1 MiB argument is refused at once (the limit there is 16 KiB).
    let out = raw(port, b"*2\r\n$4\r\nAUTH\r\n$1048576\r\n", 1).await?;
    assert_eq!(out, "-ERR Protocol error: request exceeds the proxy's limit of 16384 bytes\r\n");
    // After auth, the configured limit (32 MiB) applies to the declared size.
    let mut req = resp(&["AUTH", "cache", &token]);
    req.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n");
    let out = raw(port, &req, 2).await?;
    assert_eq!(
        out,
        "+OK\r\n-ERR Protocol error: request exceeds the proxy's limit of 33554432 bytes\r\n"
    );
    // Garbage gets a protocol error, not a crash; the proxy keeps serving.
    let out = raw(port, b"*1\r\n+PING\r\n", 1).await?;
    assert_eq!(out, "-ERR Protocol error: expected '$', got '+'\r\n");
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["PING"]).await?;
    assert_eq!(stdout(&out), "PONG");
    // A large value within the limit goes through intact.
    let client = redis::Client::open(cluster.redis_url("cache", &token))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let big = "x".repeat(8 * 1024 * 1024);
    let _: () = redis::cmd("SET").arg("big").arg(&big).query_async(&mut con).await?;
    let back: String = redis::cmd("GET").arg("big").query_async(&mut con).await?;
    assert_eq!(back.len(), big.len());
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_told_to_slow_down_but_a_valid_token_still_logs_in()
-> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.failed_logins_per_second = 1; // a burst of 5
        }
    })
    .await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let mut req = Vec::new();
    for _ in 0..6 {
        req.extend(resp(&["AUTH", "cache", "wrong"]));
    }
    req.extend(resp(&["AUTH", "cache", &token]));
    let out = raw(cluster.redis_port(), &req, 7).await?;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[..5].iter().all(|l| l.starts_with("-WRONGPASS")), "{out}");
    assert_eq!(
        lines[5],
        "-ERR Dormouse: too many failed logins from this address for this database; try again shortly"
    );
    // Successful logins are never throttled, whatever else came from the address.
    assert_eq!(lines[6], "+OK", "{out}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_unsubscribe_confirmation_goes_to_the_command_that_asked() -> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let mut req = resp(&["AUTH", "cache", &token]);
    req.extend(resp(&["SET", "k", "v"]));
    // Not subscribed: Redis confirms with a nil channel.
    req.extend(resp(&["UNSUBSCRIBE"]));
    req.extend(resp(&["GET", "k"]));
    req.extend(resp(&["SUBSCRIBE", "a"]));
    // Two confirmations, one for a channel never subscribed.
    req.extend(resp(&["UNSUBSCRIBE", "a", "b"]));
    req.extend(resp(&["GET", "k"]));
    let out = raw(cluster.redis_port(), &req, 1 + 1 + 5 + 2 + 6 + 12 + 2).await?;
    assert_eq!(
        out,
        "+OK\r\n+OK\r\n*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n$1\r\nv\r\n\
         *3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
         *3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n\
         $1\r\nv\r\n"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_refused_hello_keeps_the_protocol_and_local_commands_do_not_break_multi()
-> anyhow::Result<()> {
    let (cluster, _, token) = setup().await?;
    let mut req = resp(&["AUTH", "cache", &token]);
    // Redis refuses a client name with spaces before switching protocol.
    req.extend(resp(&["HELLO", "3", "SETNAME", "has spaces"]));
    req.extend(resp(&["GET", "missing"]));
    req.extend(resp(&["MULTI"]));
    req.extend(resp(&["CLIENT", "SETINFO", "LIB-NAME", "x"]));
    req.extend(resp(&["EXEC"]));
    let out = raw(cluster.redis_port(), &req, 6).await?;
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "+OK");
    assert!(lines[1].starts_with("-ERR"), "{out}");
    assert_eq!(lines[2], "$-1", "still RESP2: {out}");
    assert_eq!(lines[3], "+OK");
    assert!(
        lines[4].starts_with("-ERR Dormouse: 'client|setinfo' is not supported inside MULTI"),
        "{out}"
    );
    assert!(lines[5].starts_with("-EXECABORT"), "{out}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn reset_gives_a_long_lived_session_a_fresh_login_deadline() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.redis.auth_timeout = Duration::from_millis(500);
        }
    })
    .await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let mut stream = TcpStream::connect(("127.0.0.1", cluster.redis_port())).await?;
    stream.write_all(&resp(&["AUTH", "cache", &token])).await?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await?;
    assert_eq!(&buf[..n], b"+OK\r\n");
    // The session outlives the login deadline, then resets and logs in again at once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut req = resp(&["RESET"]);
    req.extend(resp(&["AUTH", "cache", &token]));
    req.extend(resp(&["PING"]));
    stream.write_all(&req).await?;
    let mut out = Vec::new();
    while out.windows(2).filter(|w| w == b"\r\n").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&out), "+RESET\r\n+OK\r\n+PONG\r\n");
    cluster.stop().await;
    Ok(())
}
