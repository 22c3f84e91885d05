//! Which commands a tenant may run, and how the relay treats each. The table is built from the
//! backend's own `COMMAND` reply, so new commands are classified by their flags rather than
//! guessed, plus a small override table: what a multi-tenant service refuses whatever the flags
//! say, what the proxy answers itself, and what needs a connection of its own.
//!
//! | class | commands | handling |
//! |---|---|---|
//! | shared | everything else | any shared backend connection of the database |
//! | transaction | MULTI, WATCH … EXEC, DISCARD, UNWATCH | a connection of its own until it ends |
//! | blocking | the `blocking` flag, WAIT, WAITAOF, XREAD/XREADGROUP with BLOCK | own connection for the call |
//! | subscription | (P/S)SUBSCRIBE | own connection while subscribed |
//! | local | CLIENT SETNAME/GETNAME/ID/INFO/SETINFO, SELECT 0 | answered by the proxy |
//! | info | INFO | run as the server's INFO-only user, filtered (see `info`) |
//! | refused | admin commands, MONITOR, CLIENT REPLY/TRACKING/…, MOVE, SWAPDB | `-NOPERM` |
//!
//! The server's ACL refuses the same commands to the proxy's internal users (the engine's
//! `redis.conf`), so a Lua script or function cannot run what the proxy refuses, and a
//! read-only token's sessions log in as a user without `@write`.

use std::collections::HashMap;

use redis_protocol::resp2::types::OwnedFrame;

use crate::claims::Role;

/// What the relay does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward on the client's current connection; exactly one reply comes back.
    Forward,
    /// Needs a connection of its own for the call (it may block the connection).
    Blocking,
    /// (P|S)SUBSCRIBE: a connection of its own while subscribed; replies are pub/sub frames.
    Subscribe,
    /// (P|S)UNSUBSCRIBE: pub/sub confirmations.
    Unsubscribe,
    /// Opens a transaction (a connection of its own until it ends).
    Multi,
    /// Watches keys (a connection of its own until EXEC, DISCARD or UNWATCH).
    Watch,
    Unwatch,
    Exec,
    Discard,
    /// Answered by the proxy.
    Local(Local),
    /// Refuse: not allowed on Dormouse.
    Denied,
    /// Refuse: the token is read-only and this command writes.
    ReadOnly,
}

/// Commands the proxy answers itself: state that belongs to the client, not to a backend
/// connection many clients share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `+OK`: client identification libraries send on connect (CLIENT SETINFO, ...).
    Ok,
    SetName,
    GetName,
    Id,
    Info,
    /// SELECT: database 0 is the only one (each Dormouse database is its own server).
    Select,
    /// INFO: asked of the server as its INFO-only user, and filtered.
    ServerInfo,
}

/// Refused whatever the backend's flags say: server administration, replication, anything
/// that reaches outside the tenant's data or breaks reply matching (`CLIENT REPLY`), `ACL`
/// (the proxy's internal user lives there), and commands on other numbered databases.
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
    "move",
    "pfdebug",
    "pfselftest",
    "psync",
    "replconf",
    "replicaof",
    "save",
    "shutdown",
    "slaveof",
    "slowlog",
    "swapdb",
    "sync",
    "client|caching",
    "client|getredir",
    "client|kill",
    "client|list",
    "client|no-evict",
    "client|no-touch",
    "client|pause",
    "client|reply",
    "client|tracking",
    "client|trackinginfo",
    "client|unblock",
    "client|unpause",
    // The allocator's settings and the host's CPU count.
    "memory|malloc-stats",
    // Turns the connection's next EVAL into a debugging session: no place on a shared one.
    "script|debug",
];

const LOCAL: &[(&str, Local)] = &[
    ("client|setinfo", Local::Ok),
    ("client|maint_notifications", Local::Ok),
    ("client|setname", Local::SetName),
    ("client|getname", Local::GetName),
    ("client|id", Local::Id),
    ("client|info", Local::Info),
    ("select", Local::Select),
    ("info", Local::ServerInfo),
];

/// Refused to read-only tokens although the server does not flag them `write`: scripts and
/// publishing that may write (their `_RO` variants carry the `readonly` flag), and what
/// changes or kills the scripts other sessions run.
const WRITING: &[&str] = &[
    "eval",
    "evalsha",
    "fcall",
    "publish",
    "spublish",
    "script|flush",
    "script|load",
    "script|kill",
    "function|kill",
];

