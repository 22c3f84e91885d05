//! The server commands: `up`, `control`, `proxy`. They run until Ctrl-C or SIGTERM, then stop
//! every database server cleanly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dormouse_proxy::config::RedisConfig;
use dormouse_proxy::control::{HttpControl, REPORT_EVERY};
use dormouse_proxy::tls::TlsSource;
use dormouse_proxy::{Proxy, ProxyConfig};
use tokio_util::sync::CancellationToken;

use dormouse_engines::EngineKind;

use super::{Cli, ControlArgs, ListenArgs, ProxyArgs, ProxyListenArgs, UpArgs};
use crate::api::server::ApiLimits;
use crate::service::NewDatabase;
use crate::up::{self, PublicPorts, UpConfig};

fn proxy_config(cli: &Cli, args: &ProxyListenArgs) -> ProxyConfig {
    let keys_dir = up::proxy_keys_dir(&cli.data_dir);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsSource::Files { cert: cert.clone(), key: key.clone() },
        _ => TlsSource::SelfSigned { dir: keys_dir.clone() },
    };
    let mut config = ProxyConfig {
        redis_listen: args.redis_listen,
        redis_tls_listen: args.redis_tls_listen,
        mysql_listen: args.mysql_listen,
        tls,
        max_client_connections: args.max_client_connections,
        max_pending_connections: args.max_pending_connections,
        max_pending_per_address: args.max_pending_per_address,
        redis: RedisConfig { max_request_bytes: args.redis_max_request, ..RedisConfig::default() },
        ..ProxyConfig::ephemeral(keys_dir)
    };
    config.set_login_timeout(args.login_timeout);
    config
}

/// Control's settings, for `up` (with the proxy in the same process) and `control` (without).
fn up_config(cli: &Cli, listen: &ListenArgs, proxy: Option<ProxyConfig>) -> UpConfig {
    UpConfig {
        data_dir: cli.data_dir.clone(),
        api_listen: listen.api_listen,
        proxy,
        public_host: listen.public_host.clone(),
        public_ports: None,
        reconcile_every: Duration::from_secs(10),
        templates_dir: cli.data_dir.join("templates"),
        idle_check_every: Duration::from_secs(5),
        warm_pool: listen.warm_pool,
        api: ApiLimits {
            max_connections: listen.api_max_connections,
            max_connections_per_address: listen.api_max_connections_per_address,
            header_timeout: listen.api_header_timeout,
            body_timeout: listen.api_body_timeout,
            max_body_bytes: listen.api_max_body,
        },
        backup: listen.backup.config(&cli.data_dir),
    }
}

/// A token cancelled by Ctrl-C or SIGTERM. The handlers are registered before this returns,
/// so a signal during start-up also leads to a clean stop.
fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    Ok(token)
}

pub async fn up(cli: &Cli, args: &UpArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal()?;
    let config = up_config(cli, &args.listen, Some(proxy_config(cli, &args.proxy)));
    let running = up::start(config, shutdown).await?;
    println!("dormouse is up");
    println!("  API:    {}", running.api_url());
    if let Some(addr) = running.redis_addr {
        println!("  Redis:  {addr}");
    }
    if let Some(addr) = running.redis_tls_addr {
        println!("  Redis TLS only:  {addr}");
    }
    if let Some(addr) = running.mysql_addr {
        println!("  MySQL:  {addr}");
    }
    println!("  admin token: {}", running.admin_token_path.display());
    if args.demo {
        demo(&running, &cli.data_dir).await?;
    }
    running.wait().await;
    Ok(())
}

/// Creates tenant `demo` and database `demo-redis` once, and prints how to use them.
async fn demo(running: &up::Running, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let service = &running.service;
    let token_path = data_dir.join("demo.token");
    let tenant = match service.store().list_tenants().await?.into_iter().find(|t| t.name == "demo")
    {
        Some(t) => t,
        None => {
            let (tenant, token) = service.create_tenant("demo").await?;
            write_private(&token_path, &token.token)?;
            tenant
        }
    };
    let engines = service.lifecycle().agent().engines();
    for (name, engine) in [("demo-redis", EngineKind::Redis), ("demo-mysql", EngineKind::Mysql)] {
        let exists = service.store().database(&tenant.id, name).await?.is_some();
        if engines.contains(&engine) && !exists {
            let req = NewDatabase {
                name: name.into(),
                engine: engine.as_str().into(),
                ..NewDatabase::default()
            };
            service.create_database(&tenant, &req).await?;
        }
    }
    let endpoints = service.endpoints();
    println!();
    println!("demo tenant ready; its admin token is in {}", token_path.display());
    println!("  export DORMOUSE_TOKEN=$(cat {})", token_path.display());
    println!("  dormouse db list");
    if let (Some(port), true) = (endpoints.redis_port, engines.contains(&EngineKind::Redis)) {
        println!(
            "  redis-cli -h {} -p {port} --user demo-redis --pass \"$DORMOUSE_TOKEN\" --no-auth-warning PING",
            endpoints.host
        );
    }
    if let (Some(port), true) = (endpoints.mysql_port, engines.contains(&EngineKind::Mysql)) {
        println!(
            "  mariadb -h {} -P {port} -u demo-mysql -p\"$DORMOUSE_TOKEN\" -e 'SELECT VERSION()'",
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
    let shutdown = shutdown_on_signal()?;
    let ports = PublicPorts { redis: args.public_redis_port, mysql: args.public_mysql_port };
    let config = UpConfig { public_ports: Some(ports), ..up_config(cli, &args.listen, None) };
    let running = up::start(config, shutdown).await?;
    println!("dormouse control is up");
    println!("  API:    {}", running.api_url());
    println!("  admin token: {}", running.admin_token_path.display());
    running.wait().await;
    Ok(())
}

pub async fn proxy(cli: &Cli, args: &ProxyArgs) -> anyhow::Result<()> {
    up::install_crypto_provider();
    let token = super::client::token_or_admin(cli)?;
    let control = Arc::new(HttpControl::new(args.control.clone(), token));
    let config = proxy_config(cli, &args.proxy);
    up::raise_open_files_limit(up::descriptors_needed(&config));
    let route_ttl = config.route_ttl;
    let proxy = Proxy::bind(config, control.clone()).await.context("starting the proxy")?;
    println!("dormouse proxy is up");
    println!("  Redis:  {}", proxy.redis_addr()?);
    if let Some(addr) = proxy.redis_tls_addr()? {
        println!("  Redis TLS only:  {addr}");
    }
    println!("  MySQL:  {}", proxy.mysql_addr()?);
    let shutdown = shutdown_on_signal()?;
    tokio::spawn(control.clone().report_activity(REPORT_EVERY, route_ttl, shutdown.clone()));
    proxy.run(shutdown).await;
    Ok(())
}
