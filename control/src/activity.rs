//! Who is using which database: the client sessions proxies report, and when each database was
//! last in use. The idle suspender reads it; a database being suspended is marked here, so route
//! lookups send new clients to wait for the next wake instead of to a server that is stopping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dormouse_proxy::control::DatabaseSessions;

/// A remote proxy's report counts only this long; a proxy that stops reporting is forgotten.
const REMOTE_TTL: Duration = Duration::from_secs(10);

type Key = (String, String);

#[derive(Debug)]
struct Entry {
    /// Sessions through the in-process proxy, counted exactly.
    local: u32,
    /// Sessions through remote proxies: their last report and when it came.
    remote: HashMap<String, (u32, Instant)>,
    last_active: Instant,
    suspending: bool,
}

impl Entry {
    fn new() -> Self {
        Self { local: 0, remote: HashMap::new(), last_active: Instant::now(), suspending: false }
    }

    fn open(&self) -> u32 {
        let remote: u32 = self
            .remote
            .values()
            .filter(|(_, at)| at.elapsed() < REMOTE_TTL)
            .map(|(open, _)| *open)
            .sum();
        self.local + remote
    }
}

#[derive(Debug, Default)]
pub struct ActivityBook {
    entries: DashMap<Key, Entry>,
}

fn key(tenant: &str, database: &str) -> Key {
    (tenant.to_owned(), database.to_owned())
}

impl ActivityBook {
    pub fn opened(&self, tenant: &str, database: &str) {
        let mut e = self.entries.entry(key(tenant, database)).or_insert_with(Entry::new);
        e.local += 1;
        e.last_active = Instant::now();
    }

    pub fn closed(&self, tenant: &str, database: &str) {
        let mut e = self.entries.entry(key(tenant, database)).or_insert_with(Entry::new);
        e.local = e.local.saturating_sub(1);
        e.last_active = Instant::now();
    }

    /// A remote proxy's current session counts.
    pub fn report(&self, proxy: &str, sessions: &[DatabaseSessions]) {
        let now = Instant::now();
        for s in sessions {
            let mut e = self.entries.entry(key(&s.tenant, &s.database)).or_insert_with(Entry::new);
            e.remote.insert(proxy.to_owned(), (s.open, now));
            if s.open > 0 {
                e.last_active = now;
            }
        }
    }

    /// A start or wake counts as use: the idle clock starts again.
    pub fn touch(&self, tenant: &str, database: &str) {
        self.entries.entry(key(tenant, database)).or_insert_with(Entry::new).last_active =
            Instant::now();
    }

    /// How long the database has had no sessions; `None` while it has some. A database not
    /// seen before starts its idle clock now.
    pub fn idle_for(&self, tenant: &str, database: &str) -> Option<Duration> {
        let e = self.entries.entry(key(tenant, database)).or_insert_with(Entry::new);
        (e.open() == 0).then(|| e.last_active.elapsed())
    }

    pub fn open_sessions(&self, tenant: &str, database: &str) -> u32 {
        self.entries.get(&key(tenant, database)).map_or(0, |e| e.open())
    }

    pub fn set_suspending(&self, tenant: &str, database: &str, suspending: bool) {
        self.entries.entry(key(tenant, database)).or_insert_with(Entry::new).suspending =
            suspending;
    }

    pub fn is_suspending(&self, tenant: &str, database: &str) -> bool {
        self.entries.get(&key(tenant, database)).is_some_and(|e| e.suspending)
    }

    pub fn forget(&self, tenant: &str, database: &str) {
        self.entries.remove(&key(tenant, database));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_with_sessions_is_not_idle() {
        let book = ActivityBook::default();
        assert!(book.idle_for("t", "db").is_some());
        book.opened("t", "db");
        assert_eq!(book.idle_for("t", "db"), None);
        book.report(
            "p1",
            &[DatabaseSessions { tenant: "t".into(), database: "db".into(), open: 2 }],
        );
        book.closed("t", "db");
        assert_eq!(book.open_sessions("t", "db"), 2, "the remote proxy's sessions count");
        book.report(
            "p1",
            &[DatabaseSessions { tenant: "t".into(), database: "db".into(), open: 0 }],
        );
        assert!(book.idle_for("t", "db").is_some_and(|d| d < Duration::from_secs(1)));
    }

    #[test]
    fn closing_more_than_opened_never_underflows() {
        let book = ActivityBook::default();
        book.closed("t", "db");
        assert_eq!(book.open_sessions("t", "db"), 0);
    }
}
