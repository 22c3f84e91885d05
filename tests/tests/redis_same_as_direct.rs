//! The proxy answers exactly as the server does: scripted sessions of transactions, WATCH,
//! blocking calls, pub/sub (RESP2 and RESP3), pipelines and errors run once against the server
//! directly and once through the proxy, whose small pool is kept busy by other clients; the
//! replies must match byte for byte.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use dormouse_proxy::control::RouteLimits;
use dormouse_tests::resp::RawRedis;
use dormouse_tests::{Background, Cluster, first_difference};
use redis::AsyncCommands;

/// One step of a scripted session.
enum Step {
    /// Client `.0` sends `.1` in one write and reads `.2` reply frames.
    Do(usize, &'static [&'static [&'static str]], usize),
    /// Client `.0` reads `.1` frames it is owed (a blocked call's answer, a published message).
    Read(usize, usize),
    /// Waits until the server has `.0` clients blocked, so what unblocks them comes after.
    Blocked(u64),
    /// Client `.0` sends `.1` and reads one reply it does not compare (one that names the
    /// connection, such as HELLO's).
    Unchecked(usize, &'static [&'static str]),
}
use Step::{Blocked, Do, Read, Unchecked};

struct Script {
    name: &'static str,
    /// Per client: whether it speaks RESP3 (`HELLO 3`).
    resp3: &'static [bool],
    steps: &'static [Step],
}

const SCRIPTS: &[Script] = &[
    Script {
        name: "transactions",
        resp3: &[false],
        steps: &[
            Do(0, &[&["MULTI"], &["SET", "t:a", "1"], &["INCR", "t:a"], &["LPUSH", "t:a", "x"]], 4),
            Do(0, &[&["EXEC"]], 1),
            Do(0, &[&["MULTI"], &["SET", "t:b", "1"], &["NOSUCH", "x"], &["GET"]], 4),
            Do(0, &[&["EXEC"], &["EXISTS", "t:b"]], 2),
            Do(0, &[&["EXEC"], &["DISCARD"], &["MULTI"], &["MULTI"], &["WATCH", "t:a"]], 5),
            Do(0, &[&["SET", "t:c", "v"], &["DISCARD"], &["GET", "t:c"]], 3),
            Do(0, &[&["MULTI"], &["BLPOP", "t:empty", "1"], &["PING"], &["EXEC"]], 4),
        ],
    },
    Script {
        name: "watch",
        resp3: &[false, false],
        steps: &[
            Do(0, &[&["SET", "w:k", "1"], &["WATCH", "w:k"]], 2),
            Do(1, &[&["SET", "w:k", "2"]], 1),
            Do(0, &[&["MULTI"], &["SET", "w:k", "3"], &["EXEC"], &["GET", "w:k"]], 4),
            Do(0, &[&["WATCH", "w:k"], &["UNWATCH"]], 2),
            Do(1, &[&["SET", "w:k", "4"]], 1),
            Do(0, &[&["MULTI"], &["INCR", "w:k"], &["EXEC"]], 3),
            Do(0, &[&["WATCH", "w:gone"], &["MULTI"], &["SET", "w:gone", "x"], &["EXEC"]], 4),
        ],
    },
    Script {
        name: "blocking",
        resp3: &[false, false, true],
        steps: &[
            Do(0, &[&["BLPOP", "b:none", "0.05"], &["WAIT", "0", "0"]], 2),
            Do(2, &[&["BLPOP", "b:none", "0.05"]], 1),
            Do(0, &[&["BLPOP", "b:q", "b:r", "10"]], 0),
            Blocked(1),
            Do(1, &[&["RPUSH", "b:r", "a", "b"]], 1),
            Read(0, 1),
            Do(1, &[&["LRANGE", "b:r", "0", "-1"]], 1),
            Do(0, &[&["BLMOVE", "b:src", "b:dst", "LEFT", "RIGHT", "10"]], 0),
            Do(2, &[&["BZPOPMIN", "b:z", "10"]], 0),
            Blocked(2),
            Do(1, &[&["LPUSH", "b:src", "m"], &["ZADD", "b:z", "1", "one", "2", "two"]], 2),
            Read(0, 1),
            Read(2, 1),
            Do(0, &[&["XADD", "b:s", "1-1", "f", "v"]], 1),
            Do(0, &[&["XREAD", "BLOCK", "10000", "STREAMS", "b:s", "$"]], 0),
            Do(2, &[&["XREAD", "COUNT", "5", "BLOCK", "10000", "STREAMS", "b:s", "1-1"]], 0),
            Blocked(2),
            Do(1, &[&["XADD", "b:s", "2-1", "g", "w"]], 1),
            Read(0, 1),
            Read(2, 1),
            Do(0, &[&["LRANGE", "b:dst", "0", "-1"], &["ZRANGE", "b:z", "0", "-1"]], 2),
        ],
    },
    Script {
        name: "pub/sub in RESP2",
        resp3: &[false, false],
        steps: &[
            Do(0, &[&["SUBSCRIBE", "ps:a", "ps:b"], &["PSUBSCRIBE", "ps:p*"]], 3),
            Do(1, &[&["PUBLISH", "ps:a", "hi"], &["PUBLISH", "ps:pq", "there"]], 2),
            Read(0, 2),
            Do(0, &[&["PING"], &["PING", "x"], &["GET", "ps:k"]], 3),
            Do(1, &[&["PUBSUB", "NUMSUB", "ps:a", "ps:c"], &["PUBSUB", "NUMPAT"]], 2),
            Do(0, &[&["UNSUBSCRIBE", "ps:a", "ps:b"], &["PUNSUBSCRIBE", "ps:p*"]], 3),
            Do(1, &[&["PUBLISH", "ps:a", "nobody"]], 1),
            Do(0, &[&["SET", "ps:k", "v"], &["GET", "ps:k"], &["PING"]], 3),
            Do(0, &[&["SSUBSCRIBE", "ps:s"]], 1),
            Do(1, &[&["SPUBLISH", "ps:s", "sharded"]], 1),
            Read(0, 1),
            Do(0, &[&["SUNSUBSCRIBE", "ps:s"]], 1),
        ],
    },
    Script {
        name: "pub/sub in RESP3",
        resp3: &[true, true, false],
        steps: &[
            Do(0, &[&["SUBSCRIBE", "p3:a"], &["SET", "p3:k", "v"], &["GET", "p3:k"]], 3),
            Do(2, &[&["PUBLISH", "p3:a", "to resp3"]], 1),
            Read(0, 1),
            Do(1, &[&["PSUBSCRIBE", "p3:*"], &["PING"]], 2),
            Do(2, &[&["PUBLISH", "p3:a", "both"]], 1),
            Read(0, 1),
            Read(1, 1),
            Do(0, &[&["UNSUBSCRIBE"], &["HGETALL", "p3:none"], &["PING"]], 3),
            Do(1, &[&["PUNSUBSCRIBE"]], 1),
        ],
    },
    Script {
        name: "pipelines and errors",
        resp3: &[false, true],
        steps: &[
            Do(
                0,
                &[
                    &["SET", "e:n", "1"],
                    &["INCR", "e:n"],
                    &["LPUSH", "e:n", "x"],
                    &["NOSUCH", "a", "b"],
                    &["GET"],
                    &["INCRBY", "e:n", "x"],
                    &["HSET", "e:h", "f", "v", "g", "w"],
                    &["HGETALL", "e:h"],
                    &["GET", "e:n"],
                ],
                9,
            ),
            Do(
                1,
                &[
                    &["HGETALL", "e:h"],
                    &["SADD", "e:s", "x"],
                    &["SMEMBERS", "e:s"],
                    &["GET", "e:none"],
                    &["ZADD", "e:z", "1.5", "m"],
                    &["ZSCORE", "e:z", "m"],
                    &["OBJECT", "ENCODING", "e:h"],
                ],
                7,
            ),
        ],
    },
    Script {
        name: "scripts, expiry and protocol switches",
        resp3: &[false, false],
        steps: &[
            Do(0, &[&["EVAL", "return redis.call('INCR', KEYS[1])", "1", "x:n"]], 1),
            Do(
                0,
                &[&["EVAL", "return {1, 'two', {3.5}, redis.call('GET', KEYS[1])}", "1", "x:n"]],
                1,
            ),
            Do(0, &[&["EVAL", "return redis.call('NOSUCH')", "0"]], 1),
            Do(0, &[&["EVALSHA", "0000000000000000000000000000000000000000", "0"]], 1),
            Do(0, &[&["SCRIPT", "LOAD", "return ARGV[1]"]], 1),
            Do(1, &[&["EVALSHA", "098e0f0d1448c0a81dafe820f66d460eb09263da", "0", "hi"]], 1),
            Do(0, &[&["SET", "x:e", "v", "EX", "100"], &["TTL", "x:e"], &["PERSIST", "x:e"]], 3),
            Do(0, &[&["TTL", "x:e"], &["TYPE", "x:e"], &["OBJECT", "FREQ", "x:e"]], 3),
            Do(1, &[&["RPUSH", "x:l", "3", "1", "2"], &["SORT", "x:l"], &["LPOS", "x:l", "2"]], 3),
            Do(0, &[&["CLIENT", "SETNAME", "me"], &["CLIENT", "GETNAME"]], 2),
            Do(1, &[&["CLIENT", "GETNAME"]], 1),
            Unchecked(1, &["HELLO", "3"]),
            Do(1, &[&["HSET", "x:h", "a", "1"], &["HGETALL", "x:h"], &["GET", "x:none"]], 3),
            Unchecked(1, &["HELLO", "2"]),
            Do(1, &[&["HGETALL", "x:h"], &["GET", "x:none"], &["ZSCORE", "x:none", "m"]], 3),
            Do(0, &[&["GETDEL", "x:n"], &["GETDEL", "x:n"], &["SET", "x:big", "0"]], 3),
        ],
    },
    Script {
        name: "select, help, reset and quit",
        resp3: &[false],
        steps: &[
            Do(0, &[&["SELECT", "0"]], 1),
            Do(0, &[&["OBJECT", "HELP"]], 1),
            Do(0, &[&["RESET"], &["GET", "y:a"], &["QUIT"]], 3),
        ],
    },
];

/// How a client logs in: user and password of the server's internal user, or of the proxy.
struct Login {
    port: u16,
    user: String,
    password: String,
}

impl Login {
    async fn client(&self, resp3: bool) -> anyhow::Result<RawRedis> {
        let mut c = RawRedis::connect(self.port).await?;
        let reply = if resp3 {
            c.call(&["HELLO", "3", "AUTH", &self.user, &self.password]).await?
        } else {
            c.call(&["AUTH", &self.user, &self.password]).await?
        };
        anyhow::ensure!(!reply.starts_with(b"-"), "login: {}", String::from_utf8_lossy(&reply));
        Ok(c)
    }
}

/// Runs `script` with clients logged in by `login`; returns what each step received. `watcher`
/// may run INFO on the server.
async fn run(
    script: &Script,
    login: &Login,
    watcher: &mut RawRedis,
) -> anyhow::Result<Vec<String>> {
    let mut clients = Vec::new();
    for &resp3 in script.resp3 {
        clients.push(login.client(resp3).await?);
    }
    let mut transcript = Vec::new();
    for (n, step) in script.steps.iter().enumerate() {
        let (client, reads) = match *step {
            Do(c, commands, reads) => {
                clients[c].send(commands).await?;
                (c, reads)
            }
            Read(c, reads) => (c, reads),
            Blocked(count) => {
                blocked(watcher, count).await?;
                continue;
            }
            Unchecked(c, command) => {
                clients[c].call(command).await?;
                continue;
            }
        };
        for _ in 0..reads {
            let frame = clients[client].frame().await.with_context(|| format!("step {n}"))?;
            transcript.push(format!("{n} c{client} {}", String::from_utf8_lossy(&frame)));
        }
    }
    for (c, client) in clients.iter_mut().enumerate() {
        let unread = client.unread(Duration::from_millis(50)).await?;
        if !unread.is_empty() {
            transcript.push(format!("unexpected for c{c}: {}", String::from_utf8_lossy(&unread)));
        }
    }
    Ok(transcript)
}

/// Waits until the server reports `count` blocked clients.
async fn blocked(watcher: &mut RawRedis, count: u64) -> anyhow::Result<()> {
    for _ in 0..1000 {
        let info = watcher.call(&["INFO", "clients"]).await?;
        let info = String::from_utf8_lossy(&info);
        let now = info
            .lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if now == Some(count) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("the server never had {count} blocked clients")
}

#[tokio::test]
async fn scripted_sessions_get_the_same_bytes_through_the_proxy_as_from_the_server()
-> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            // Two shared connections and four of their own for transactions, blocking calls
            // and subscribers: fewer than the scripts' clients plus the background load.
            proxy.database_caps = Some(RouteLimits { max_clients: 10_000, max_backend: 6 });
        }
    })
    .await?;
    let (admin_token, tenant_id) = cluster.tenant_with_id("acme").await?;
    let db = cluster.database(&admin_token, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().context("token")?.to_owned();
    let route = cluster.backend(&tenant_id, "cache").await?;
    // Only the server's INFO user may run INFO.
    let info_user = route.info_user.clone().context("a Redis route names its INFO user")?;
    let mut watcher =
        Login { port: route.port, user: info_user, password: route.password.0.clone() }
            .client(false)
            .await?;
    let direct = Login { port: route.port, user: route.user.clone(), password: route.password.0 };
    let proxied =
        Login { port: cluster.redis_port(), user: "cache".into(), password: token.clone() };
    let mut admin = direct.client(false).await?;

    // Other clients keep the shared connections busy while the scripts run through the proxy.
    let mut load = Background::default();
    for i in 0..16 {
        let url = cluster.redis_url("cache", &token);
        load.spawn(|stop| async move {
            let mut con = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
            let key = format!("load:{i}");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let _: () = con.set(&key, n).await?;
                let got: u64 = con.get(&key).await?;
                anyhow::ensure!(got == n, "load client {i} read {got}, wrote {n}");
            }
            anyhow::Ok(n)
        });
    }
    let mut started = false;
    for _ in 0..1000 {
        started = admin.call(&["EXISTS", "load:0", "load:15"]).await? == b":2\r\n";
        if started {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(started, "the load clients never started");

    let mut mismatches = Vec::new();
    for script in SCRIPTS {
        let expected = run(script, &direct, &mut watcher).await.context(script.name)?;
        for key in script_keys(script) {
            admin.call(&["DEL", key]).await?;
        }
        let got = run(script, &proxied, &mut watcher).await.context(script.name)?;
        for key in script_keys(script) {
            admin.call(&["DEL", key]).await?;
        }
        mismatches.extend(first_difference(script.name, &expected, &got));
    }
    load.finish().await?;
    assert!(mismatches.is_empty(), "replies differ:\n{}", mismatches.join("\n"));
    Ok(())
}

/// Every key a script names (arguments with the script's `prefix:` form).
fn script_keys(script: &Script) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = script
        .steps
        .iter()
        .filter_map(|s| match s {
            Do(_, commands, _) => Some(commands.iter().flat_map(|c| c.iter().skip(1).copied())),
            _ => None,
        })
        .flatten()
        .filter(|a| {
            a.split_once(':')
                .is_some_and(|(p, _)| ["t", "w", "b", "ps", "p3", "e", "x"].contains(&p))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
