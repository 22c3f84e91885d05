//! The files a MariaDB instance starts from: `my.cnf`, read only through `--defaults-file` so
//! nothing in `/etc/mysql` applies, and `init.sql`, run by the server at every start before it
//! accepts connections, which (re)creates the schema and the internal user idempotently.

use std::fmt::Write as _;
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::engine::{Instance, socket_path};

/// The user the proxy logs in as; it holds every privilege on the database's schema and
/// nothing else (no SUPER, FILE, PROCESS, SHUTDOWN, no GRANT OPTION).
pub const INTERNAL_USER: &str = "dormouse";

/// Settings shared by the template and every instance. The redo log size must match between
/// them, or the first start of a copied template rebuilds the log.
pub fn common_settings(out: &mut String) {
    out.push_str(
        "skip-name-resolve\n\
         performance_schema=OFF\n\
         innodb_log_file_size=8M\n\
         innodb_log_buffer_size=2M\n\
         key_buffer_size=1M\n\
         aria_pagecache_buffer_size=2M\n",
    );
}

/// `my.cnf` for one start. Choices a tenant would ask about:
/// - durability: `innodb_flush_log_at_trx_commit=1`, a committed transaction survives a crash;
/// - memory: the plan's memory goes to the InnoDB buffer pool (minimum 8 MiB);
/// - files: `local-infile=0` and `secure-file-priv` point away from the host's files;
/// - session tracking is on globally, so every pooled connection reports its state changes
///   (COM_RESET_CONNECTION resets session settings to these global values).
/// - no `user=`: the agent starts it as the instance's own unprivileged user (see
///   [`crate::confine`]);
/// - a binary log of every change, in row format and synced at each commit, for
///   point-in-time recovery from a backup. Named relative to the data directory, so its
///   index lists `./binlog.000001` and a copy of the directory elsewhere still finds it (an
///   absolute path would be written into the index and point at the old instance). Files
///   are kept a day on the instance: control archives each within a minute of its closing.
///   Tenants still create functions and triggers without SUPER
///   (`log_bin_trust_function_creators`): in row format the log holds the rows they changed,
///   not the calls, so a routine's determinism does not matter to a replay.
pub fn render_my_cnf(instance: &Instance) -> String {
    let dir = instance.dir.display();
    let limits = instance.spec.limits;
    let mut conf = format!(
        "# Rendered by Dormouse at every start of instance {id}; edits are overwritten.\n\
         [mariadbd]\n",
        id = instance.spec.id
    );
    common_settings(&mut conf);
    let _ = write!(
        conf,
        "datadir={dir}/data\n\
         socket={socket}\n\
         pid-file={dir}/mysqld.pid\n\
         port={port}\n\
         bind-address=127.0.0.1\n\
         init-file={dir}/init.sql\n\
         secure-file-priv={dir}/files\n\
         tmpdir={dir}/{TMP_DIR}\n\
         local-infile=0\n\
         log_bin=binlog\n\
         binlog_format=ROW\n\
         server_id=1\n\
         sync_binlog=1\n\
         binlog_expire_logs_seconds=86400\n\
         log_bin_trust_function_creators=1\n\
         innodb_buffer_pool_size={pool}M\n\
         innodb_flush_log_at_trx_commit=1\n\
         max_connections={max_connections}\n\
         max_allowed_packet=64M\n\
         query_cache_size=0\n\
         query_cache_type=0\n\
         table_open_cache=200\n\
         thread_cache_size=8\n\
         tmp_table_size=4M\n\
         max_heap_table_size=4M\n\
         character-set-server=utf8mb4\n\
         collation-server=utf8mb4_general_ci\n\
         session_track_schema=ON\n\
         session_track_state_change=ON\n\
         session_track_system_variables=*\n\
         session_track_transaction_info=CHARACTERISTICS\n",
        port = instance.port,
        socket = socket_setting(&instance.dir),
        pool = limits.memory_mb.max(8),
        max_connections = limits.max_connections,
    );
    conf
}

