//! `INFO`: asked of the server over a connection of its own as the route's INFO-only user (the
//! users tenant sessions log in as may not run it, so no script reads it either), then filtered
//! so a tenant sees its server's figures but nothing about the host: no paths, kernel, ports,
//! process, run or replication ids, or the host's memory.

use bytes::Bytes;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::backend::{self, BackendConn, BackendError};
use super::codec::Request;
use crate::control::Route;

/// Fields of the `server` section a tenant sees; the rest (`os`, `process_id`, `run_id`,
/// `tcp_port`, `executable`, `config_file`, listeners, ...) describe the host. A list of what
/// to show, so that fields a newer server adds stay hidden until someone looks at them.
const SERVER_FIELDS: &[&str] = &[
    "redis_version",
    "redis_git_sha1",
    "redis_git_dirty",
    "redis_build_id",
    "redis_mode",
    "arch_bits",
    "monotonic_clock",
    "multiplexing_api",
    "atomicvar_api",
    "gcc_version",
    "server_time_usec",
    "uptime_in_seconds",
    "uptime_in_days",
    "hz",
    "configured_hz",
    "lru_clock",
    "io_threads_active",
];

/// Fields of the other sections that describe the host or other servers.
const HIDDEN: &[&str] = &[
    "total_system_memory",
    "total_system_memory_human",
    "master_host",
    "master_port",
    "master_replid",
    "master_replid2",
    "executable",
    "config_file",
];

/// Whether `field` of `section` (lower case) is shown to tenants.
fn shown(section: &str, field: &str) -> bool {
    match section {
        "server" => SERVER_FIELDS.contains(&field),
        // `slave0:ip=…,port=…`: a replica's address.
        _ if field
            .strip_prefix("slave")
            .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())) =>
        {
            false
        }
        _ => !HIDDEN.contains(&field),
    }
}

/// `INFO` text without the fields [`shown`] hides; section headers and blank lines stay.
pub fn filter(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut section = String::new();
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        if let Some(name) = content.strip_prefix("# ") {
            section = name.trim().to_ascii_lowercase();
        } else if let Some((field, _)) = content.split_once(':')
            && !shown(&section, field)
        {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The server's answer to `INFO`.
#[derive(Debug, PartialEq, Eq)]
pub enum InfoReply {
    /// The filtered text.
    Text(String),
    /// An error line from the server, passed on as it is (`-ERR …\r\n`).
    Error(Bytes),
}

impl InfoReply {
    /// On the wire: a bulk string in RESP2, a verbatim `txt` string in RESP3, as Redis sends.
    pub fn encode(&self, resp3: bool) -> Vec<u8> {
        match self {
            InfoReply::Error(line) => line.to_vec(),
            InfoReply::Text(text) if resp3 => {
                let mut out = format!("={}\r\ntxt:", text.len() + 4).into_bytes();
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
                out
            }
            InfoReply::Text(text) => {
                let mut out = format!("${}\r\n", text.len()).into_bytes();
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
                out
            }
        }
    }
}

/// One database's connection for `INFO`, opened when first needed and kept; `INFO` calls of
/// the database's clients take turns on it.
#[derive(Default)]
pub struct InfoLink {
    conn: Mutex<Option<BackendConn>>,
}

impl InfoLink {
    /// Runs `args` (`INFO [section …]`) on the server at `route`.
    pub async fn fetch(
        &self,
        route: &Route,
        args: &[Bytes],
        timeout: std::time::Duration,
    ) -> Result<InfoReply, BackendError> {
        let mut slot = self.conn.lock().await;
        let conn = match slot.take().filter(BackendConn::is_alive) {
            Some(conn) => conn,
            None => {
                let mut as_info = route.clone();
                if let Some(user) = &route.info_user {
                    as_info.user.clone_from(user);
                }
                backend::connect(&as_info, false, None, timeout).await?
            }
        };
        let (conn, reply) = tokio::time::timeout(timeout, ask(conn, args))
            .await
            .map_err(|_| BackendError::Timeout)??;
        *slot = Some(conn);
        Ok(reply)
    }
}

/// One `INFO` round trip; the connection comes back only if it went well.
async fn ask(
    mut conn: BackendConn,
    args: &[Bytes],
) -> Result<(BackendConn, InfoReply), BackendError> {
    conn.stream
        .write_all(&Request::from_args(args).wire)
        .await
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
    let (frame, leftover) =
        backend::read_frame(&mut conn.stream, std::mem::take(&mut conn.leftover)).await?;
    conn.leftover = leftover;
    let reply = match redis_protocol::resp2::decode::decode(&frame) {
        Ok(Some((OwnedFrame::BulkString(text), _))) => {
            InfoReply::Text(filter(&String::from_utf8_lossy(&text)))
        }
        Ok(Some((OwnedFrame::Error(_), _))) => InfoReply::Error(frame),
        _ => return Err(BackendError::Protocol("unexpected reply to INFO".into())),
    };
    Ok((conn, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Server\r\nredis_version:7.0.15\r\nos:Linux 6.1.0 x86_64\r\n\
        process_id:4242\r\nrun_id:f8a1ddb4ed5a94053d0c3371f4e684664515bd87\r\ntcp_port:40123\r\n\
        uptime_in_seconds:12\r\nexecutable:/srv/dormouse/i-1/redis-server\r\n\
        config_file:/srv/dormouse/i-1/redis.conf\r\nlistener0:name=tcp,bind=127.0.0.1,port=40123\r\n\
        \r\n# Memory\r\nused_memory:1000\r\ntotal_system_memory:67108864\r\n\
        total_system_memory_human:64.00M\r\n\r\n# Replication\r\nrole:master\r\n\
        slave0:ip=10.0.0.2,port=6380,state=online\r\nmaster_replid:abc\r\nmaster_replid2:def\r\n\
        master_repl_offset:0\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n";

    #[test]
    fn host_details_are_removed_and_the_tenants_figures_kept() {
        let out = filter(SAMPLE);
        for gone in [
            "os:",
            "process_id:",
            "run_id:",
            "tcp_port:",
            "executable:",
            "config_file:",
            "listener0:",
            "total_system_memory",
            "slave0:",
            "master_replid",
            "/srv/dormouse",
            "40123",
        ] {
            assert!(!out.contains(gone), "{gone} still in {out}");
        }
        for kept in [
            "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:12\r\n\r\n# Memory\r\n",
            "used_memory:1000\r\n",
            "role:master\r\n",
            "master_repl_offset:0\r\n",
            "# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n",
        ] {
            assert!(out.contains(kept), "{kept:?} missing from {out}");
        }
    }

    #[test]
    fn replies_are_encoded_as_the_server_would() {
        let text = InfoReply::Text("# Server\r\n".into());
        assert_eq!(text.encode(false), b"$10\r\n# Server\r\n\r\n");
        assert_eq!(text.encode(true), b"=14\r\ntxt:# Server\r\n\r\n");
        let error = InfoReply::Error(Bytes::from_static(b"-NOPERM no\r\n"));
        assert_eq!(error.encode(true), b"-NOPERM no\r\n");
    }
}
