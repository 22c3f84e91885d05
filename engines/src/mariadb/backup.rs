//! MariaDB backups: a hot copy streamed by `mariadb-backup` from the running server, unpacked
//! with `mbstream` and prepared into a data directory, and the one-line rename that moves
//! restored tables into the schema of a database restored under another name.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};

use super::config::SOCKET_FILE;
use crate::backup::{Position, Taken};
use crate::confine::Owner;
use crate::datadir;
use crate::engine::{EngineError, Instance};
use crate::tool;

/// In the instance directory after a restore from a database of another name: that name,
/// whose schema's tables the next start moves into the instance's own (see [`rename_sql`]).
pub const RENAME_FROM_FILE: &str = "rename-from";

const PACKAGE: &str = "mariadb-backup";

/// `mariadb-backup --backup --stream=xbstream` of the running server into `out`, as root over
/// the Unix socket. The tool changes into the data directory after its first connection and
/// opens the later ones from there, so it runs there and names the socket relative to it
/// (which also keeps a deep path within a socket address).
///
/// It runs as the server's own user (`owner`): it reads the configuration and the data
/// directory, which that user can change, so as root a link left there would copy a host file
/// into the backup. Root logs in over the socket by password (an empty one), not by the
/// client's uid.
///
/// With `since_lsn`, an incremental copy: only the pages changed after that log sequence
/// number (a parent backup's end), which a restore applies on top of the parent.
pub async fn hot_backup(
    instance: &Instance,
    scratch: &Path,
    owner: Option<Owner>,
    since_lsn: Option<u64>,
    out: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<Taken, EngineError> {
    let program = tool::require("mariadb-backup", PACKAGE)?;
    let (tmp, lsn) = (scratch.join("tmp"), scratch.join("lsn"));
    for d in [&tmp, &lsn] {
        std::fs::create_dir(d).map_err(EngineError::io(format!("creating {}", d.display())))?;
        if let Some(owner) = owner {
            std::os::unix::fs::chown(d, Some(owner.uid), Some(owner.gid))
                .map_err(EngineError::io(format!("giving {} away", d.display())))?;
        }
    }
    let log = scratch.join("mariadb-backup.log");
    let mut cmd = tool::command(&program, &log, owner)?;
    cmd.arg(format!("--defaults-file={}", instance.dir.join("my.cnf").display()))
        .args(["--backup", "--stream=xbstream", "--user=root"])
        .arg(format!("--socket=../{SOCKET_FILE}"))
        .arg(format!("--target-dir={}", tmp.display()))
        .arg(format!("--extra-lsndir={}", lsn.display()))
        .current_dir(instance.dir.join("data"));
    if let Some(since) = since_lsn {
        cmd.arg(format!("--incremental-lsn={since}"));
    }
    let bytes = tool::stream_out(cmd, "mariadb-backup", &log, out).await?;
    let info = datadir::read_marker(&lsn.join("xtrabackup_info")).ok().flatten();
    let info = info.unwrap_or_default();
    let mut position = parse_binlog_pos(&info);
    position.time = datadir::now();
    let checkpoints = datadir::read_marker(&lsn.join("xtrabackup_checkpoints")).ok().flatten();
    position.lsn = checkpoints.as_deref().and_then(parse_to_lsn);
    Ok(Taken { format: crate::backup::Format::Xbstream, position, bytes, hot: true })
}

/// The binary log position in `xtrabackup_info`'s line
/// `binlog_pos = filename 'binlog.000001', position '384818949', GTID of the last change '0-1-387'`
/// (absent when the server writes no binary log).
pub fn parse_binlog_pos(info: &str) -> Position {
    let mut position = Position::default();
    let Some(line) = info.lines().find_map(|l| l.strip_prefix("binlog_pos = ")) else {
        return position;
    };
    let quoted = |key: &str| {
        let rest = &line[line.find(key)? + key.len()..];
        let rest = rest.strip_prefix('\'')?;
        Some(rest[..rest.find('\'')?].to_owned())
    };
    position.binlog_file = quoted("filename ");
    position.binlog_position = quoted("position ").and_then(|p| p.parse().ok());
    position.gtid = quoted("GTID of the last change ").filter(|g| !g.is_empty());
    position
}

/// `mbstream -x` of `input` into `data`, then `mariadb-backup --prepare` there, both as
/// `owner`: what is left is a data directory a server starts from.
pub async fn unpack(
    input: &mut (dyn AsyncRead + Send + Unpin),
    data: &Path,
    owner: Option<Owner>,
) -> Result<(), EngineError> {
    let mbstream = tool::require("mbstream", PACKAGE)?;
    let backup = tool::require("mariadb-backup", PACKAGE)?;
    let scratch = data.parent().unwrap_or(data);
    tokio::fs::create_dir(data)
        .await
        .map_err(EngineError::io(format!("creating {}", data.display())))?;
    if let Some(owner) = owner {
        std::os::unix::fs::chown(data, Some(owner.uid), Some(owner.gid))
            .map_err(EngineError::io(format!("giving {} away", data.display())))?;
    }
    let log = scratch.join("mbstream.log");
    let mut cmd = tool::command(&mbstream, &log, owner)?;
    cmd.arg("-x").arg("-C").arg(data).current_dir(data);
    tool::stream_in(cmd, "mbstream", &log, input).await?;

    let log = scratch.join("prepare.log");
    let mut cmd = tool::command(&backup, &log, owner)?;
    // --no-defaults: the host's /etc/mysql has no say; the backup carries backup-my.cnf.
    cmd.args(["--no-defaults", "--prepare"])
        .arg(format!("--target-dir={}", data.display()))
        .current_dir(data);
    tool::run(cmd, "mariadb-backup --prepare", &log).await
}

/// `to_lsn` from `xtrabackup_checkpoints` (`to_lsn = 48375210`).
pub fn parse_to_lsn(checkpoints: &str) -> Option<u64> {
    checkpoints
        .lines()
        .find_map(|l| l.strip_prefix("to_lsn = "))
        .and_then(|v| v.trim().parse().ok())
}

/// `mbstream -x` of an incremental backup into `dir` (made here, as `owner`), for
/// [`apply_increment`] after the full backup under it is prepared.
pub async fn unpack_increment(
    input: &mut (dyn AsyncRead + Send + Unpin),
    dir: &Path,
    owner: Option<Owner>,
) -> Result<(), EngineError> {
    let mbstream = tool::require("mbstream", PACKAGE)?;
    tokio::fs::create_dir(dir)
        .await
        .map_err(EngineError::io(format!("creating {}", dir.display())))?;
    if let Some(owner) = owner {
        std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid))
            .map_err(EngineError::io(format!("giving {} away", dir.display())))?;
    }
    let log = dir.with_extension("log");
    let mut cmd = tool::command(&mbstream, &log, owner)?;
    cmd.arg("-x").arg("-C").arg(dir).current_dir(dir);
    tool::stream_in(cmd, "mbstream", &log, input).await.map(drop)
}