/// Where the server makes its Unix socket. A path too long for a socket address makes
/// `mariadbd` refuse to start, and it cannot go without a socket; so a deep instance directory
/// gets the same file named relative to the data directory, which the server has made its
/// working directory by then. Clients cannot reach that one (the proxy then uses TCP).
fn socket_setting(dir: &Path) -> String {
    match socket_path(dir, SOCKET_FILE) {
        Some(path) => path.display().to_string(),
        None => format!("../{SOCKET_FILE}"),
    }
}

/// The `mysql_native_password` hash of `password`: `*` and the upper-case hex of
/// SHA1(SHA1(password)). The init file holds only this, never the password.
pub fn native_password_hash(password: &str) -> String {
    let inner = Sha1::digest(password.as_bytes());
    let outer = Sha1::digest(inner);
    format!("*{}", hex::encode_upper(outer))
}

/// Backtick-quotes an identifier (names are validated by control; this keeps SQL well-formed
/// whatever they are).
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The server's temporary files (large sorts, internal temporary tables): inside the instance,
/// not in the host's shared `/tmp`, where they would count against no database and mix with
/// every other server's (see the template's bootstrap).
pub const TMP_DIR: &str = "tmp";

/// The server's Unix socket, in the instance directory (which only the agent's user can enter).
pub const SOCKET_FILE: &str = "mysqld.sock";

/// The user the proxy logs in as for read-only tokens: SELECT and SHOW VIEW on the schema.
pub const READONLY_USER: &str = "dormouse_ro";

/// `init.sql`: one statement per line, each idempotent, so it can run at every start. Each
/// internal user exists twice: at `127.0.0.1` for TCP and at `localhost`, which is what the
/// server calls Unix-socket clients. The two accounts must always change together: views and
/// routines a client creates are defined by whichever one its backend connection used.
///
/// After a restore of a database that had another name (`rename_from`), one more line moves
/// its tables into this schema (see [`super::backup::rename_sql`]); it does nothing once done.
pub fn render_init_sql(instance: &Instance, rename_from: Option<&str>) -> String {
    let schema = quote_ident(&instance.spec.name);
    let mut sql = format!("CREATE DATABASE IF NOT EXISTS {schema};\n");
    if let Some(from) = rename_from.filter(|f| *f != instance.spec.name) {
        sql.push_str(&super::backup::rename_sql(from, &instance.spec.name));
    }
    sql.push_str(&render_accounts_sql(instance));
    sql
}

/// The statements that put the internal accounts back as they must be: their password, and
/// exactly their privileges on the schema. Revoking everything first undoes whatever a
/// session managed to change (a `SET PASSWORD`, privileges written into the grant tables) and
/// grants an earlier version made. Run by `init.sql` at every start and by
/// [`super::MariaDbEngine`]'s repair while the server runs.
pub fn render_accounts_sql(instance: &Instance) -> String {
    let pattern = quote_ident(&grant_pattern(&instance.spec.name));
    let hash = native_password_hash(instance.spec.password.expose());
    let mut sql = String::new();
    for host in ["127.0.0.1", "localhost"] {
        for (name, grant) in
            [(INTERNAL_USER, "ALL PRIVILEGES"), (READONLY_USER, "SELECT, SHOW VIEW")]
        {
            let user = format!("'{name}'@'{host}'");
            let _ = write!(
                sql,
                "CREATE USER IF NOT EXISTS {user} IDENTIFIED BY PASSWORD '{hash}';\n\
                 ALTER USER {user} IDENTIFIED BY PASSWORD '{hash}' ACCOUNT UNLOCK;\n\
                 REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user};\n\
                 GRANT {grant} ON {pattern}.* TO {user};\n"
            );
        }
    }
    sql
}

