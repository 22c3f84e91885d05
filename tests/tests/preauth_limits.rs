//! What a client can cost before it has logged in: half-open login floods, wrong-token floods
//! and API slowloris and connection floods from one address must not lock anyone else out.
//! All of 127/8 is loopback, so flood sockets are bound to other addresses than the clients'.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use dormouse_tests::Cluster;
use futures::future::join_all;
use mysql_async::prelude::Queryable;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `port` on loopback from the local address `from`.
async fn connect_from(from: &str, port: u16) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>()?, 0))?;
    Ok(socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?)
}

/// Everything the server sends until it closes the connection (or resets it), and when that
/// happened; fails if it is still open after `limit`.
async fn read_until_closed(
    mut stream: TcpStream,
    limit: Duration,
) -> anyhow::Result<(Vec<u8>, Instant)> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .context("the server never closed the connection")?;
    Ok((out, Instant::now()))
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// A MySQL ERR packet's code, if `wire` starts with one (after an optional greeting).
fn mysql_error_codes(wire: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut rest = wire;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], 0]) as usize;
        let Some(payload) = rest.get(4..4 + len) else { break };
        if payload.first() == Some(&0xff) && payload.len() >= 3 {
            codes.push(u16::from_le_bytes([payload[1], payload[2]]));
        }
        rest = &rest[4 + len..];
    }
    codes
}

async fn redis_login(cluster: &Cluster, token: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(cluster.redis_url("cache", token))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
    anyhow::ensure!(pong == "PONG", "{pong}");
    Ok(())
}

async fn mysql_login(cluster: &Cluster, token: &str, tls: bool) -> anyhow::Result<()> {
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", token, tls)).await?;
    let one: Option<i32> = conn.query_first("SELECT 1").await?;
    anyhow::ensure!(one == Some(1));
    conn.disconnect().await?;
    Ok(())
}

/// A cluster with a Redis database `cache` and a MySQL database `shop`; their tokens.
async fn two_databases(
    configure: impl FnOnce(&mut dormouse_control::up::UpConfig),
) -> anyhow::Result<(Cluster, String, String, String)> {
    let cluster = Cluster::start_with(configure).await?;
    let admin = cluster.tenant("acme").await?;
    let redis = cluster.database(&admin, "cache", "redis").await?;
    let mysql = cluster.database(&admin, "shop", "mysql").await?;
    let token =
        |db: &serde_json::Value| db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let (redis, mysql) = (token(&redis), token(&mysql));
    Ok((cluster, admin, redis, mysql))
}

const PER_ADDRESS: usize = 20;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(4);

#[tokio::test]
async fn idle_sockets_from_one_address_neither_lock_out_logins_from_another_nor_outlive_the_deadline()
-> anyhow::Result<()> {
    let (cluster, _, redis_token, mysql_token) = two_databases(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.max_pending_per_address = PER_ADDRESS;
            proxy.max_pending_connections = PER_ADDRESS + 5;
            proxy.set_login_timeout(LOGIN_TIMEOUT);
        }
    })
    .await?;
    // Logged-in clients do not count against the pending caps: more of them than the caps
    // allow stay connected through the flood.
    let client = redis::Client::open(cluster.redis_url("cache", &redis_token))?;
    let mut logged_in = Vec::new();
    for _ in 0..PER_ADDRESS + 10 {
        logged_in.push(client.get_multiplexed_async_connection().await?);
    }

    // The flood: far more idle sockets than the cap from 127.0.0.2, on both ports.
    let flood_start = Instant::now();
    let mut flood = Vec::new();
    for i in 0..120 {
        let port = if i % 2 == 0 { cluster.mysql_port() } else { cluster.redis_port() };
        flood.push((port, connect_from("127.0.0.2", port).await?));
    }

    // Logins from elsewhere go through while the flood holds every place its address gets.
    redis_login(&cluster, &redis_token).await?;
    mysql_login(&cluster, &mysql_token, false).await?;
    mysql_login(&cluster, &mysql_token, true).await?;
    anyhow::ensure!(
        flood_start.elapsed() < LOGIN_TIMEOUT,
        "the logins took too long to prove anything"
    );
    for con in &mut logged_in {
        let pong: String = redis::cmd("PING").query_async(con).await?;
        assert_eq!(pong, "PONG");
    }

    // Every flood socket is closed: at once with "too many connections", or at the deadline.
    let limit = LOGIN_TIMEOUT + Duration::from_secs(5);
    let ends = join_all(flood.into_iter().map(|(port, stream)| async move {
        read_until_closed(stream, limit).await.map(|(wire, at)| (port, wire, at))
    }))
    .await;
    let (mut refused, mut timed_out) = (0, 0);
    for end in ends {
        let (port, wire, at) = end?;
        let waited = at.duration_since(flood_start);
        let text = String::from_utf8_lossy(&wire);
        let busy = if port == cluster.redis_port() {
            text == "-ERR max number of clients reached\r\n"
        } else {
            mysql_error_codes(&wire) == [1040]
        };
        if busy {
            refused += 1;
            continue;
        }
        let deadline = if port == cluster.redis_port() {
            text == "-ERR Dormouse: authentication timeout\r\n"
        } else {
            wire.get(4) == Some(&10) && mysql_error_codes(&wire) == [1043]
        };
        assert!(deadline, "port {port}: {text:?}");
        assert!(waited >= LOGIN_TIMEOUT - Duration::from_millis(100), "closed early: {waited:?}");
        timed_out += 1;
    }
    assert_eq!(timed_out, PER_ADDRESS, "the address's pending places");
    assert_eq!(refused, 120 - PER_ADDRESS);
    // And the address may log in again once its sockets are gone.
    let mut again = connect_from("127.0.0.2", cluster.redis_port()).await?;
    again.write_all(&resp(&["AUTH", "cache", &redis_token])).await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buf)).await??;
    assert_eq!(&buf[..n], b"+OK\r\n");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_token_flood_does_not_refuse_a_valid_token_from_the_same_address()
