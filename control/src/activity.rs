//! Who is using which database: the client sessions proxies report, and when each database was
//! last in use. The idle suspender reads it; a database being suspended or drained is marked
//! here, so route lookups send new clients to a wake instead of to a server about to stop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dormouse_proxy::config::DEFAULT_ROUTE_TTL;
use dormouse_proxy::control::{ActivityReport, REPORT_EVERY};

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
    /// Its server is being stopped.
    suspending: bool,
    /// Idle, and waiting out remote proxies' cached routes before it is suspended.
    draining_since: Option<Instant>,
}

impl Entry {
    fn new() -> Self {
        Self {
            local: 0,
            remote: HashMap::new(),
            last_active: Instant::now(),
            suspending: false,
            draining_since: None,
        }
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

/// What control knows of one remote proxy's timing.
#[derive(Debug, Clone, Copy)]
struct RemoteProxy {
    last_report: Instant,
    route_ttl: Duration,
    every: Duration,
}

#[derive(Debug, Default)]
pub struct ActivityBook {
    entries: DashMap<Key, Entry>,
    proxies: DashMap<String, RemoteProxy>,
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
    pub fn report(&self, report: &ActivityReport) {
        let now = Instant::now();
        let millis = |ms: Option<u64>, default| ms.map_or(default, Duration::from_millis);
        self.proxies.insert(
            report.proxy.clone(),
            RemoteProxy {
                last_report: now,
                route_ttl: millis(report.route_ttl_ms, DEFAULT_ROUTE_TTL),
                every: millis(report.every_ms, REPORT_EVERY),
            },
        );
        for s in &report.sessions {
            let mut e = self.entries.entry(key(&s.tenant, &s.database)).or_insert_with(Entry::new);
            e.remote.insert(report.proxy.clone(), (s.open, now));
            if s.open > 0 {
                e.last_active = now;
            }
        }
    }

    /// How long an idle database must stay unrouted before its server may stop, so that every
    /// session a remote proxy opened on a cached route has shown up in a report: the longest
    /// route cache, then two report periods (one to be written, one to arrive). `None` when no
    /// remote proxy is reporting; the in-process proxy's sessions are counted at once.
    pub fn quiet_period(&self) -> Option<Duration> {
        self.proxies.retain(|_, p| p.last_report.elapsed() < REMOTE_TTL);
        self.proxies.iter().map(|p| p.route_ttl.saturating_add(p.every.saturating_mul(2))).max()
    }

    /// A start or wake counts as use: the idle clock starts again, and a drain ends.
    pub fn touch(&self, tenant: &str, database: &str) {
        let mut e = self.entries.entry(key(tenant, database)).or_insert_with(Entry::new);
        e.last_active = Instant::now();
        e.draining_since = None;
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

    /// Goes on draining the database and returns for how long it has been; `None` when this
    /// call started the drain.
    pub fn drain(&self, tenant: &str, database: &str) -> Option<Duration> {
        let mut e = self.entries.entry(key(tenant, database)).or_insert_with(Entry::new);
        match e.draining_since {
            Some(since) => Some(since.elapsed()),
            None => {
                e.draining_since = Some(Instant::now());
                None
            }
        }
    }

    /// Ends a drain (the database is in use again); a server being stopped stays marked.
    pub fn stop_draining(&self, tenant: &str, database: &str) {
        if let Some(mut e) = self.entries.get_mut(&key(tenant, database)) {
            e.draining_since = None;
        }
    }

    /// Marks the database as having its server stopped, or no longer (which also ends a drain).
    pub fn set_suspending(&self, tenant: &str, database: &str, suspending: bool) {
        let mut e = self.entries.entry(key(tenant, database)).or_insert_with(Entry::new);
        e.suspending = suspending;
        if !suspending {
            e.draining_since = None;
        }
    }

    /// Whether new clients must go through a wake: its server is stopping, or it is draining.
    pub fn is_suspending(&self, tenant: &str, database: &str) -> bool {
        self.entries
            .get(&key(tenant, database))
            .is_some_and(|e| e.suspending || e.draining_since.is_some())
    }

    pub fn forget(&self, tenant: &str, database: &str) {
        self.entries.remove(&key(tenant, database));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dormouse_proxy::control::DatabaseSessions;

    fn report(proxy: &str, open: u32, timing: Option<(u64, u64)>) -> ActivityReport {
        ActivityReport {
            proxy: proxy.into(),
            sessions: vec![DatabaseSessions { tenant: "t".into(), database: "db".into(), open }],
            route_ttl_ms: timing.map(|(ttl, _)| ttl),
            every_ms: timing.map(|(_, every)| every),
        }
    }

    #[test]
    fn a_database_with_sessions_is_not_idle() {
        let book = ActivityBook::default();
        assert!(book.idle_for("t", "db").is_some());
        book.opened("t", "db");
        assert_eq!(book.idle_for("t", "db"), None);
        book.report(&report("p1", 2, None));
        book.closed("t", "db");
        assert_eq!(book.open_sessions("t", "db"), 2, "the remote proxy's sessions count");
        book.report(&report("p1", 0, None));
        assert!(book.idle_for("t", "db").is_some_and(|d| d < Duration::from_secs(1)));
    }

    #[test]
    fn closing_more_than_opened_never_underflows() {
        let book = ActivityBook::default();
        book.closed("t", "db");
        assert_eq!(book.open_sessions("t", "db"), 0);
    }

    #[test]
    fn the_quiet_period_covers_the_slowest_remote_proxys_cached_routes_and_reports() {
        let book = ActivityBook::default();
        assert_eq!(book.quiet_period(), None, "the in-process proxy needs none");
        // An older proxy that does not say: the defaults, 2 s routes and 1 s reports.
        book.report(&report("old", 0, None));
        assert_eq!(book.quiet_period(), Some(Duration::from_secs(4)));
        book.report(&report("slow", 0, Some((5_000, 1_000))));
        assert_eq!(book.quiet_period(), Some(Duration::from_secs(7)));
        book.report(&report("absurd", 0, Some((u64::MAX, u64::MAX))));
        assert!(book.quiet_period() > Some(Duration::from_secs(1 << 50)), "no overflow panic");
    }

    #[test]
    fn a_drain_sends_clients_to_a_wake_until_use_ends_it() {
        let book = ActivityBook::default();
        assert!(!book.is_suspending("t", "db"));
        assert_eq!(book.drain("t", "db"), None, "the first call starts it");
        assert!(book.is_suspending("t", "db"), "route lookups now answer asleep");
        assert!(book.drain("t", "db").is_some());

        book.touch("t", "db");
        assert!(!book.is_suspending("t", "db"), "a wake ends the drain");

        book.drain("t", "db");
        book.stop_draining("t", "db");
        assert!(!book.is_suspending("t", "db"), "reported use ends it too");

        book.set_suspending("t", "db", true);
        book.stop_draining("t", "db");
        assert!(book.is_suspending("t", "db"), "a server being stopped stays marked");
        book.set_suspending("t", "db", false);
        assert!(!book.is_suspending("t", "db"));
    }
}
