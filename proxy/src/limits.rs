//! Admission: how many connections the proxy holds and for whom. Connections that have not
//! logged in yet (pending) are capped in total and per client address, apart from logged-in
//! clients, so idle sockets cannot crowd out real logins; and per-database client counts keep
//! one database from taking every connection the proxy has.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The caps admission enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections not yet logged in, over all addresses.
    pub max_pending: usize,
    /// Connections not yet logged in from one address (an IPv6 /64).
    pub max_pending_per_address: usize,
    /// Logged-in client connections.
    pub max_clients: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("too many connections waiting to log in")]
    Pending,
    #[error("too many connections waiting to log in from this address")]
    Address,
    #[error("too many logged-in clients")]
    Clients,
}

/// Connection counts shared by every listener of a proxy.
pub struct Admission {
    limits: AdmissionLimits,
    pending: AtomicUsize,
    clients: AtomicUsize,
    per_address: DashMap<IpAddr, usize>,
    refusals: RateLimitedLog,
}

/// One connection's place: pending until [`Ticket::logged_in`], then a logged-in client.
/// Dropping it gives the place back.
pub struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Pending,
    LoggedIn,
}

/// The address a per-address cap counts: IPv4 as it is, IPv6 by its /64, since one host is
/// usually given a whole /64 and could otherwise pick a fresh address per connection.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Adds one to `count` unless it is at `max`.
fn take(count: &AtomicUsize, max: usize) -> bool {
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            pending: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            per_address: DashMap::new(),
            refusals: RateLimitedLog::new(Duration::from_secs(1)),
        })
    }

    /// A place for a new connection from `ip`, pending until it logs in.
    pub fn arrive(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Full> {
        let address = address_key(ip);
        {
            let mut here = self.per_address.entry(address).or_insert(0);
            if *here >= self.limits.max_pending_per_address {
                return Err(Full::Address);
            }
            if !take(&self.pending, self.limits.max_pending) {
                drop(here);
                self.forget_if_idle(address);
                return Err(Full::Pending);
            }
            *here += 1;
        }
        Ok(Ticket { admission: self.clone(), address, stage: Stage::Pending })
    }

    /// Connections now pending and logged in.
    pub fn counts(&self) -> (usize, usize) {
        (self.pending.load(Ordering::Acquire), self.clients.load(Ordering::Acquire))
    }

    /// Logs a refusal, at most once a second with how many went unlogged in between: a
    /// flood must not turn into a flood of log lines.
    pub fn log_refusal(&self, ip: IpAddr, why: Full) {
        if let Some(suppressed) = self.refusals.allow() {
            let (pending, clients) = self.counts();
            tracing::warn!(%ip, %why, pending, clients, suppressed, "connection refused");
        }
    }

    fn leave_pending(&self, address: IpAddr) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        if let Some(mut here) = self.per_address.get_mut(&address) {
            *here = here.saturating_sub(1);
        }
        self.forget_if_idle(address);
    }

    fn forget_if_idle(&self, address: IpAddr) {
        self.per_address.remove_if(&address, |_, n| *n == 0);
    }
}

impl Ticket {
    /// The connection logged in: it stops counting as pending (for its address too) and
    /// counts as a client, unless the proxy already has as many clients as it takes. Once
    /// logged in, later calls (a second AUTH) change nothing.
    pub fn logged_in(&mut self) -> Result<(), Full> {
        if self.stage == Stage::LoggedIn {
            return Ok(());
        }
        if !take(&self.admission.clients, self.admission.limits.max_clients) {
            self.admission.log_refusal(self.address, Full::Clients);
            return Err(Full::Clients);
        }
        self.admission.leave_pending(self.address);
        self.stage = Stage::LoggedIn;
        Ok(())
    }

