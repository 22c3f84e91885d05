//! Redis multiplexing: many clients share a few backend connections; transactions, WATCH,
//! blocking calls and subscriptions behave as against the server directly although the pool is
//! smaller than the client count; replies never reach the wrong client; RESP2 and RESP3 clients
//! never share a connection; a busy pool answers with a clear error after a bounded wait.

use std::time::{Duration, Instant};

use dormouse_proxy::control::RouteLimits;
use dormouse_tests::Cluster;
use futures::StreamExt;
use redis::AsyncCommands;

/// A cluster whose databases get at most `max_backend` backend connections (2 shared), and a
/// Redis database `cache`; returns the cluster and a token for it.
async fn setup(max_backend: u32) -> anyhow::Result<(Cluster, String)> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.database_caps = Some(RouteLimits { max_clients: 10_000, max_backend });
            proxy.redis.pool_wait = Duration::from_millis(300);
        }
    })
    .await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok((cluster, token))
}

async fn connect(
    cluster: &Cluster,
    token: &str,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    connect_url(&cluster.redis_url("cache", token)).await
}

/// A connection that waits long enough for blocking calls (the crate's default is 500 ms).
async fn connect_url(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
}

/// A field of the backend server's `INFO clients` (INFO runs on a shared connection).
async fn info_field(
    con: &mut redis::aio::MultiplexedConnection,
    field: &str,
) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("clients").query_async(con).await?;
    let prefix = format!("{field}:");
    let line = info.lines().find(|l| l.starts_with(&prefix)).unwrap_or_default();
    Ok(line.trim_start_matches(&prefix).trim().parse()?)
}

