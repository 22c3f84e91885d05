//! Clients the benchmark drives itself: logins for connection churn, and many idle
//! connections that stay logged in.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tools::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Redis,
    Mysql,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Redis => "Redis",
            Engine::Mysql => "MySQL",
        })
    }
}

/// A logged-in connection.
pub enum Client {
    Redis(TcpStream),
    Mysql(mysql_async::Conn),
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// `AUTH` then `PING`, pipelined; done at `+PONG`.
async fn redis_login(at: &Endpoint) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", at.port)).await?;
    stream.set_nodelay(true)?;
    let mut req = match &at.user {
        Some(user) => resp(&["AUTH", user, &at.password]),
        None => resp(&["AUTH", &at.password]),
    };
    req.extend_from_slice(&resp(&["PING"]));
    stream.write_all(&req).await?;
    let mut buf = Vec::with_capacity(64);
    while !buf.ends_with(b"+PONG\r\n") {
        let mut chunk = [0u8; 64];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(!buf.starts_with(b"-"), "{}", String::from_utf8_lossy(&buf));
    }
    Ok(stream)
}

/// A login and `SELECT 1`. The session settings mysql_async would otherwise query at connect
/// are given, so a login is exactly the handshake plus one query.
async fn mysql_login(at: &Endpoint, db: &str) -> anyhow::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(at.port)
        .user(at.user.clone())
        .pass(Some(at.password.clone()))
        .db_name(Some(db))
        .prefer_socket(false)
        .max_allowed_packet(Some(16 << 20))
        .wait_timeout(Some(28800));
    let mut conn = mysql_async::Conn::new(opts).await?;
    let one: Option<i32> = conn.query_first("SELECT 1").await?;
    anyhow::ensure!(one == Some(1), "SELECT 1 returned {one:?}");
    Ok(conn)
}

pub async fn login(engine: Engine, at: &Endpoint, db: &str) -> anyhow::Result<Client> {
    Ok(match engine {
        Engine::Redis => Client::Redis(redis_login(at).await?),
        Engine::Mysql => Client::Mysql(mysql_login(at, db).await?),
    })
}

async fn logout(client: Client) -> anyhow::Result<()> {
    match client {
        Client::Redis(mut s) => {
            s.write_all(&resp(&["QUIT"])).await?;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }
        Client::Mysql(c) => c.disconnect().await?,
    }
    Ok(())
}

/// Connection churn: `workers` loops of connect → log in → one query → disconnect for
/// `length`; returns completed cycles per second.
pub async fn churn(
    engine: Engine,
    at: &Endpoint,
    db: &str,
    workers: usize,
    length: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let counts = futures::future::try_join_all((0..workers).map(|_| async {
        let mut n = 0u64;
        while started.elapsed() < length {
            logout(login(engine, at, db).await?).await?;
            n += 1;
        }
        anyhow::Ok(n)
    }))
    .await?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

/// Opens `count` logged-in connections, `concurrency` logins at a time.
pub async fn open_idle(
    engine: Engine,
    at: &Endpoint,
    db: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Client>> {
    futures::stream::iter(0..count)
        .map(|_| login(engine, at, db))
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

/// Closes idle connections politely, so the proxy sees ordinary disconnects.
pub async fn close_all(clients: Vec<Client>) {
    futures::stream::iter(clients)
        .for_each_concurrent(64, |c| async { drop(logout(c).await) })
        .await;
}