/// A schema name as a `GRANT` pattern that matches that schema alone: `_` and `%` are
/// wildcards there (a grant on `m_sql` would also cover `mysql`), so they and the escape
/// character itself are escaped with a backslash.
pub fn grant_pattern(schema: &str) -> String {
    let mut out = String::with_capacity(schema.len() + 4);
    for c in schema.chars() {
        if matches!(c, '_' | '%' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{EngineKind, InstanceId, InstanceSpec, Limits, Secret};

    fn instance() -> Instance {
        Instance {
            spec: InstanceSpec {
                id: InstanceId::new("i-test").expect("valid"),
                name: "my-db".into(),
                engine: EngineKind::Mysql,
                limits: Limits { memory_mb: 64, max_connections: 50 },
                password: Secret::new("pw"),
                port: 0,
            },
            dir: "/tmp/inst".into(),
            port: 7002,
        }
    }

    #[test]
    fn native_hash_matches_mariadb() {
        // SELECT PASSWORD('pw') on MariaDB 10.11.
        assert_eq!(native_password_hash("pw"), "*D821809F681A40A6E379B50D0463EFAE20BDD122");
    }

    #[test]
    fn init_sql_grants_the_schema_only_and_hides_the_password() {
        let sql = render_init_sql(&instance(), None);
        assert!(!sql.contains("'pw'"));
        assert!(sql.contains("GRANT ALL PRIVILEGES ON `my-db`.* TO 'dormouse'@'127.0.0.1';"));
        assert!(sql.contains("GRANT SELECT, SHOW VIEW ON `my-db`.* TO 'dormouse_ro'@'127.0.0.1';"));
        assert!(sql.contains("GRANT ALL PRIVILEGES ON `my-db`.* TO 'dormouse'@'localhost';"));
        assert!(sql.contains("GRANT SELECT, SHOW VIEW ON `my-db`.* TO 'dormouse_ro'@'localhost';"));
        assert!(sql.contains("REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'dormouse'@'localhost';"));
        assert!(!sql.contains("*.*"));
        assert_eq!(sql.lines().count(), 17);
        let renamed = render_init_sql(&instance(), Some("old"));
        assert_eq!(renamed.lines().count(), 18);
        assert!(renamed.lines().nth(1).is_some_and(|l| l.starts_with("BEGIN NOT ATOMIC")));
        assert_eq!(render_init_sql(&instance(), Some("my-db")), sql);
    }

    #[test]
    fn grants_match_the_schema_alone() {
        assert_eq!(grant_pattern("m_sql"), "m\\_sql");
        assert_eq!(grant_pattern("a%b\\c"), "a\\%b\\\\c");
        assert_eq!(grant_pattern("shop-1"), "shop-1");
        let mut wild = instance();
        wild.spec.name = "m_sql".into();
        let sql = render_init_sql(&wild, None);
        assert!(sql.starts_with("CREATE DATABASE IF NOT EXISTS `m_sql`;\n"), "{sql}");
        assert!(sql.contains("GRANT ALL PRIVILEGES ON `m\\_sql`.* TO 'dormouse'@'localhost';"));
        assert!(!sql.contains("ON `m_sql`"), "{sql}");
    }

    #[test]
    fn a_socket_path_too_long_for_an_address_is_named_from_the_data_directory() {
        let conf = render_my_cnf(&instance());
        assert!(conf.contains("socket=/tmp/inst/mysqld.sock\n"));
        let mut deep = instance();
        deep.dir = format!("/tmp/{}", "d".repeat(100)).into();
        assert!(render_my_cnf(&deep).contains("socket=../mysqld.sock\n"));
    }

    #[test]
    fn my_cnf_binds_loopback_with_tracking_and_limits() {
        let conf = render_my_cnf(&instance());
        for line in [
            "port=7002",
            "bind-address=127.0.0.1",
            "local-infile=0",
            "tmpdir=/tmp/inst/tmp",
            "max_connections=50",
            "innodb_buffer_pool_size=64M",
            "session_track_state_change=ON",
            "session_track_system_variables=*",
            "performance_schema=OFF",
            "log_bin=binlog",
            "binlog_format=ROW",
            "sync_binlog=1",
            "binlog_expire_logs_seconds=86400",
            "log_bin_trust_function_creators=1",
        ] {
            assert!(conf.lines().any(|l| l == line), "missing {line}");
        }
        assert!(!conf.contains("user=root"));
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }
}
