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

/// Why a replay stopped short of a statement: the `mariadb` client that applies the log reads
/// it as text, and a statement's own text could make the client cut it in two (a comment the
/// server ends where the client does not, then the client's delimiter `/*!*/;` or a `\d`
/// command), so that the rest ran as root. Such text is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    pub file: String,
    pub position: u64,
    /// The statement's time stamp.
    pub time: i64,
}

/// Bytes a statement in the log may not hold for the client to replay it: its delimiter, the
/// backslash that starts its commands, and its `delimiter` command.
fn unsafe_text(text: &[u8]) -> bool {
    let lower = text.to_ascii_lowercase();
    text.contains(&b'\\')
        || lower.windows(5).any(|w| w == b"/*!*/")
        || lower.windows(9).any(|w| w == b"delimiter")
}

/// Binary log event types whose bodies the client sees as text (the rest it gets as base64
/// or numbers): a statement, a user variable, `LOAD DATA`'s, an annotation of row events.
const TEXT_EVENTS: [u8; 5] = [2, 14, 17, 18, 160];
const FORMAT_DESCRIPTION: u8 = 15;
const EVENT_HEADER: usize = 19;

/// Walks the binary log file `data` (its events by their headers' sizes, no text parsed) from
/// `from` on, until events stamped after `until`, and returns the first event a replay must
/// not hand the client. A file that does not parse is refused as unsafe too.
pub fn first_unsafe(name: &str, data: &[u8], from: u64, until: i64) -> Option<Unsafe> {
    let refuse = |position: usize, time: i64| {
        Some(Unsafe { file: name.to_owned(), position: position as u64, time })
    };
    if data.len() < 4 || &data[..4] != b"\xfebin" {
        return refuse(0, 0);
    }
    let mut at = 4;
    let mut checksum = 0;
    while at < data.len() {
        let Some(header) = data.get(at..at + EVENT_HEADER) else { return refuse(at, 0) };
        let time = i64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
        let kind = header[4];
        let size = u32::from_le_bytes([header[9], header[10], header[11], header[12]]) as usize;
        let Some(event) = data.get(at..at + size).filter(|_| size >= EVENT_HEADER) else {
            return refuse(at, time);
        };
        if kind == FORMAT_DESCRIPTION {
            // Its last five bytes: the checksum algorithm (1 = CRC32) and its checksum.
            checksum = if event.len() >= 5 && event[event.len() - 5] == 1 { 4 } else { 0 };
        } else if time > until {
            return None;
        } else if at as u64 >= from && TEXT_EVENTS.contains(&kind) {
            let body = &event[EVENT_HEADER..event.len().saturating_sub(checksum).max(EVENT_HEADER)];
            if unsafe_text(body) {
                return refuse(at, time);
            }
        }
        at += size;
    }
    None
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
    for (i, name) in files.iter().enumerate() {
        let path = staged.join(name);
        let data = std::fs::read(&path).map_err(EngineError::io(format!("reading {name}")))?;
        let from_here = match (i, &from.binlog_file, from.binlog_position) {
            (0, Some(first), Some(offset)) if first == name => offset,
            _ => 0,
        };
        if let Some(bad) = first_unsafe(name, &data, from_here, until) {
            return Err(EngineError::Failed(format!(
                "the log holds a statement at {} ({}, position {}) that cannot be replayed \
                 safely; restore to a time before it",
                chrono_utc(bad.time),
                bad.file,
                bad.position
            )));
        }
    }
    let stop = chrono_utc(until.saturating_add(1));
    let log = staged.join("mariadb-binlog.log");
    let mut reader = tool::command(&binlog_tool, &log, owner)?;
    // The stop time is read in the tool's time zone.
    reader
        .env("TZ", "UTC")
        .arg(format!("--stop-datetime={stop}"))
        // Annotations repeat the statements' text as comments: nothing to apply.
        .arg("--skip-annotate-row-events")
        .current_dir(staged);
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
    // Not as the agent's own user: root in the server is enough to apply the log, and root on
    // the host is not needed by a client that reads tenants' statements.
    let mut applying = tool::command(&client, &client_log, owner)?;
    applying
        .args(["--no-defaults", "--user=root", "--batch", "--binary-mode"])
        .arg(format!("--socket={SOCKET_FILE}"))
        .current_dir(&instance.dir)
        .stdin(events);
    let applying = applying.status();
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

    /// A binary log file of a format description (CRC32) and one statement.
    fn log_with(statement: &[u8], time: u32) -> Vec<u8> {
        let mut out = b"\xfebin".to_vec();
        let mut event = |kind: u8, stamp: u32, body: &[u8]| {
            let size = (EVENT_HEADER + body.len() + 4) as u32;
            out.extend_from_slice(&stamp.to_le_bytes());
            out.push(kind);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(&[0x5c, 0x5c, 0x5c, 0x5c]);
        };
        event(FORMAT_DESCRIPTION, 100, &[0, 0, 0, 1]);
        let mut query = vec![0u8; 13];
        query.extend_from_slice(b"shop\0");
        query.extend_from_slice(statement);
        event(2, time, &query);
        out
    }

    #[test]
    fn statements_the_client_would_cut_are_refused_before_a_replay() {
        // A backslash in the checksum is not the statement's.
        assert_eq!(
            first_unsafe("binlog.000001", &log_with(b"CREATE TABLE t (a int)", 200), 0, 300),
            None
        );
        for evil in [
            &b"CREATE TABLE t (a int) --\x01 /*!*/; CREATE PROCEDURE x() BEGIN END"[..],
            b"CREATE TABLE t (a int) /*!99999 \nDELIMITER ;\n*/",
            b"CREATE TABLE t (a int) --\x01 \\d ;",
        ] {
            let bad = first_unsafe("binlog.000001", &log_with(evil, 200), 0, 300);
            assert_eq!(bad.map(|b| b.time), Some(200), "{}", String::from_utf8_lossy(evil));
        }
        let evil = log_with(b"x /*!*/; y", 200);
        assert_eq!(first_unsafe("binlog.000001", &evil, 0, 150), None, "after the point: unread");
        assert!(first_unsafe("binlog.000001", &evil, 4096, 300).is_none(), "before the start");
        assert!(first_unsafe("binlog.000001", &evil[..evil.len() - 3], 0, 300).is_some(), "cut");
        assert!(first_unsafe("binlog.000001", b"not a log", 0, 300).is_some());
    }

    #[test]
    fn stop_times_are_utc_wall_clock_text() {
        assert_eq!(chrono_utc(0), "1970-01-01 00:00:00");
        assert_eq!(chrono_utc(1_796_551_200), "2026-12-06 10:00:00");
        assert_eq!(chrono_utc(951_827_696), "2000-02-29 12:34:56");
    }
}
