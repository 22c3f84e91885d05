//! Point-in-time recovery for MariaDB: the binary log's closed files, which control archives,
//! and the replay of archived files into a restored server, from a backup's position up to a
//! time (`mariadb-binlog … | mariadb` as root over the instance's socket).

use std::path::Path;
use std::process::Stdio;

use super::config::SOCKET_FILE;
use crate::backup::{LogSegment, Position};
use crate::confine::Owner;
use crate::engine::{EngineError, Instance};
use crate::process::log_tail;
use crate::tool;

/// The binary log's base name, relative to the data directory (see `render_my_cnf`).
const PREFIX: &str = "binlog.";

/// `binlog.000123`: the files the server writes, and nothing a name could smuggle in.
pub fn is_binlog(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The binary log files in `data`, oldest first, with their sizes.
pub fn segments(data: &Path) -> std::io::Result<Vec<LogSegment>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if is_binlog(&name) && meta.is_file() {
            found.push(LogSegment { name, size: meta.len(), modified: None });
        }
    }
    // Same-width numbers sort as text; wider ones come after.
    found.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
    Ok(found)
}

/// Where a copy of the stopped directory `data` ends in the binary log: the end of its newest
/// file (a cold backup holds every file; a replay continues after them).
pub fn end_of_log(data: &Path) -> Option<(String, u64)> {
    segments(data).ok()?.pop().map(|s| (s.name, s.size))
}

/// Applies the staged binary log `files` (in `staged`, oldest first) to the running server:
/// from `from` (the backup's file and offset) up to events stamped `until` or later (seconds;
/// the log's resolution), with tables of schema `rename.0` written to `rename.1` when the data
/// was restored under another name. Runs `mariadb-binlog` as the server's user and the client
/// as root over the socket.
pub async fn replay(
    instance: &Instance,
    staged: &Path,
    files: &[String],
    from: &Position,
    until: i64,
    rename: Option<(&str, &str)>,
    owner: Option<Owner>,
) -> Result<(), EngineError> {
    let binlog_tool = tool::require("mariadb-binlog", "mariadb-client")?;
    let client = tool::require("mariadb", "mariadb-client")?;
    if files.is_empty() {
        return Ok(());
    }
    let stop = chrono_utc(until.saturating_add(1));
    let log = staged.join("mariadb-binlog.log");
    let mut reader = tool::command(&binlog_tool, &log, owner)?;
    // The stop time is read in the tool's time zone.
    reader.env("TZ", "UTC").arg(format!("--stop-datetime={stop}")).current_dir(staged);
    if let Some(offset) = from.binlog_position
        && from.binlog_file.as_deref() == files.first().map(String::as_str)
    {
        reader.arg(format!("--start-position={offset}"));
    }
    if let Some((old, new)) = rename {
        reader.arg(format!("--rewrite-db={old}->{new}"));
    }
    reader.args(files).stdout(Stdio::piped());
    let mut reading = reader.spawn().map_err(EngineError::io("running mariadb-binlog"))?;
    let events: Stdio = reading
        .stdout
        .take()
        .ok_or_else(|| EngineError::Failed("mariadb-binlog: no stdout".into()))?
        .try_into()
        .map_err(EngineError::io("piping mariadb-binlog"))?;
    let client_log = staged.join("mariadb.log");
    let stderr = std::fs::File::create(&client_log)
        .map_err(EngineError::io(format!("creating {}", client_log.display())))?;
    let applying = tokio::process::Command::new(client)
        .args(["--no-defaults", "--user=root", "--batch", "--binary-mode"])
        .arg(format!("--socket={SOCKET_FILE}"))
        .current_dir(&instance.dir)
        .stdin(events)
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .status();
    let (read, applied) = tokio::join!(reading.wait(), applying);
    let read = read.map_err(EngineError::io("waiting for mariadb-binlog"))?;
    let applied = applied.map_err(EngineError::io("running mariadb"))?;
    if !read.success() {
        return Err(EngineError::Failed(format!(
            "mariadb-binlog failed ({read}): {}",
            log_tail(&log, 600).trim()
        )));
    }
    if !applied.success() {
        return Err(EngineError::Failed(format!(
            "replaying the binary log failed ({applied}): {}",
            log_tail(&client_log, 600).trim()
        )));
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for seconds since the epoch.
fn chrono_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_log_files_are_segments() {
        assert!(is_binlog("binlog.000001") && is_binlog("binlog.1234567"));
        for name in ["binlog.index", "binlog.00001", "binlog.000001/../x", "x.000001", "binlog."] {
            assert!(!is_binlog(name), "{name}");
        }
    }

    #[test]
    fn segments_sort_by_number_and_the_last_ends_the_log() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for (name, len) in [("binlog.000010", 3), ("binlog.000002", 5), ("binlog.1000000", 7)] {
            std::fs::write(dir.path().join(name), vec![0u8; len])?;
        }
        std::fs::write(dir.path().join("binlog.index"), b"x")?;
        let names: Vec<String> = segments(dir.path())?.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["binlog.000002", "binlog.000010", "binlog.1000000"]);
        assert_eq!(end_of_log(dir.path()), Some(("binlog.1000000".into(), 7)));
        Ok(())
    }

    #[test]
    fn stop_times_are_utc_wall_clock_text() {
        assert_eq!(chrono_utc(0), "1970-01-01 00:00:00");
        assert_eq!(chrono_utc(1_796_551_200), "2026-12-06 10:00:00");
        assert_eq!(chrono_utc(951_827_696), "2000-02-29 12:34:56");
    }
}