    /// The address the connection counts against.
    pub fn address(&self) -> IpAddr {
        self.address
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self.stage {
            Stage::Pending => self.admission.leave_pending(self.address),
            Stage::LoggedIn => {
                self.admission.clients.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Lets a recurring log line through at most once per `every`, counting what it held back.
pub struct RateLimitedLog {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(held back since the last one)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Client sessions per database.
#[derive(Default)]
pub struct ClientCounts {
    counts: DashMap<(String, String), Arc<AtomicU32>>,
}

/// One client session counted against its database.
pub struct ClientSlot {
    count: Arc<AtomicU32>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClientCounts {
    /// Counts a session, unless the database already has `max` of them.
    pub fn admit(&self, tenant: &str, database: &str, max: u32) -> Option<ClientSlot> {
        let count =
            self.counts.entry((tenant.to_owned(), database.to_owned())).or_default().clone();
        let admitted =
            count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        admitted.ok().map(|_| ClientSlot { count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_admits_up_to_its_limit_and_frees_slots() {
        let counts = ClientCounts::default();
        let a = counts.admit("t", "db", 2);
        let b = counts.admit("t", "db", 2);
        assert!(a.is_some() && b.is_some());
        assert!(counts.admit("t", "db", 2).is_none());
        assert!(counts.admit("t", "other", 2).is_some(), "per database");
        drop(a);
        assert!(counts.admit("t", "db", 2).is_some());
    }

    fn limits(pending: usize, per_address: usize, clients: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_pending: pending,
            max_pending_per_address: per_address,
            max_clients: clients,
        }
    }

    #[test]
    fn one_address_cannot_take_every_pending_place() {
        let admission = Admission::new(limits(10, 3, 100));
        let (a, b) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let held: Vec<_> = (0..3).map(|_| admission.arrive(a)).collect();
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(admission.arrive(a).err(), Some(Full::Address));
        assert!(admission.arrive(b).is_ok(), "another address still gets in");
        drop(held);
        assert!(admission.arrive(a).is_ok(), "places come back");
        assert_eq!(admission.counts(), (0, 0));
        assert!(admission.per_address.is_empty(), "idle addresses are forgotten");
    }

    #[test]
    fn pending_places_are_capped_in_total() {
        let admission = Admission::new(limits(4, 3, 100));
        let ips: Vec<IpAddr> =
            (1..=4).map(|i| format!("10.0.1.{i}").parse().expect("ip")).collect();
        let held: Vec<_> = ips.iter().filter_map(|ip| admission.arrive(*ip).ok()).collect();
        assert_eq!(held.len(), 4);
        assert_eq!(admission.arrive("10.0.1.9".parse().expect("ip")).err(), Some(Full::Pending));
        assert_eq!(admission.per_address.len(), 4, "a refused address leaves nothing behind");
    }

    #[test]
    fn logging_in_moves_a_connection_from_pending_to_clients() {
        let admission = Admission::new(limits(10, 2, 1));
        let ip = "10.0.2.1".parse().expect("ip");
        let mut first = admission.arrive(ip).expect("pending place");
        let mut second = admission.arrive(ip).expect("pending place");
        assert_eq!(admission.arrive(ip).err(), Some(Full::Address));
        assert_eq!(first.logged_in(), Ok(()));
        assert_eq!(first.logged_in(), Ok(()), "a second login changes nothing");
        assert_eq!(admission.counts(), (1, 1));
        // Its pending place went back to its address.
        let third = admission.arrive(ip).expect("freed pending place");
        assert_eq!(second.logged_in(), Err(Full::Clients), "one client at most");
        drop(first);
        assert_eq!(second.logged_in(), Ok(()));
        drop((second, third));
        assert_eq!(admission.counts(), (0, 0));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2:ffff::7".parse().expect("ip");
        assert_eq!(address_key(one), address_key(other));
        assert_ne!(address_key(one), address_key("2001:db8:1:3::1".parse().expect("ip")));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn a_rate_limited_log_counts_what_it_held_back() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
        *log.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        assert_eq!(log.allow(), Some(2));
    }
}
