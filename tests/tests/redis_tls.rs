//! `rediss://` through the proxy with stock clients (`redis-cli --tls`, redis-py, ioredis):
//! the proxy's self-signed certificate verifies for 127.0.0.1 and localhost, AUTH and
//! pipelines run inside TLS, plaintext clients share the port, a client that does not trust
//! the certificate refuses it, and the TLS-only port takes nothing but TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use dormouse_tests::{Cluster, stdout};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tenant with a Redis database `cache`; returns the cluster, the database as created by the
/// API (with its connection info) and its token.
async fn setup(cluster: Cluster) -> anyhow::Result<(Cluster, Value, String)> {
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok((cluster, db, token))
}

/// Runs a command to its end, with a deadline.
async fn run(cmd: &mut tokio::process::Command) -> anyhow::Result<Output> {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("timed out")?
        .context("starting the client")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// `redis-cli --tls` against `port` on `host`, trusting `cacert` if given.
async fn redis_cli_tls(
    host: &str,
    port: u16,
    cacert: Option<&Path>,
    token: &str,
    args: &[&str],
) -> anyhow::Result<Output> {
    let port = port.to_string();
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["--tls", "-h", host, "-p", &port, "--no-auth-warning", "--user", "cache"]);
    cmd.args(["--pass", token]);
    if let Some(ca) = cacert {
        cmd.arg("--cacert").arg(ca);
    }
    run(cmd.args(args)).await
}

#[tokio::test]
async fn redis_cli_over_tls_verifies_the_certificate_and_authenticates_inside() -> anyhow::Result<()>
{
    let (cluster, _, token) = setup(Cluster::start().await?).await?;
    let (port, ca) = (cluster.redis_port(), cluster.tls_cert());
    for host in ["127.0.0.1", "localhost"] {
        let out = redis_cli_tls(host, port, Some(&ca), &token, &["SET", "k", host]).await?;
        assert_eq!(stdout(&out), "OK", "{host}: {}", stderr(&out));
        let out = redis_cli_tls(host, port, Some(&ca), &token, &["GET", "k"]).await?;
        assert_eq!(stdout(&out), host);
    }
    let out = redis_cli_tls("127.0.0.1", port, Some(&ca), "not-a-token", &["GET", "k"]).await?;
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("WRONGPASS"),
        "a wrong token over TLS: {out:?}"
    );
    // Plaintext on the same port, meanwhile.
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["GET", "k"]).await?;
    assert_eq!(stdout(&out), "localhost");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_refuses_the_proxy() -> anyhow::Result<()> {
    let (cluster, _, token) = setup(Cluster::start().await?).await?;
    // No --cacert: the system's authorities, which never signed the proxy's certificate.
    let out = redis_cli_tls("127.0.0.1", cluster.redis_port(), None, &token, &["PING"]).await?;
    assert_ne!(stdout(&out), "PONG");
    assert!(stderr(&out).to_lowercase().contains("certificate"), "{out:?}");
    cluster.stop().await;
    Ok(())
}

/// redis-py: the `rediss://` URI from the API, AUTH inside TLS, a pipeline and a transaction,
/// a plaintext client on the same port, and a client without the CA refusing the proxy.
const REDIS_PY: &str = r#"
import os, ssl, redis
uri, ca, port, token = os.environ["URI"], os.environ["CA"], int(os.environ["PORT"]), os.environ["TOKEN"]
assert uri.startswith("rediss://"), uri
tls = redis.Redis.from_url(uri, ssl_ca_certs=ca)
plain = redis.Redis(host="127.0.0.1", port=port, username="cache", password=token)
tls.set("from", "tls")
print(plain.get("from").decode())
pipe = tls.pipeline(transaction=False)
for i in range(1000):
    pipe.incr("n")
print(pipe.execute()[-1])
pipe = tls.pipeline(transaction=True)
pipe.incr("n").get("n")
print(pipe.execute()[1].decode())
try:
    redis.Redis(host="127.0.0.1", port=port, username="cache", password=token, ssl=True).ping()
    print("untrusted certificate accepted")
except redis.ConnectionError as e:
    print("refused", "certificate verify failed" in str(e))
"#;

