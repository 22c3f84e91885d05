//! Which commands a tenant may run, and how the relay treats each. The table is built from the
//! backend's own `COMMAND` reply, so new commands are classified by their flags rather than
//! guessed, plus a small override table: what a multi-tenant service refuses whatever the flags
//! say, and what the proxy answers itself.

use std::collections::{HashMap, HashSet};

use redis_protocol::resp2::types::OwnedFrame;

use crate::claims::Role;

/// What the relay does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward; exactly one reply comes back.
    Forward,
    /// Forward; replies come as pub/sub frames ((P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE).
    Subscribe,
    /// Forward; opens a transaction.
    Multi,
    /// Forward; `EXEC` ends a transaction.
    Exec,
    /// Forward; `DISCARD` ends a transaction.
    Discard,
    /// Answer `+OK` in the proxy: client identification the backend need not see.
    LocalOk,
    /// Refuse: not allowed on Dormouse.
    Denied,
    /// Refuse: the token is read-only and this command writes.
    ReadOnly,
}

/// Refused whatever the backend's flags say: server administration, replication, anything
/// that reaches outside the tenant's data or breaks reply matching (`CLIENT REPLY`), and `ACL`
/// (the proxy's internal user lives there).
const DENIED: &[&str] = &[
    "acl",
    "bgrewriteaof",
    "bgsave",
    "config",
    "debug",
    "failover",
    "latency",
    "migrate",
    "module",
    "monitor",
    "pfdebug",
    "pfselftest",
    "psync",
    "replconf",
    "replicaof",
    "save",
    "shutdown",
    "slaveof",
    "slowlog",
    "sync",
    "client|kill",
    "client|list",
    "client|pause",
    "client|unpause",
    "client|reply",
    "client|tracking",
    "client|caching",
    "client|no-evict",
    "client|no-touch",
    "client|unblock",
];

/// Answered by the proxy (libraries send them on connect; older servers reject them).
const LOCAL_OK: &[&str] = &["client|setinfo", "client|maint_notifications"];

/// Scripts that may write; their `_RO` variants carry the `readonly` flag.
const WRITING_SCRIPTS: &[&str] = &["eval", "evalsha", "fcall", "publish", "spublish"];

const SUBSCRIBE: &[&str] =
    &["subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe"];

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    write: bool,
    admin: bool,
}

