//! The proxies Dormouse is compared with, started from Debian's packages: `haproxy` as a plain
//! L4 (TCP) proxy in front of the very servers Dormouse uses, and `nutcracker` (twemproxy) as a
//! Redis-aware one. nutcracker can only send `AUTH <password>`, which our instances refuse
//! (their default user is off), so it fronts a twin `redis-server` with the same settings and a
//! default-user password; its ratio is taken against that twin directly.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::procs::{Guard, free_port, program, wait_ready};
use crate::tools::Endpoint;

/// haproxy forwarding one local port to each backend port given.
pub async fn haproxy(dir: &Path, backends: &[u16]) -> anyhow::Result<(Guard, Vec<u16>)> {
    // A few hundred connections at most go through it; a larger maxconn would make haproxy
    // demand more open files than some machines allow.
    let mut config = String::from(
        "global\n  maxconn 500\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n",
    );
    let mut ports = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let port = free_port()?;
        config.push_str(&format!(
            "listen l{i}\n  bind 127.0.0.1:{port}\n  server s{i} 127.0.0.1:{backend}\n"
        ));
        ports.push(port);
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let child = Command::new(program("haproxy"))
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
        .spawn()?;
    let mut guard = Guard::new("haproxy", child);
    for &port in &ports {
        wait_ready(&mut guard, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            Ok(())
        })
        .await?;
    }
    Ok((guard, ports))
}

/// A `redis-server` with an instance's persistence settings and a default-user password.
pub async fn twin_redis(dir: &Path, password: &str) -> anyhow::Result<(Guard, Endpoint)> {
    let port = free_port()?;
    let data = dir.join("twin");
    std::fs::create_dir_all(&data)?;
    let config = format!(
        "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly yes\nappendfsync everysec\n\
         maxmemory 256mb\nmaxmemory-policy noeviction\nmaxclients 10000\ndir {}\n\
         requirepass {password}\n",
        data.display()
    );
    let path = dir.join("twin.conf");
    std::fs::write(&path, config)?;
    let child = Command::new("redis-server")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut guard = Guard::new("twin redis-server", child);
    let at = Endpoint { port, user: None, password: password.into() };
    wait_ready(&mut guard, || async {
        crate::clients::login(crate::clients::Engine::Redis, &at, "").await.map(drop)
    })
    .await?;
    Ok((guard, at))
}

/// nutcracker in front of one Redis server, with its own auth (`redis_auth`).
pub async fn nutcracker(dir: &Path, backend: &Endpoint) -> anyhow::Result<(Guard, Endpoint)> {
    let port = free_port()?;
    let stats = free_port()?;
    let config = format!(
        "bench:\n  listen: 127.0.0.1:{port}\n  redis: true\n  redis_auth: {}\n\
         \x20 hash: fnv1a_64\n  distribution: ketama\n  auto_eject_hosts: false\n\
         \x20 server_connections: 1\n  servers:\n   - 127.0.0.1:{}:1\n",
        backend.password, backend.port
    );
    let path = dir.join("nutcracker.yml");
    std::fs::write(&path, config)?;
    let child = Command::new(program("nutcracker"))
        .arg("-c")
        .arg(&path)
        .args(["-s", &stats.to_string(), "-o"])
        .arg(dir.join("nutcracker.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut guard = Guard::new("nutcracker", child);
    let at = Endpoint { port, user: None, password: backend.password.clone() };
    wait_ready(&mut guard, || async {
        crate::clients::login(crate::clients::Engine::Redis, &at, "").await.map(drop)
    })
    .await?;
    Ok((guard, at))
}