-> anyhow::Result<()> {
    let (cluster, admin, redis_token, mysql_token) = two_databases(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.failed_logins_per_second = 2; // a burst of 10
            proxy.rsa_per_second = 2; // a burst of 10
        }
    })
    .await?;
    // This token logged in before the flood (as a running application's has): later logins
    // take the fast path, without RSA.
    mysql_login(&cluster, &mysql_token, false).await?;

    // Redis: 4 connections × 50 wrong AUTHs from 127.0.0.1, with valid logins beside them.
    let port = cluster.redis_port();
    let flood = join_all((0..4).map(|_| async move {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut wire = Vec::new();
        for i in 0..50 {
            wire.extend(resp(&["AUTH", "cache", &format!("wrong-{i}")]));
        }
        stream.write_all(&wire).await?;
        let mut replies = String::new();
        let mut buf = [0u8; 8192];
        while replies.matches("\r\n").count() < 50 {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "closed: {replies}");
            replies.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        anyhow::Ok(replies)
    }));
    let valid = async {
        for _ in 0..10 {
            redis_login(&cluster, &redis_token).await?;
        }
        anyhow::Ok(())
    };
    let (flood, valid) = tokio::join!(flood, valid);
    valid.context("a valid Redis login beside the flood")?;
    let replies: String = flood.into_iter().collect::<anyhow::Result<Vec<_>>>()?.concat();
    let throttled = replies.matches("too many failed logins").count();
    assert_eq!(replies.matches("-WRONGPASS").count() + throttled, 200, "{replies}");
    assert!(throttled >= 150, "the flood was told to slow down: {throttled} of 200");
    redis_login(&cluster, &redis_token).await.context("a valid Redis login after the flood")?;

    // MySQL: wrong tokens without TLS, each costing an RSA decryption, until the address is
    // out of both allowances; valid logins beside them still get in.
    let flood = join_all((0..4).map(|_| async {
        let mut errors = Vec::new();
        for _ in 0..10 {
            let opts = cluster.mysql_opts("shop", "wrong", false);
            let err = mysql_async::Conn::new(opts).await.err().context("a wrong token got in")?;
            let code = server_code(&err).context("not a server error")?;
            errors.push((code, err.to_string()));
        }
        anyhow::Ok(errors)
    }));
    let valid = async {
        for tls in [false, true, false, true] {
            mysql_login(&cluster, &mysql_token, tls).await?;
        }
        anyhow::Ok(())
    };
    let (flood, valid) = tokio::join!(flood, valid);
    valid.context("a valid MySQL login beside the flood")?;
    let errors: Vec<(u16, String)> =
        flood.into_iter().collect::<anyhow::Result<Vec<_>>>()?.concat();
    assert!(errors.iter().all(|(c, _)| [1045, 1226].contains(c)), "{errors:?}");
    // Past its RSA allowance the address is told to use TLS, which needs none.
    let rsa_limited = errors.iter().filter(|(c, m)| *c == 1226 && m.contains("TLS")).count();
    assert!(rsa_limited >= 10, "{errors:?}");
    // Afterwards the known token logs in without TLS (fast path), and a brand-new token,
    // which would need RSA without TLS, logs in over TLS.
    mysql_login(&cluster, &mysql_token, false).await.context("fast path after the flood")?;
    let (_, fresh) = cluster.token(&admin, json!({ "database": "shop" })).await?;
    mysql_login(&cluster, &fresh, true).await.context("a new token over TLS")?;
    cluster.stop().await;
    Ok(())
}