#[tokio::test]
async fn a_hundred_clients_share_a_few_backend_connections_and_get_their_own_replies()
-> anyhow::Result<()> {
    let (cluster, token) = setup(8).await?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&cluster, &token).await?);
    }
    // Every client pipelines commands whose replies carry its own marker.
    let work = clients.iter().enumerate().map(|(i, con)| {
        let mut con = con.clone();
        async move {
            for round in 0..20 {
                let mut pipe = redis::pipe();
                for n in 0..10 {
                    pipe.cmd("ECHO").arg(format!("client-{i}-{round}-{n}"));
                }
                pipe.cmd("INCR").arg(format!("counter-{i}"));
                let (echoes, count): (Vec<String>, i64) = {
                    let mut values: Vec<redis::Value> = pipe.query_async(&mut con).await?;
                    let count = redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil))?;
                    (
                        values
                            .into_iter()
                            .map(redis::from_redis_value)
                            .collect::<Result<_, _>>()?,
                        count,
                    )
                };
                let expected: Vec<String> =
                    (0..10).map(|n| format!("client-{i}-{round}-{n}")).collect();
                anyhow::ensure!(echoes == expected, "client {i} got {echoes:?}");
                anyhow::ensure!(count == round + 1, "client {i} counter {count}");
            }
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(work).await {
        result?;
    }
    let seen = info_field(&mut clients[0], "connected_clients").await?;
    assert!(seen <= 4, "100 clients used {seen} backend connections");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn watch_and_multi_behave_as_on_the_server() -> anyhow::Result<()> {
    let (cluster, token) = setup(4).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    let _: () = a.set("k", "1").await?;

    // Another client changes a watched key: the transaction is aborted (nil).
    let _: () = redis::cmd("WATCH").arg("k").query_async(&mut a).await?;
    let _: () = b.set("k", "2").await?;
    let (aborted,): (Option<()>,) = match redis::pipe()
        .atomic()
        .set("k", "3")
        .ignore()
        .query_async::<Option<()>>(&mut a)
        .await?
    {
        None => (None,),
        Some(()) => (Some(()),),
    };
    assert!(aborted.is_none(), "EXEC must fail after a concurrent write");
    let v: String = a.get("k").await?;
    assert_eq!(v, "2");

    // Untouched, the same transaction goes through.
    let _: () = redis::cmd("WATCH").arg("k").query_async(&mut a).await?;
    let (x, y): (i64, i64) =
        redis::pipe().atomic().incr("n", 1).incr("n", 1).query_async(&mut a).await?;
    assert_eq!((x, y), (1, 2));
    let v: i64 = b.get("n").await?;
    assert_eq!(v, 2);

    // Many transactions at once with a pool of 2 own connections: each waits its turn.
    let work = (0..10).map(|i| {
        let url = cluster.redis_url("cache", &token);
        async move {
            let client = redis::Client::open(url.as_str())?;
            let mut con = client.get_multiplexed_async_connection().await?;
            let (n,): (i64,) =
                redis::pipe().atomic().incr("total", i).query_async(&mut con).await?;
            anyhow::Ok(n)
        }
    });
    for r in futures::future::join_all(work).await {
        r?;
    }
    let total: i64 = b.get("total").await?;
    assert_eq!(total, 45);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_blocking_call_does_not_stall_other_clients_and_a_full_pool_says_so() -> anyhow::Result<()>
{
    let (cluster, token) = setup(4).await?;
    let waiter = {
        let url = cluster.redis_url("cache", &token);
        tokio::spawn(async move {
            let mut con = connect_url(&url).await?;
            let got: Option<(String, String)> = con.blpop("jobs", 10.0).await?;
            anyhow::Ok(got)
        })
    };
    let mut other = connect(&cluster, &token).await?;
    // While BLPOP blocks, shared traffic flows.
    let started = Instant::now();
    for i in 0..50 {
        let _: () = other.set(format!("k{i}"), i).await?;
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Two own connections in this pool: BLPOP holds one, a second BLPOP the other, and a
    // third caller is told, after the pool's wait, that the database is busy.
    let second = {
        let url = cluster.redis_url("cache", &token);
        tokio::spawn(async move {
            let mut con = connect_url(&url).await?;
            let got: Option<(String, String)> = con.blpop("other-jobs", 10.0).await?;
            anyhow::Ok(got)
        })
    };
    // Both calls hold their connections once the server counts two blocked clients.
    dormouse_tests::eventually(Duration::from_secs(10), "two blocked clients", || {
        let mut con = other.clone();
        async move { (info_field(&mut con, "blocked_clients").await.ok()? == 2).then_some(()) }
    })
    .await?;
    let mut third = connect(&cluster, &token).await?;
    let refused: redis::RedisResult<Option<(String, String)>> = third.blpop("nothing", 1.0).await;
    let error = refused.expect_err("no connection left").to_string();
    assert!(error.contains("every connection of this database is busy"), "{error}");

    let _: () = other.lpush("jobs", "job-1").await?;
    let _: () = other.lpush("other-jobs", "job-2").await?;
    assert_eq!(waiter.await??, Some(("jobs".into(), "job-1".into())));
    assert_eq!(second.await??, Some(("other-jobs".into(), "job-2".into())));
    // Connections came back: a blocking call works again.
    let got: Option<(String, String)> = third.blpop("nothing", 0.1).await?;
    assert_eq!(got, None);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn subscribers_get_their_messages_while_other_clients_share_connections() -> anyhow::Result<()>
{
    let (cluster, token) = setup(8).await?;
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let client = redis::Client::open(cluster.redis_url("cache", &token))?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(format!("ch-{i}")).await?;
        subscribers.push(pubsub);
    }
    let mut publisher = connect(&cluster, &token).await?;
    for i in 0..3 {
        let n: i64 = publisher.publish(format!("ch-{i}"), format!("hello {i}")).await?;
        assert_eq!(n, 1);
    }
    for (i, sub) in subscribers.iter_mut().enumerate() {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next()).await?;
        let payload: String = msg.map(|m| m.get_payload()).transpose()?.unwrap_or_default();
        assert_eq!(payload, format!("hello {i}"));
    }
    // Unsubscribed, the connection goes back and the client carries on.
    for sub in &mut subscribers {
        sub.unsubscribe("ch-0").await?;
    }
    let v: Option<String> = publisher.get("nothing").await?;
    assert_eq!(v, None);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn resp2_and_resp3_clients_each_get_their_own_protocol() -> anyhow::Result<()> {
    let (cluster, token) = setup(8).await?;
    let resp2 = redis::Client::open(cluster.redis_url("cache", &token))?;
    let resp3 = redis::Client::open(
        format!("{}?protocol=resp3", cluster.redis_url("cache", &token)).as_str(),
    )?;
    let mut c2 = resp2.get_multiplexed_async_connection().await?;
    let mut c3 = resp3.get_multiplexed_async_connection().await?;
    let _: () = c2.hset("h", "f", "v").await?;
    for _ in 0..50 {
        // A map on RESP3, a flat array on RESP2: a shared connection would mix them up.
        let v3: redis::Value = redis::cmd("HGETALL").arg("h").query_async(&mut c3).await?;
        assert!(matches!(v3, redis::Value::Map(_)), "{v3:?}");
        let v2: redis::Value = redis::cmd("HGETALL").arg("h").query_async(&mut c2).await?;
        assert!(matches!(v2, redis::Value::Array(_)), "{v2:?}");
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn client_names_and_ids_belong_to_each_client_and_only_database_0_exists()
-> anyhow::Result<()> {
    let (cluster, token) = setup(8).await?;
    let mut a = connect(&cluster, &token).await?;
    let mut b = connect(&cluster, &token).await?;
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("alice").query_async(&mut a).await?;
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("bob").query_async(&mut b).await?;
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut a).await?;
    assert_eq!(name, "alice");
    let ida: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut a).await?;
    let idb: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut b).await?;
    assert_ne!(ida, idb);
    let ok: String = redis::cmd("SELECT").arg(0).query_async(&mut a).await?;
    assert_eq!(ok, "OK");
    let err =
        redis::cmd("SELECT").arg(1).query_async::<String>(&mut a).await.expect_err("only db 0");
    assert!(err.to_string().contains("DB index is out of range"), "{err}");
    let err =
        redis::cmd("MOVE").arg("k").arg(1).query_async::<i64>(&mut a).await.expect_err("refused");
    assert!(err.to_string().contains("not allowed on Dormouse"), "{err}");
    cluster.stop().await;
    Ok(())
}
