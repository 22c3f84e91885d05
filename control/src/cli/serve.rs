//! The server commands: `up`, `control`, `proxy`. They run until Ctrl-C or SIGTERM, then stop
//! every database server cleanly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dormouse_proxy::config::RedisConfig;
use dormouse_proxy::control::HttpControl;
use dormouse_proxy::{Proxy, ProxyConfig};
use tokio_util::sync::CancellationToken;

use super::{Cli, ControlArgs, ProxyArgs, ProxyListenArgs, UpArgs};
use crate::up::{self, UpConfig};

fn proxy_config(args: &ProxyListenArgs) -> ProxyConfig {
    ProxyConfig {
        redis_listen: args.redis_listen,
        max_client_connections: args.max_client_connections,
        route_ttl: Duration::from_secs(2),
        redis: RedisConfig {
            max_request_bytes: args.redis_max_request,
            ..RedisConfig::default()
        },
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

pub async fn up(cli: &Cli, args: &UpArgs) -> anyhow::Result<()> {
    let config = UpConfig {
        data_dir: cli.data_dir.clone(),
        api_listen: args.listen.api_listen,
        proxy: Some(proxy_config(&args.proxy)),
        public_host: args.listen.public_host.clone(),
        reconcile_every: Duration::from_secs(10),
    };
    let running = up::start(config).await?;
    println!("dormouse is up");
    println!("  API:    {}", running.api_url());
    if let Some(addr) = running.redis_addr {
        println!("  Redis:  {addr}");
    }
    println!("  admin token: {}", running.admin_token_path.display());
    if args.demo {
        demo(&running, &cli.data_dir).await?;
    }
    cancel_on_signal(running.shutdown_token());
    running.wait().await;
    Ok(())
}

/// Creates tenant `demo` and database `demo-redis` once, and prints how to use them.
async fn demo(running: &up::Running, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let service = &running.service;
    let token_path = data_dir.join("demo.token");
    let tenant = match service
        .store()
        .list_tenants()
        .await?
        .into_iter()
        .find(|t| t.name == "demo")
    {
        Some(t) => t,
        None => {
            let (tenant, token) = service.create_tenant("demo").await?;
            write_private(&token_path, &token.token)?;
            tenant
        }
    };
    if !service.lifecycle().agent().engines().is_empty()
        && service
            .store()
            .database(&tenant.id, "demo-redis")
            .await?
            .is_none()
    {
        service
            .create_database(&tenant, "demo-redis", "redis", None)
            .await?;
    }
    let endpoints = service.endpoints();
    println!();
    println!(
        "demo tenant ready; its admin token is in {}",
        token_path.display()
    );
    println!("  export DORMOUSE_TOKEN=$(cat {})", token_path.display());
    println!("  dormouse db list");
    if let Some(port) = endpoints.redis_port {
        println!(
            "  redis-cli -h {} -p {port} --user demo-redis --pass \"$DORMOUSE_TOKEN\" --no-auth-warning PING",
            endpoints.host
        );
    }
    Ok(())
}

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{contents}")?;
    Ok(())
}

pub async fn control(cli: &Cli, args: &ControlArgs) -> anyhow::Result<()> {
    let config = UpConfig {
        data_dir: cli.data_dir.clone(),
        api_listen: args.listen.api_listen,
        proxy: None,
        public_host: args.listen.public_host.clone(),
        reconcile_every: Duration::from_secs(10),
    };
    let running = up::start(config).await?;
    println!("dormouse control is up");
    println!("  API:    {}", running.api_url());
    println!("  admin token: {}", running.admin_token_path.display());
    cancel_on_signal(running.shutdown_token());
    running.wait().await;
    Ok(())
}

pub async fn proxy(cli: &Cli, args: &ProxyArgs) -> anyhow::Result<()> {
    up::install_crypto_provider();
    let token = super::client::token_or_admin(cli)?;
    let control = Arc::new(HttpControl::new(args.control.clone(), token));
    let proxy = Proxy::bind(proxy_config(&args.proxy), control)
        .await
        .with_context(|| format!("binding {}", args.proxy.redis_listen))?;
    println!("dormouse proxy is up");
    println!("  Redis:  {}", proxy.redis_addr()?);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    proxy.run(shutdown).await;
    Ok(())
}