/// A raw HTTP/1.1 GET of /healthz from `from`, its status line.
async fn healthz_from(from: &str, port: u16) -> anyhow::Result<String> {
    let mut stream = connect_from(from, port).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
    let (wire, _) = read_until_closed(stream, Duration::from_secs(10)).await?;
    let text = String::from_utf8_lossy(&wire);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

const API_PER_ADDRESS: usize = 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn api_slowloris_and_connection_floods_do_not_stop_healthz() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        config.api.max_connections_per_address = API_PER_ADDRESS;
        config.api.max_connections = 200;
        config.api.header_timeout = HEADER_TIMEOUT;
    })
    .await?;
    let port = cluster.running().api_addr.port();
    let started = Instant::now();

    // Slowloris from 127.0.0.2: headers a byte at a time, never finished in time.
    let slow = join_all((0..API_PER_ADDRESS).map(|_| async move {
        let mut stream = connect_from("127.0.0.2", port).await?;
        let request =
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in request.iter().cycle().take(200) {
            if stream.write_all(&[*byte]).await.is_err() {
                return anyhow::Ok(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, closed) = read_until_closed(stream, Duration::from_secs(10)).await?;
        Ok(closed)
    }));
    // A connection flood from 127.0.0.3: idle sockets, ten times what the address may hold.
    let flood = join_all((0..API_PER_ADDRESS * 10).map(|_| async move {
        let stream = connect_from("127.0.0.3", port).await?;
        let (wire, closed) = read_until_closed(stream, HEADER_TIMEOUT * 3).await?;
        anyhow::Ok((String::from_utf8_lossy(&wire).into_owned(), closed))
    }));
    // Meanwhile /healthz answers, from the usual client and from another address.
    let health = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut answered = 0;
        while started.elapsed() < HEADER_TIMEOUT + Duration::from_secs(1) {
            let r = cluster.api(reqwest::Method::GET, "/healthz", None, None).await?;
            anyhow::ensure!(r.status == reqwest::StatusCode::OK, "{r:?}");
            let line = healthz_from("127.0.0.4", port).await?;
            anyhow::ensure!(line.starts_with("HTTP/1.1 200"), "{line}");
            answered += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(answered)
    };
    let (slow, flood, health) = tokio::join!(slow, flood, health);
    assert!(health? >= 3, "/healthz kept answering");
    for closed in slow {
        let waited = closed?.duration_since(started);
        assert!(waited < HEADER_TIMEOUT + Duration::from_secs(2), "slowloris held {waited:?}");
    }
    let flood = flood.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let busy = flood.iter().filter(|(wire, _)| wire.starts_with("HTTP/1.1 503")).count();
    let idle_closed = flood.iter().filter(|(wire, _)| wire.is_empty()).count();
    assert!(busy > 0, "connections over the cap are told so");
    assert!(
        flood.iter().all(|(wire, _)| wire.is_empty() || wire.contains("too_many_connections")),
        "over the cap: our error format"
    );
    assert!(
        idle_closed >= API_PER_ADDRESS,
        "the admitted idle sockets were closed at the deadline"
    );
    assert_eq!(healthz_from("127.0.0.3", port).await?, "HTTP/1.1 200 OK", "the address recovers");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn api_request_bodies_are_bounded_in_size_and_time() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        config.api.max_body_bytes = 1024;
        config.api.body_timeout = Duration::from_secs(1);
    })
    .await?;
    let admin = cluster.admin_token();
    let big = json!({ "name": "x".repeat(4096) });
    let r = cluster.api(reqwest::Method::POST, "/v1/tenants", Some(&admin), Some(big)).await?;
    assert_eq!(r.status, reqwest::StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    assert_eq!(r.error_code(), "payload_too_large");

    // A body that stops arriving: 408 in our format once the body deadline passes.
    let port = cluster.running().api_addr.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "POST /v1/tenants HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\""
    );
    let sent = Instant::now();
    stream.write_all(head.as_bytes()).await?;
    let (wire, closed) = read_until_closed(stream, Duration::from_secs(10)).await?;
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(closed.duration_since(sent) < Duration::from_secs(5));
    // Small bodies still work.
    let r = cluster
        .api(reqwest::Method::POST, "/v1/tenants", Some(&admin), Some(json!({ "name": "ok" })))
        .await?;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{r:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_unauthenticated_redis_client_neither_resets_nor_stalls_its_way_past_the_deadline()
-> anyhow::Result<()> {
    let timeout = Duration::from_secs(2);
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.set_login_timeout(timeout);
        }
    })
    .await?;
    let port = cluster.redis_port();
    let started = Instant::now();
    // RESET before login must not start the clock again.
    let mut resetting = connect_from("127.0.0.2", port).await?;
    let resets = async {
        loop {
            if resetting.write_all(&resp(&["RESET"])).await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(500), resetting.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout * 4, resets).await.context("RESET kept the client in")?;
    assert!(started.elapsed() < timeout * 3, "closed after {:?}", started.elapsed());
    // A client that never reads what it is owed (16 KiB PING echoes) is dropped all the same:
    // its writes fail once the proxy has closed (and reset) the connection. Before, the
    // session waited to flush for ever and the writes only blocked.
    let mut stalled = connect_from("127.0.0.3", port).await?;
    let big = "x".repeat(16 * 1024 - 64);
    let started = Instant::now();
    let flood = async {
        loop {
            if stalled.write_all(&resp(&["PING", &big])).await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(timeout * 5, flood).await.context("a stalled client was kept")?;
    assert!(started.elapsed() < timeout * 5, "closed after {:?}", started.elapsed());
    cluster.stop().await;
    Ok(())
}