#[tokio::test]
async fn redis_py_speaks_tls_and_plaintext_on_the_same_port() -> anyhow::Result<()> {
    let (cluster, db, token) = setup(Cluster::start().await?).await?;
    let uri = db["connection"]["tls_uri"].as_str().context("tls_uri")?;
    let out = run(tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", REDIS_PY])
        .env("URI", uri)
        .env("CA", cluster.tls_cert())
        .env("PORT", cluster.redis_port().to_string())
        .env("TOKEN", &token))
    .await?;
    assert_eq!(stdout(&out), "tls\n1000\n1001\nrefused True", "{}", stderr(&out));
    cluster.stop().await;
    Ok(())
}

/// ioredis: options with the CA, a pipeline, MULTI, and the `rediss://` URI; the host is an IP
/// address, which Node checks against the certificate's names.
const IOREDIS: &str = r#"
const Redis = require("ioredis");
const fs = require("fs");
const ca = fs.readFileSync(process.env.CA);
const port = Number(process.env.PORT);
(async () => {
  const tls = new Redis({ host: "127.0.0.1", port, username: "cache", password: process.env.TOKEN,
                          tls: { ca }, maxRetriesPerRequest: 0 });
  await tls.set("from", "ioredis");
  const piped = await tls.pipeline().incr("n").incr("n").get("n").exec();
  console.log(piped.map(([err, v]) => err ? "error" : v).join(","));
  const multi = await tls.multi().set("m", "1").get("m").exec();
  console.log(multi.map(([err, v]) => err ? "error" : v).join(","));
  const byUri = new Redis(process.env.URI, { tls: { ca }, maxRetriesPerRequest: 0 });
  console.log(await byUri.get("from"));
  const plain = new Redis({ host: "127.0.0.1", port, username: "cache", password: process.env.TOKEN });
  console.log(await plain.get("from"));
  tls.disconnect(); byUri.disconnect(); plain.disconnect();
})().catch((e) => { console.log("failed: " + e.message); process.exit(1); });
"#;

/// ioredis from the npm registry, installed once per machine into the tests' shared directory.
async fn ioredis_modules() -> anyhow::Result<PathBuf> {
    let uid = nix::unistd::geteuid();
    let dir = std::env::temp_dir().join(format!("dormouse-tests-shared-{uid}")).join("node");
    let modules = dir.join("node_modules");
    if !modules.join("ioredis").join("package.json").exists() {
        std::fs::create_dir_all(&dir)?;
        let out = run(tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg("ioredis@5"))
        .await?;
        anyhow::ensure!(out.status.success(), "npm install ioredis: {}", stderr(&out));
    }
    Ok(modules)
}

#[tokio::test]
async fn ioredis_over_tls_authenticates_and_pipelines() -> anyhow::Result<()> {
    let modules = ioredis_modules().await?;
    let (cluster, db, token) = setup(Cluster::start().await?).await?;
    let uri = db["connection"]["tls_uri"].as_str().context("tls_uri")?;
    let out = run(tokio::process::Command::new("node")
        .args(["-e", IOREDIS])
        .env("NODE_PATH", modules)
        .env("URI", uri)
        .env("CA", cluster.tls_cert())
        .env("PORT", cluster.redis_port().to_string())
        .env("TOKEN", &token))
    .await?;
    assert_eq!(stdout(&out), "1,2,2\nOK,1\nioredis\nioredis", "{}", stderr(&out));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_tls_only_port_takes_tls_and_nothing_else() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        if let Some(proxy) = config.proxy.as_mut() {
            proxy.redis_tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
    })
    .await?;
    let (cluster, _, token) = setup(cluster).await?;
    let tls_port = cluster.running().redis_tls_addr.context("no TLS-only port")?.port();
    let ca = cluster.tls_cert();
    let out = redis_cli_tls("127.0.0.1", tls_port, Some(&ca), &token, &["SET", "k", "v"]).await?;
    assert_eq!(stdout(&out), "OK", "{}", stderr(&out));

    // A plaintext PING there is never answered: the connection ends.
    let mut plain = TcpStream::connect(("127.0.0.1", tls_port)).await?;
    plain.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
    let mut got = Vec::new();
    // Closed or reset: either way no reply.
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got))
        .await
        .context("the connection stayed open")?;
    assert!(!String::from_utf8_lossy(&got).contains("PONG"), "{got:?}");
    cluster.stop().await;
    Ok(())
}