/// Block without carrying the `blocking` flag.
const BLOCKING: &[&str] = &["wait", "waitaof"];

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    write: bool,
    admin: bool,
    blocking: bool,
}

#[derive(Debug, Clone, Copy)]
enum Special {
    Denied,
    Local(Local),
    Writing,
    Blocking,
    Subscribe,
    Unsubscribe,
    Multi,
    Watch,
    Unwatch,
    Exec,
    Discard,
    /// XREAD and XREADGROUP block only with a BLOCK argument.
    MaybeBlocking,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    flags: Flags,
    special: Option<Special>,
    /// Has `name|sub` entries: classified by its subcommand (CLIENT, CONFIG, ...).
    container: bool,
}

/// The classification table for one server version.
#[derive(Debug, Default)]
pub struct CommandTable {
    /// Keyed by lower-case name, or `container|sub` for subcommands. Looked up once per
    /// command; the keys come from the server, so a fast hash needs no flood protection.
    commands: HashMap<String, Entry, foldhash::fast::RandomState>,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected COMMAND reply: {0}")]
pub struct TableError(&'static str);

/// Longest command or subcommand name classified; longer ones are unknown to Redis anyway.
const MAX_NAME: usize = 64;

/// `bytes` lower-cased into `buf`, as a string; `None` if too long or not UTF-8.
fn lower<'b>(bytes: &[u8], buf: &'b mut [u8; MAX_NAME]) -> Option<&'b str> {
    let out = buf.get_mut(..bytes.len())?;
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

impl CommandTable {
    /// Builds the table from a RESP2 `COMMAND` reply.
    pub fn from_command_reply(frame: &OwnedFrame) -> Result<Self, TableError> {
        let OwnedFrame::Array(entries) = frame else { return Err(TableError("not an array")) };
        let mut table = CommandTable::default();
        for entry in entries {
            table.add(entry, false)?;
        }
        if table.commands.is_empty() {
            return Err(TableError("no commands"));
        }
        let special = DENIED
            .iter()
            .map(|n| (*n, Special::Denied))
            .chain(LOCAL.iter().map(|(n, l)| (*n, Special::Local(*l))))
            .chain(WRITING.iter().map(|n| (*n, Special::Writing)))
            .chain(BLOCKING.iter().map(|n| (*n, Special::Blocking)))
            .chain(["subscribe", "psubscribe", "ssubscribe"].map(|n| (n, Special::Subscribe)))
            .chain(
                ["unsubscribe", "punsubscribe", "sunsubscribe"].map(|n| (n, Special::Unsubscribe)),
            )
            .chain([
                ("multi", Special::Multi),
                ("watch", Special::Watch),
                ("unwatch", Special::Unwatch),
                ("exec", Special::Exec),
                ("discard", Special::Discard),
                ("xread", Special::MaybeBlocking),
                ("xreadgroup", Special::MaybeBlocking),
            ]);
        for (name, s) in special {
            table.commands.entry(name.to_owned()).or_default().special = Some(s);
        }
        // Older servers list no subcommands, but the override table still names some.
        let containers: Vec<String> = table
            .commands
            .keys()
            .filter_map(|k| k.split_once('|').map(|(container, _)| container.to_owned()))
            .collect();
        for name in containers {
            table.commands.entry(name).or_default().container = true;
        }
        Ok(table)
    }

    fn add(&mut self, entry: &OwnedFrame, is_sub: bool) -> Result<(), TableError> {
        let OwnedFrame::Array(fields) = entry else { return Err(TableError("entry not an array")) };
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
            blocking: has(&flags, "blocking") || has(&categories, "@blocking"),
        };
        if let Some(OwnedFrame::Array(subs)) = fields.get(9)
            && !is_sub
        {
            for sub in subs {
                self.add(sub, true)?;
            }
        }
        self.commands.entry(name).or_default().flags = info;
        Ok(())
    }

