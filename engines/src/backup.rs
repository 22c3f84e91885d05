//! Backups as a host sees them: a byte stream an engine writes from one instance's data and
//! reads back into an instance's data directory. Hot from a running server (clients keep
//! working), cold from a stopped directory (no server is started). Compression, encryption and
//! storage are control's business; the agent only produces and consumes plain bytes.

use serde::{Deserialize, Serialize};

/// How a backup's bytes are laid out; a restore is given the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `mariadb-backup --backup --stream=xbstream` of a running MariaDB; restored with
    /// `mbstream -x` and `mariadb-backup --prepare`.
    Xbstream,
    /// An RDB snapshot of a running Redis, taken over the replication protocol.
    Rdb,
    /// A tar archive of a stopped instance's data directory, as it lies on disk.
    Tar,
    /// A Redis append-only file put back together from its archive for a restore to a time:
    /// a header line, the base file, then the increments after it (see
    /// [`crate::redis::pitr::AofHeader`]). Never stored as a backup.
    Aof,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Xbstream => "xbstream",
            Format::Rdb => "rdb",
            Format::Tar => "tar",
            Format::Aof => "aof",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "xbstream" => Ok(Format::Xbstream),
            "rdb" => Ok(Format::Rdb),
            "tar" => Ok(Format::Tar),
            "aof" => Ok(Format::Aof),
            other => Err(format!("unknown backup format {other:?}")),
        }
    }
}

/// The point a backup is consistent at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Seconds since the epoch.
    pub time: i64,
    /// MariaDB: the binary log file and offset the copy ends at, and the GTID of its last
    /// transaction (from `mariadb-backup`'s `xtrabackup_binlog_info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// The data's timeline: it changes at every restore, after which the change log starts
    /// again from the restored data (MariaDB numbers its binary log files from 1 again), so
    /// archived log files are kept per timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
    /// MariaDB: the InnoDB log sequence number a hot copy ends at, which an incremental
    /// backup on top of it starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
}

/// A file of an instance's change log that can be archived for point-in-time recovery: a
/// closed MariaDB binary log file, which no longer changes, or a file of Redis's append-only
/// file, which is only ever appended to (archived by byte ranges as it grows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSegment {
    pub name: String,
    pub size: u64,
    /// When the file was last changed (seconds since the epoch), where a restore needs it: a
    /// Redis base file holds the data as of then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<i64>,
}

/// An instance's closed change-log files, and the timeline they belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClosedLogs {
    pub timeline: String,
    pub segments: Vec<LogSegment>,
}

/// A backup the agent has written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub format: Format,
    pub position: Position,
    /// Plain bytes written.
    pub bytes: u64,
    /// Taken from the running server (else from its stopped directory).
    pub hot: bool,
}