/// Applies an unpacked incremental backup `increment` to the prepared data directory `data`.
pub async fn apply_increment(
    data: &Path,
    increment: &Path,
    owner: Option<Owner>,
) -> Result<(), EngineError> {
    let backup = tool::require("mariadb-backup", PACKAGE)?;
    let log = increment.with_extension("prepare.log");
    let mut cmd = tool::command(&backup, &log, owner)?;
    cmd.args(["--no-defaults", "--prepare"])
        .arg(format!("--target-dir={}", data.display()))
        .arg(format!("--incremental-dir={}", increment.display()))
        .current_dir(data);
    tool::run(cmd, "mariadb-backup --prepare --incremental-dir", &log).await
}

/// One `init.sql` line (statements there end at `;` and a newline) that moves every base table
/// of schema `from` into `to`, then drops `from` if nothing is left in it. Names reach the
/// statement only as hex literals, so no name can break the line or the quoting. A table that
/// cannot be moved (a trigger refers to it, the name is taken) stays where it was rather than
/// failing the start.
pub fn rename_sql(from: &str, to: &str) -> String {
    let hex = |s: &str| format!("CONVERT(X'{}' USING utf8mb4)", hex::encode(s.as_bytes()));
    let (from_name, from_q, to_q) =
        (hex(from), hex(&super::quote_ident(from)), hex(&super::quote_ident(to)));
    format!(
        "BEGIN NOT ATOMIC \
         DECLARE done INT DEFAULT 0; DECLARE t VARCHAR(64); \
         DECLARE c CURSOR FOR SELECT table_name FROM information_schema.tables \
         WHERE table_schema = {from_name} AND table_type = 'BASE TABLE'; \
         DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1; \
         DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END; \
         OPEN c; l: LOOP FETCH c INTO t; IF done THEN LEAVE l; END IF; \
         EXECUTE IMMEDIATE CONCAT('RENAME TABLE ', {from_q}, '.`', REPLACE(t, '`', '``'), \
         '` TO ', {to_q}, '.`', REPLACE(t, '`', '``'), '`'); END LOOP; CLOSE c; \
         IF NOT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = {from_name}) \
         AND NOT EXISTS (SELECT 1 FROM information_schema.routines WHERE routine_schema = {from_name}) \
         THEN EXECUTE IMMEDIATE CONCAT('DROP DATABASE IF EXISTS ', {from_q}); END IF; \
         END;\n"
    )
}

/// Schemas a rename must never touch, whatever the store says.
pub fn is_system_schema(name: &str) -> bool {
    ["mysql", "information_schema", "performance_schema", "sys"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binlog_position_is_read_from_xtrabackup_info() {
        let info = "tool_name = mariadb-backup\n\
                    binlog_pos = filename 'binlog.000002', position '795', GTID of the last change '0-1-8'\n\
                    innodb_from_lsn = 0\n";
        let p = parse_binlog_pos(info);
        assert_eq!(p.binlog_file.as_deref(), Some("binlog.000002"));
        assert_eq!(p.binlog_position, Some(795));
        assert_eq!(p.gtid.as_deref(), Some("0-1-8"));
        assert_eq!(parse_binlog_pos("tool_name = x\n"), Position::default());
        let checkpoints = "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 48375210\n";
        assert_eq!(parse_to_lsn(checkpoints), Some(48_375_210));
        assert_eq!(parse_to_lsn("backup_type = x\n"), None);
    }

    #[test]
    fn the_rename_is_one_line_without_names_in_clear() {
        let sql = rename_sql("old`\n'; DROP", "new");
        assert_eq!(sql.lines().count(), 1);
        assert!(sql.ends_with("END;\n"));
        assert!(!sql.contains("DROP\n") && !sql.contains("old`"));
        assert!(sql.contains(&hex::encode("`new`")));
        assert!(is_system_schema("MySQL") && !is_system_schema("shop"));
    }
}