/// The classification table for one server version.
#[derive(Debug, Default)]
pub struct CommandTable {
    /// Keyed by lower-case name, or `container|sub` for subcommands.
    commands: HashMap<String, Flags>,
    containers: HashSet<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected COMMAND reply: {0}")]
pub struct TableError(&'static str);

impl CommandTable {
    /// Builds the table from a RESP2 `COMMAND` reply.
    pub fn from_command_reply(frame: &OwnedFrame) -> Result<Self, TableError> {
        let OwnedFrame::Array(entries) = frame else {
            return Err(TableError("not an array"));
        };
        let mut table = CommandTable::default();
        for entry in entries {
            table.add(entry, None)?;
        }
        if table.commands.is_empty() {
            return Err(TableError("no commands"));
        }
        Ok(table)
    }

    fn add(&mut self, entry: &OwnedFrame, container: Option<&str>) -> Result<(), TableError> {
        let OwnedFrame::Array(fields) = entry else {
            return Err(TableError("entry not an array"));
        };
        let name = match fields.first() {
            Some(OwnedFrame::BulkString(n) | OwnedFrame::SimpleString(n)) => {
                String::from_utf8_lossy(n).to_ascii_lowercase()
            }
            _ => return Err(TableError("entry without a name")),
        };
        let words = |i: usize| -> Vec<String> {
            match fields.get(i) {
                Some(OwnedFrame::Array(items)) => items
                    .iter()
                    .filter_map(|f| match f {
                        OwnedFrame::SimpleString(s) | OwnedFrame::BulkString(s) => {
                            Some(String::from_utf8_lossy(s).to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let flags = words(2);
        let categories = words(6);
        let has = |list: &[String], w: &str| list.iter().any(|x| x == w);
        let info = Flags {
            write: has(&flags, "write") || has(&categories, "@write"),
            admin: has(&flags, "admin") || has(&categories, "@admin"),
        };
        if let Some(OwnedFrame::Array(subs)) = fields.get(9)
            && !subs.is_empty()
            && container.is_none()
        {
            self.containers.insert(name.clone());
            for sub in subs {
                self.add(sub, Some(&name))?;
            }
        }
        self.commands.insert(name, info);
        Ok(())
    }

    /// How to treat `args` (a command with its arguments) from a client with `role`. Also
    /// returns the command's name as Redis prints it in errors (`config|get`).
    pub fn classify(&self, args: &[bytes::Bytes], role: Role) -> (Action, String) {
        let name = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .unwrap_or_default();
        let full = match args.get(1) {
            Some(sub) if self.containers.contains(&name) => {
                format!("{name}|{}", String::from_utf8_lossy(sub).to_ascii_lowercase())
            }
            _ => name.clone(),
        };
        let listed = |list: &[&str]| list.contains(&name.as_str()) || list.contains(&full.as_str());
        let flags = self.commands.get(&full).or_else(|| self.commands.get(&name)).copied();
        let action = if listed(DENIED) || flags.is_some_and(|f| f.admin) {
            Action::Denied
        } else if listed(LOCAL_OK) {
            Action::LocalOk
        } else if !role.can_write() && (flags.is_some_and(|f| f.write) || listed(WRITING_SCRIPTS)) {
            Action::ReadOnly
        } else if SUBSCRIBE.contains(&name.as_str()) {
            Action::Subscribe
        } else {
            match name.as_str() {
                "multi" => Action::Multi,
                "exec" => Action::Exec,
                "discard" => Action::Discard,
                _ => Action::Forward,
            }
        };
        (action, full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(name: &str, flags: &[&str], cats: &[&str], subs: Vec<OwnedFrame>) -> OwnedFrame {
        let words = |w: &[&str]| {
            OwnedFrame::Array(
                w.iter().map(|s| OwnedFrame::SimpleString(s.as_bytes().to_vec())).collect(),
            )
        };
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(name.as_bytes().to_vec()),
            OwnedFrame::Integer(-1),
            words(flags),
            OwnedFrame::Integer(1),
            OwnedFrame::Integer(1),
            OwnedFrame::Integer(1),
            words(cats),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(vec![]),
            OwnedFrame::Array(subs),
        ])
    }

    fn table() -> CommandTable {
        let reply = OwnedFrame::Array(vec![
            entry("get", &["readonly", "fast"], &["@read"], vec![]),
            entry("set", &["write", "denyoom"], &["@write"], vec![]),
            entry("flushall", &["write"], &["@keyspace", "@dangerous"], vec![]),
            entry("bgsave", &["admin", "noscript"], &["@admin"], vec![]),
            entry("newadmincmd", &["admin"], &["@admin"], vec![]),
            entry(
                "client",
                &[],
                &["@slow"],
                vec![
                    entry("client|setname", &["noscript"], &["@connection"], vec![]),
                    entry("client|kill", &["admin"], &["@admin"], vec![]),
                    entry("client|setinfo", &["noscript"], &["@connection"], vec![]),
                ],
            ),
            entry("eval", &["noscript"], &["@scripting"], vec![]),
            entry("eval_ro", &["readonly"], &["@scripting"], vec![]),
            entry("subscribe", &["pubsub"], &["@pubsub"], vec![]),
        ]);
        CommandTable::from_command_reply(&reply).expect("valid table")
    }

    fn action(t: &CommandTable, role: Role, args: &[&str]) -> Action {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        t.classify(&args, role).0
    }

    #[test]
    fn admin_commands_are_denied_by_flag_and_by_name() {
        let t = table();
        assert_eq!(action(&t, Role::Admin, &["BGSAVE"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["newadmincmd"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["CONFIG", "GET", "dir"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["client", "KILL", "x"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["client", "SETNAME", "x"]), Action::Forward);
        assert_eq!(
            action(&t, Role::Admin, &["client", "setinfo", "lib-name", "x"]),
            Action::LocalOk
        );
        let (_, name) = t.classify(&[Bytes::from("Client"), Bytes::from("Kill")], Role::Admin);
        assert_eq!(name, "client|kill");
    }

    #[test]
    fn readonly_tokens_cannot_write() {
        let t = table();
        assert_eq!(action(&t, Role::Readonly, &["GET", "k"]), Action::Forward);
        assert_eq!(action(&t, Role::Readonly, &["SET", "k", "v"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["flushall"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["EVAL", "return 1", "0"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["EVAL_RO", "return 1", "0"]), Action::Forward);
        assert_eq!(action(&t, Role::Readwrite, &["SET", "k", "v"]), Action::Forward);
    }

    #[test]
    fn relay_kinds() {
        let t = table();
        assert_eq!(action(&t, Role::Readwrite, &["subscribe", "ch"]), Action::Subscribe);
        assert_eq!(action(&t, Role::Readwrite, &["MULTI"]), Action::Multi);
        assert_eq!(action(&t, Role::Readwrite, &["exec"]), Action::Exec);
        assert_eq!(action(&t, Role::Readwrite, &["unknowncmd"]), Action::Forward);
    }
}