    /// How to treat `args` (a command with its arguments) from a client with `role`.
    pub fn classify<A: AsRef<[u8]>>(&self, args: &[A], role: Role) -> Action {
        let mut buf = [0u8; MAX_NAME];
        let Some(name) = args.first().and_then(|n| lower(n.as_ref(), &mut buf)) else {
            return Action::Forward;
        };
        let mut entry = self.commands.get(name).copied().unwrap_or_default();
        // Container commands (CLIENT, CONFIG, ...) are classified by their subcommand.
        if let Some(sub) = args.get(1).map(AsRef::as_ref).filter(|_| entry.container) {
            let mut full = [0u8; MAX_NAME];
            let len = name.len();
            if len + 1 + sub.len() <= MAX_NAME {
                full[..len].copy_from_slice(name.as_bytes());
                full[len] = b'|';
                let mut sub_buf = [0u8; MAX_NAME];
                if let Some(sub) = lower(sub, &mut sub_buf) {
                    full[len + 1..len + 1 + sub.len()].copy_from_slice(sub.as_bytes());
                    if let Some(found) = std::str::from_utf8(&full[..len + 1 + sub.len()])
                        .ok()
                        .and_then(|f| self.commands.get(f))
                    {
                        entry = Entry { special: found.special.or(entry.special), ..*found };
                    }
                }
            }
        }
        let flags = entry.flags;
        match entry.special {
            Some(Special::Denied) => return Action::Denied,
            _ if flags.admin => return Action::Denied,
            Some(Special::Local(local)) => return Action::Local(local),
            _ => {}
        }
        if !role.can_write() && (flags.write || matches!(entry.special, Some(Special::Writing))) {
            return Action::ReadOnly;
        }
        match entry.special {
            Some(Special::Subscribe) => Action::Subscribe,
            Some(Special::Unsubscribe) => Action::Unsubscribe,
            Some(Special::Multi) => Action::Multi,
            Some(Special::Watch) => Action::Watch,
            Some(Special::Unwatch) => Action::Unwatch,
            Some(Special::Exec) => Action::Exec,
            Some(Special::Discard) => Action::Discard,
            Some(Special::Blocking) => Action::Blocking,
            Some(Special::MaybeBlocking) => {
                let block = args.iter().skip(1).any(|a| a.as_ref().eq_ignore_ascii_case(b"block"));
                if block { Action::Blocking } else { Action::Forward }
            }
            _ if flags.blocking => Action::Blocking,
            _ => Action::Forward,
        }
    }
}

