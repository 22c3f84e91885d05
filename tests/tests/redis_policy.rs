//! What a Redis tenant may not do, from scripts as well as directly: reach other numbered
//! databases or administer the server from Lua, change scripts with a read-only token, or learn
//! about the host from `INFO`. The server's own ACL is checked too, without the proxy.

use anyhow::Context;
use dormouse_tests::Cluster;
use dormouse_tests::resp::RawRedis;
use serde_json::json;

/// A tenant with a Redis database `cache`; returns the cluster, its read-write and read-only
/// tokens, and the tenant's id.
async fn setup() -> anyhow::Result<(Cluster, String, String, String)> {
    let cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let rw = db["token"]["token"].as_str().context("token")?.to_owned();
    let (_, ro) = cluster.token(&admin, json!({ "database": "cache", "role": "readonly" })).await?;
    Ok((cluster, rw, ro, tenant_id))
}

/// A client logged in with `user` and `password` on `port` (the proxy or a server).
async fn login(port: u16, user: &str, password: &str) -> anyhow::Result<RawRedis> {
    let mut c = RawRedis::connect(port).await?;
    let reply = text(&c.call(&["AUTH", user, password]).await?);
    anyhow::ensure!(reply == "+OK\r\n", "login as {user}: {reply}");
    Ok(c)
}

fn text(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame).into_owned()
}

/// Runs `args`; the reply must be an error containing `expect`.
async fn refused(c: &mut RawRedis, args: &[&str], expect: &str) -> anyhow::Result<()> {
    let reply = text(&c.call(args).await?);
    anyhow::ensure!(
        reply.starts_with('-') && reply.contains(expect),
        "{args:?} should be refused with {expect:?}, got {reply:?}"
    );
    Ok(())
}

/// Runs `args`; the reply must be exactly `expect`.
async fn answers(c: &mut RawRedis, args: &[&str], expect: &str) -> anyhow::Result<()> {
    let reply = text(&c.call(args).await?);
    anyhow::ensure!(reply == expect, "{args:?} should answer {expect:?}, got {reply:?}");
    Ok(())
}

/// A function library: `rd` reads (flagged `no-writes`); the others try what the proxy
/// refuses.
const LIBRARY: &str = "#!lua name=escapes
redis.register_function{function_name='rd', callback=function(k) return redis.call('GET', k[1]) end, flags={'no-writes'}}
redis.register_function('swap', function() return redis.call('SWAPDB', 0, 1) end)
redis.register_function('sel', function() return redis.call('SELECT', 5) end)
redis.register_function('wr', function(k) return redis.call('SET', k[1], 'fn') end)";

const CANT_RUN: &str = "can't run this command";
const OUT_OF_RANGE: &str = "DB index is out of range";
const NOSCRIPT: &str = "not allowed from script";

