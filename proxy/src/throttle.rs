//! Per-address throttles on what a client can make the proxy do before it has authenticated:
//! failed logins (guessing tokens) and expensive steps (RSA decryption). Successful logins are
//! never limited: one application server may rightly open thousands of connections a second.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How long an address that failed too often is refused outright.
const PENALTY: Duration = Duration::from_secs(1);

pub struct Throttle {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    expensive: DefaultKeyedRateLimiter<IpAddr>,
    blocked: DashMap<IpAddr, Instant>,
}

fn quota(per_second: u32) -> Quota {
    let n = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    // Allow bursts of five seconds' worth: a restarting application reconnects all at once.
    Quota::per_second(n)
        .allow_burst(n.saturating_mul(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN)))
}

impl Throttle {
    pub fn new(failures_per_second: u32, expensive_per_second: u32) -> Self {
        Self {
            failures: RateLimiter::keyed(quota(failures_per_second)),
            expensive: RateLimiter::keyed(quota(expensive_per_second)),
            blocked: DashMap::new(),
        }
    }

    /// Whether `ip` is serving a penalty for failing too often.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        // Copy out of the map first: removing while a read guard is held would deadlock.
        let until = self.blocked.get(&ip).map(|until| *until);
        let now = Instant::now();
        match until {
            Some(until) if until > now => true,
            Some(_) => {
                self.blocked.remove_if(&ip, |_, until| *until <= now);
                false
            }
            None => false,
        }
    }

    /// Counts a failed login; past the allowance the address is refused for a while.
    pub fn record_failure(&self, ip: IpAddr) {
        if self.failures.check_key(&ip).is_err() {
            tracing::warn!(%ip, "too many failed logins; refusing this address briefly");
            self.blocked.insert(ip, Instant::now() + PENALTY);
        }
    }

    /// Takes one unit of expensive pre-authentication work for `ip`, if allowed.
    pub fn allow_expensive(&self, ip: IpAddr) -> bool {
        self.expensive.check_key(&ip).is_ok()
    }

    /// Drops state of addresses that have gone quiet (from a maintenance loop).
    pub fn forget_quiet(&self) {
        self.failures.retain_recent();
        self.expensive.retain_recent();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_block_an_address_but_not_others() {
        let t = Throttle::new(1, 1);
        let (bad, good) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        for _ in 0..20 {
            t.record_failure(bad);
        }
        assert!(t.is_blocked(bad));
        assert!(!t.is_blocked(good));
    }

    #[test]
    fn a_penalty_ends() {
        let t = Throttle::new(1, 1);
        let ip = "10.0.0.4".parse().expect("ip");
        t.blocked.insert(ip, Instant::now() - Duration::from_millis(1));
        assert!(!t.is_blocked(ip), "expired");
        assert!(t.blocked.is_empty(), "and forgotten");
    }

    #[test]
    fn expensive_work_is_limited_per_address() {
        let t = Throttle::new(1, 2);
        let ip = "10.0.0.3".parse().expect("ip");
        let allowed = (0..100).filter(|_| t.allow_expensive(ip)).count();
        assert_eq!(allowed, 10, "a burst of five seconds at 2/s");
    }
}