/// The name Redis prints for a command in errors: `get`, `config|get`.
pub fn display_name(args: &[bytes::Bytes]) -> String {
    let name =
        args.first().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).unwrap_or_default();
    match args.get(1) {
        Some(sub)
            if matches!(
                name.as_str(),
                "client"
                    | "config"
                    | "acl"
                    | "debug"
                    | "module"
                    | "latency"
                    | "slowlog"
                    | "cluster"
                    | "memory"
                    | "object"
                    | "script"
                    | "function"
                    | "command"
                    | "xinfo"
                    | "pubsub"
            ) =>
        {
            format!("{name}|{}", String::from_utf8_lossy(sub).to_ascii_lowercase())
        }
        _ => name,
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
            entry("blpop", &["write", "blocking"], &["@write", "@blocking"], vec![]),
            entry("xread", &["readonly", "blocking"], &["@read", "@blocking"], vec![]),
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
            entry(
                "script",
                &[],
                &["@slow"],
                vec![
                    entry("script|flush", &["noscript"], &["@scripting"], vec![]),
                    entry("script|exists", &["noscript"], &["@scripting"], vec![]),
                ],
            ),
            entry(
                "function",
                &[],
                &["@slow"],
                vec![entry("function|load", &["write", "noscript"], &["@write"], vec![])],
            ),
            entry("info", &["loading", "stale"], &["@slow", "@dangerous"], vec![]),
            entry("eval_ro", &["readonly"], &["@scripting"], vec![]),
            entry("subscribe", &["pubsub"], &["@pubsub"], vec![]),
        ]);
        CommandTable::from_command_reply(&reply).expect("valid table")
    }

    fn action(t: &CommandTable, role: Role, args: &[&str]) -> Action {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        t.classify(&args, role)
    }

    #[test]
    fn admin_commands_are_denied_by_flag_and_by_name() {
        let t = table();
        assert_eq!(action(&t, Role::Admin, &["BGSAVE"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["newadmincmd"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["CONFIG", "GET", "dir"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["client", "KILL", "x"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["MOVE", "k", "1"]), Action::Denied);
        assert_eq!(display_name(&[Bytes::from("Client"), Bytes::from("Kill")]), "client|kill");
    }

    #[test]
    fn subcommands_named_only_by_the_override_table_are_classified() {
        // A server whose COMMAND reply lists no subcommands (Redis 6).
        let reply = OwnedFrame::Array(vec![
            entry("client", &["admin"], &["@slow"], vec![]),
            entry("get", &["readonly"], &["@read"], vec![]),
        ]);
        let t = CommandTable::from_command_reply(&reply).expect("valid table");
        assert_eq!(action(&t, Role::Admin, &["CLIENT", "KILL", "x"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["client", "id"]), Action::Local(Local::Id));
        assert_eq!(action(&t, Role::Readonly, &["GET", "client"]), Action::Forward);
    }

    #[test]
    fn client_state_is_answered_locally() {
        let t = table();
        assert_eq!(
            action(&t, Role::Admin, &["client", "SETNAME", "x"]),
            Action::Local(Local::SetName)
        );
        assert_eq!(
            action(&t, Role::Admin, &["client", "setinfo", "lib-name", "x"]),
            Action::Local(Local::Ok)
        );
        assert_eq!(action(&t, Role::Admin, &["CLIENT", "ID"]), Action::Local(Local::Id));
        assert_eq!(action(&t, Role::Admin, &["select", "0"]), Action::Local(Local::Select));
    }

    #[test]
    fn readonly_tokens_cannot_write() {
        let t = table();
        assert_eq!(action(&t, Role::Readonly, &["GET", "k"]), Action::Forward);
        assert_eq!(action(&t, Role::Readonly, &["SET", "k", "v"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["flushall"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["EVAL", "return 1", "0"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["EVAL_RO", "return 1", "0"]), Action::Forward);
        assert_eq!(action(&t, Role::Readonly, &["BLPOP", "l", "0"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readwrite, &["SET", "k", "v"]), Action::Forward);
    }

    #[test]
    fn readonly_tokens_cannot_change_or_kill_scripts() {
        let t = table();
        for args in [&["SCRIPT", "FLUSH"][..], &["script", "load", "return 1"], &["SCRIPT", "KILL"]]
        {
            assert_eq!(action(&t, Role::Readonly, args), Action::ReadOnly, "{args:?}");
            assert_eq!(action(&t, Role::Readwrite, args), Action::Forward, "{args:?}");
        }
        assert_eq!(action(&t, Role::Readonly, &["FUNCTION", "LOAD", "x"]), Action::ReadOnly);
        assert_eq!(action(&t, Role::Readonly, &["SCRIPT", "EXISTS", "x"]), Action::Forward);
    }

    #[test]
    fn info_is_answered_by_the_proxy_and_allocator_stats_and_the_debugger_refused() {
        let t = table();
        for role in [Role::Readonly, Role::Readwrite] {
            assert_eq!(action(&t, role, &["INFO"]), Action::Local(Local::ServerInfo));
            assert_eq!(action(&t, role, &["info", "server"]), Action::Local(Local::ServerInfo));
        }
        assert_eq!(action(&t, Role::Admin, &["MEMORY", "MALLOC-STATS"]), Action::Denied);
        assert_eq!(action(&t, Role::Admin, &["SCRIPT", "DEBUG", "YES"]), Action::Denied);
    }

    #[test]
    fn connection_state_classes() {
        let t = table();
        assert_eq!(action(&t, Role::Readwrite, &["subscribe", "ch"]), Action::Subscribe);
        assert_eq!(action(&t, Role::Readwrite, &["UNSUBSCRIBE"]), Action::Unsubscribe);
        assert_eq!(action(&t, Role::Readwrite, &["MULTI"]), Action::Multi);
        assert_eq!(action(&t, Role::Readwrite, &["watch", "k"]), Action::Watch);
        assert_eq!(action(&t, Role::Readwrite, &["exec"]), Action::Exec);
        assert_eq!(action(&t, Role::Readwrite, &["BLPOP", "l", "0"]), Action::Blocking);
        assert_eq!(action(&t, Role::Readwrite, &["WAIT", "0", "0"]), Action::Blocking);
        assert_eq!(action(&t, Role::Readwrite, &["XREAD", "STREAMS", "s", "0"]), Action::Forward);
        assert_eq!(
            action(&t, Role::Readwrite, &["XREAD", "block", "0", "STREAMS", "s", "$"]),
            Action::Blocking
        );
        assert_eq!(action(&t, Role::Readwrite, &["unknowncmd"]), Action::Forward);
        let long = "x".repeat(200);
        assert_eq!(action(&t, Role::Readwrite, &[&long]), Action::Forward);
    }
}