#[tokio::test]
async fn scripts_cannot_run_what_the_proxy_refuses() -> anyhow::Result<()> {
    let (cluster, rw, _, _) = setup().await?;
    let mut c = login(cluster.redis_port(), "cache", &rw).await?;
    answers(&mut c, &["SET", "k", "v"], "+OK\r\n").await?;

    // Other numbered databases do not exist on the server, so nothing reaches them.
    for (script, expect) in [
        ("return redis.call('SELECT', 5)", OUT_OF_RANGE),
        ("return redis.call('COPY', 'k', 'k2', 'DB', 1)", OUT_OF_RANGE),
        ("return redis.call('SWAPDB', 0, 1)", CANT_RUN),
        ("return redis.call('MOVE', 'k', 1)", CANT_RUN),
        ("return redis.call('SLOWLOG', 'GET')", CANT_RUN),
        ("return redis.call('PFDEBUG', 'GETREG', 'k')", CANT_RUN),
        ("return redis.call('INFO')", CANT_RUN),
        ("return redis.call('INFO', 'server')", CANT_RUN),
        ("return redis.call('MIGRATE', '127.0.0.1', 1, 'k', 0, 100)", CANT_RUN),
        ("return redis.call('MEMORY', 'MALLOC-STATS')", CANT_RUN),
        // Refused from any script (`noscript`), and by the ACL too.
        ("return redis.call('CONFIG', 'SET', 'dir', '/tmp')", NOSCRIPT),
        ("return redis.call('SHUTDOWN')", NOSCRIPT),
        ("return redis.call('REPLICAOF', '127.0.0.1', 1)", NOSCRIPT),
        ("return redis.call('LATENCY', 'DOCTOR')", NOSCRIPT),
    ] {
        refused(&mut c, &["EVAL", script, "0"], expect).await?;
    }
    // The same from a cached script and from a function.
    let sha = text(&c.call(&["SCRIPT", "LOAD", "return redis.call('SWAPDB', 0, 1)"]).await?);
    let sha = sha.lines().nth(1).context("a script sha")?.to_owned();
    refused(&mut c, &["EVALSHA", &sha, "0"], CANT_RUN).await?;
    answers(&mut c, &["FUNCTION", "LOAD", LIBRARY], "$7\r\nescapes\r\n").await?;
    refused(&mut c, &["FCALL", "swap", "0"], CANT_RUN).await?;
    refused(&mut c, &["FCALL", "sel", "0"], OUT_OF_RANGE).await?;
    // And directly, where the proxy answers first.
    refused(&mut c, &["SELECT", "5"], "out of range").await?;
    refused(&mut c, &["SWAPDB", "0", "1"], "NOPERM").await?;
    refused(&mut c, &["MOVE", "k", "1"], "NOPERM").await?;
    refused(&mut c, &["SCRIPT", "DEBUG", "YES"], "NOPERM").await?;
    refused(&mut c, &["COPY", "k", "k2", "DB", "1"], OUT_OF_RANGE).await?;

    // The key stayed where it was; the tenant's own data is still the tenant's to drop.
    answers(&mut c, &["GET", "k"], "$1\r\nv\r\n").await?;
    answers(&mut c, &["EVAL", "return redis.call('FLUSHALL')", "0"], "+OK\r\n").await?;
    answers(&mut c, &["DBSIZE"], ":0\r\n").await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn readonly_tokens_cannot_change_scripts_or_write_from_them() -> anyhow::Result<()> {
    let (cluster, rw, ro, _) = setup().await?;
    let port = cluster.redis_port();
    let mut writer = login(port, "cache", &rw).await?;
    answers(&mut writer, &["SET", "k", "v"], "+OK\r\n").await?;
    let sha = text(&writer.call(&["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"]).await?);
    let sha = sha.lines().nth(1).context("a script sha")?.to_owned();
    answers(&mut writer, &["FUNCTION", "LOAD", LIBRARY], "$7\r\nescapes\r\n").await?;

    let mut reader = login(port, "cache", &ro).await?;
    for args in [
        &["SCRIPT", "FLUSH"][..],
        &["SCRIPT", "LOAD", "return 1"],
        &["SCRIPT", "KILL"],
        &["FUNCTION", "LOAD", "REPLACE", LIBRARY],
        &["FUNCTION", "DELETE", "escapes"],
        &["FUNCTION", "FLUSH"],
        &["FUNCTION", "RESTORE", "payload"],
        &["FUNCTION", "KILL"],
        &["EVAL", "return redis.call('SET', KEYS[1], 'w')", "1", "k"],
        &["EVALSHA", &sha, "1", "k"],
        &["FCALL", "wr", "1", "k"],
        &["PUBLISH", "ch", "m"],
    ] {
        refused(&mut reader, args, "NOPERM this token is read-only").await?;
    }
    // A read-only script that tries to write is stopped by the server's ACL for read-only
    // sessions (before its read-only-script check, whose message differs).
    refused(
        &mut reader,
        &["EVAL_RO", "return redis.call('SET', KEYS[1], 'w')", "1", "k"],
        CANT_RUN,
    )
    .await?;
    refused(&mut reader, &["FCALL_RO", "wr", "1", "k"], "write flag").await?;

    // Reads work, through scripts too, and nothing the writer set up was touched.
    answers(&mut reader, &["GET", "k"], "$1\r\nv\r\n").await?;
    answers(&mut reader, &["EVALSHA_RO", &sha, "1", "k"], "$1\r\nv\r\n").await?;
    answers(&mut reader, &["FCALL_RO", "rd", "1", "k"], "$1\r\nv\r\n").await?;
    answers(&mut reader, &["SCRIPT", "EXISTS", &sha], "*1\r\n:1\r\n").await?;
    let functions = text(&reader.call(&["FUNCTION", "LIST"]).await?);
    assert!(functions.contains("escapes"), "{functions}");

    // Logging in again on the same connection with a read-write token gets a writer's link.
    answers(&mut reader, &["AUTH", "cache", &rw], "+OK\r\n").await?;
    answers(
        &mut reader,
        &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k"],
        "$1\r\nv\r\n",
    )
    .await?;
    answers(&mut reader, &["SET", "k", "w"], "+OK\r\n").await?;
    answers(&mut reader, &["AUTH", "cache", &ro], "+OK\r\n").await?;
    refused(
        &mut reader,
        &["EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", "1", "k"],
        CANT_RUN,
    )
    .await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn info_shows_no_host_paths_ports_or_process_ids() -> anyhow::Result<()> {
    let (cluster, rw, ro, tenant_id) = setup().await?;
    let route = cluster.backend(&tenant_id, "cache").await?;
    let port = cluster.redis_port();
    let data_dir = cluster.data_dir().to_string_lossy().into_owned();
    let backend_port = format!(":{}\r\n", route.port);
    for (token, resp3) in [(&rw, false), (&ro, false), (&rw, true)] {
        let mut c = login(port, "cache", token).await?;
        if resp3 {
            let hello = text(&c.call(&["HELLO", "3"]).await?);
            assert!(hello.starts_with('%'), "{hello}");
        }
        for args in [&["INFO"][..], &["INFO", "everything"], &["info", "server", "memory"]] {
            let info = text(&c.call(args).await?);
            let body = if resp3 { info.strip_prefix('=') } else { info.strip_prefix('$') };
            assert!(body.is_some(), "{args:?}: {info}");
            assert!(info.contains("redis_version:"), "{args:?}: {info}");
            for leak in [
                "executable:",
                "config_file:",
                "\nos:",
                "tcp_port:",
                "process_id:",
                "run_id:",
                "master_replid:",
                "total_system_memory:",
                data_dir.as_str(),
                backend_port.as_str(),
            ] {
                assert!(!info.contains(leak), "{args:?} shows {leak:?}: {info}");
            }
        }
        if resp3 {
            let info = text(&c.call(&["INFO", "keyspace"]).await?);
            assert!(info.starts_with('=') && info.contains("\r\ntxt:"), "{info}");
        }
        // The figures a tenant wants are there.
        let info = text(&c.call(&["INFO", "memory"]).await?);
        assert!(info.contains("used_memory:") && info.contains("maxmemory:"), "{info}");
    }
    // Pipelined, INFO's reply keeps its place among the others.
    let mut c = login(port, "cache", &rw).await?;
    c.send(&[&["ECHO", "a"], &["INFO", "clients"], &["ECHO", "b"]]).await?;
    assert_eq!(text(&c.frame().await?), "$1\r\na\r\n");
    assert!(text(&c.frame().await?).contains("connected_clients:"));
    assert_eq!(text(&c.frame().await?), "$1\r\nb\r\n");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_servers_own_acl_refuses_what_the_proxy_refuses() -> anyhow::Result<()> {
    let (cluster, _, _, tenant_id) = setup().await?;
    let route = cluster.backend(&tenant_id, "cache").await?;
    let pw = route.password.0.clone();

    // The user read-write sessions log in as.
    let mut rw = login(route.port, &route.user, &pw).await?;
    answers(&mut rw, &["SET", "k", "v"], "+OK\r\n").await?;
    for args in [
        &["SWAPDB", "0", "1"][..],
        &["MOVE", "k", "1"],
        &["INFO"],
        &["CONFIG", "GET", "dir"],
        &["ACL", "WHOAMI"],
        &["MIGRATE", "127.0.0.1", "1", "k", "0", "100"],
        &["MONITOR"],
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
        &["SCRIPT", "DEBUG", "YES"],
        &["SHUTDOWN"],
    ] {
        refused(&mut rw, args, "NOPERM").await?;
    }
    // Switched off in the server's configuration, before its ACL is asked.
    refused(&mut rw, &["DEBUG", "SLEEP", "0"], "DEBUG command not allowed").await?;
    refused(&mut rw, &["SELECT", "1"], OUT_OF_RANGE).await?;

    // The user read-only sessions log in as.
    let ro_user = route.readonly_user.clone().context("a Redis route names its read-only user")?;
    let mut ro = login(route.port, &ro_user, &pw).await?;
    answers(&mut ro, &["GET", "k"], "$1\r\nv\r\n").await?;
    for args in [
        &["SET", "k", "w"][..],
        &["DEL", "k"],
        &["FLUSHALL"],
        &["EVAL", "return 1", "0"],
        &["SCRIPT", "FLUSH"],
        &["SCRIPT", "LOAD", "return 1"],
        &["FUNCTION", "FLUSH"],
        &["PUBLISH", "ch", "m"],
        &["INFO"],
    ] {
        refused(&mut ro, args, "NOPERM").await?;
    }
    refused(&mut ro, &["EVAL_RO", "return redis.call('DEL', KEYS[1])", "1", "k"], CANT_RUN).await?;

    // The INFO user runs INFO and nothing else.
    let info_user = route.info_user.clone().context("a Redis route names its INFO user")?;
    let mut info = login(route.port, &info_user, &pw).await?;
    assert!(text(&info.call(&["INFO", "server"]).await?).contains("redis_version:"));
    for args in [&["GET", "k"][..], &["EVAL_RO", "return 1", "0"], &["CONFIG", "GET", "dir"]] {
        refused(&mut info, args, "NOPERM").await?;
    }
    cluster.stop().await;
    Ok(())
}
