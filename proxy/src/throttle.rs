//! Throttles on what clients can make the proxy do before they have authenticated: failed
//! logins (guessing tokens), keyed by address *and* database so that a flood of wrong tokens
//! from a shared address (a NAT, an app server) leaves everyone else's logins alone, and RSA
//! decryption (the one expensive pre-authentication step). Successful logins are never
//! limited: one application server may rightly open thousands of connections a second.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::limits::{RateLimitedLog, address_key};

/// An address and a database name, the name kept as a hash so that keys stay small however
/// long or many the names a client makes up.
type Key = (IpAddr, u64);

pub struct Throttle {
    failures: DefaultKeyedRateLimiter<Key>,
    rsa_per_database: DefaultKeyedRateLimiter<Key>,
    rsa_per_address: DefaultKeyedRateLimiter<IpAddr>,
    hasher: foldhash::fast::RandomState,
    warnings: RateLimitedLog,
}

/// How many times the per-database RSA allowance one address gets over all databases: a
/// flood against one database leaves room for logins to others from the same address.
const RSA_ADDRESS_FACTOR: u32 = 4;

fn quota(per_second: u32) -> Quota {
    let n = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    // Allow bursts of five seconds' worth: a restarting application reconnects all at once.
    Quota::per_second(n)
        .allow_burst(n.saturating_mul(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN)))
}

impl Throttle {
    pub fn new(failures_per_second: u32, rsa_per_second: u32) -> Self {
        Self {
            failures: RateLimiter::keyed(quota(failures_per_second)),
            rsa_per_database: RateLimiter::keyed(quota(rsa_per_second)),
            rsa_per_address: RateLimiter::keyed(quota(
                rsa_per_second.saturating_mul(RSA_ADDRESS_FACTOR),
            )),
            hasher: foldhash::fast::RandomState::default(),
            warnings: RateLimitedLog::new(Duration::from_secs(1)),
        }
    }

    fn key(&self, ip: IpAddr, database: &str) -> Key {
        let mut hasher = self.hasher.build_hasher();
        database.hash(&mut hasher);
        (address_key(ip), std::hash::Hasher::finish(&hasher))
    }

    /// Counts a failed login to `database` (empty when the client named none) from `ip`.
    /// True when that pair is past its allowance: the client is then told to slow down
    /// rather than that its token is wrong. Only failures are counted and only failures are
    /// answered so: a token that verifies always logs in, whatever else came from its address.
    pub fn record_failure(&self, ip: IpAddr, database: &str) -> bool {
        let throttled = self.failures.check_key(&self.key(ip, database)).is_err();
        if throttled && let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(%ip, db = %database, suppressed, "too many failed logins");
        }
        throttled
    }

    /// Takes one RSA decryption for a login to `database` from `ip`, if allowed. A valid
    /// login is never starved by a flood: clients that log in over TLS, or with a token that
    /// logged in before (the fast path), need no RSA at all.
    pub fn allow_rsa(&self, ip: IpAddr, database: &str) -> bool {
        let allowed = self.rsa_per_database.check_key(&self.key(ip, database)).is_ok()
            && self.rsa_per_address.check_key(&address_key(ip)).is_ok();
        if !allowed && let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(%ip, db = %database, suppressed, "too many RSA logins");
        }
        allowed
    }

    /// Drops state of addresses that have gone quiet (from a maintenance loop).
    pub fn forget_quiet(&self) {
        self.failures.retain_recent();
        self.rsa_per_database.retain_recent();
        self.rsa_per_address.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_throttled_per_address_and_database() {
        let t = Throttle::new(1, 1);
        let (bad, good) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let throttled = (0..20).filter(|_| t.record_failure(bad, "shop")).count();
        assert_eq!(throttled, 15, "a burst of five seconds at 1/s, then throttled");
        assert!(!t.record_failure(bad, "blog"), "another database from the same address");
        assert!(!t.record_failure(good, "shop"), "the same database from another address");
        assert!(!t.record_failure(bad, ""), "a login that named no database");
    }

    #[test]
    fn ipv6_failures_count_by_their_64() {
        let t = Throttle::new(1, 1);
        for i in 0..5 {
            assert!(!t.record_failure(format!("2001:db8::{i}").parse().expect("ip"), "shop"));
        }
        assert!(t.record_failure("2001:db8::ff".parse().expect("ip"), "shop"));
    }

    #[test]
    fn rsa_is_limited_per_database_and_per_address() {
        let t = Throttle::new(1, 2);
        let ip = "10.0.0.3".parse().expect("ip");
        let allowed = (0..100).filter(|_| t.allow_rsa(ip, "shop")).count();
        assert_eq!(allowed, 10, "a burst of five seconds at 2/s");
        // Other databases still get theirs, up to the address's own allowance (4 × 10).
        let others = (0..100).filter(|i| t.allow_rsa(ip, &format!("db{}", i % 10))).count();
        assert_eq!(others, 30);
        assert!(t.allow_rsa("10.0.0.4".parse().expect("ip"), "shop"), "other addresses");
    }
}
