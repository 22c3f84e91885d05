//! Names tenants choose, and the plans they pick from.

use dormouse_engines::Limits;

/// `[a-z][a-z0-9_-]{0,62}`: usable as a MySQL user and schema name and in URLs as is. The
/// proxy checks client-supplied names against the same rule.
pub use dormouse_proxy::claims::valid_name;

pub const NAME_RULE: &str =
    "names start with a lower-case letter, then up to 62 lower-case letters, digits, '_' or '-'";

/// A plan: the limits a database gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub name: &'static str,
    /// What the server itself gets (memory, its own connection cap).
    pub limits: Limits,
    /// Client connections through the proxy; they share far fewer server connections.
    pub max_clients: u32,
}

impl Plan {
    /// Backend connections the proxy may open: most of the server's cap, leaving room for
    /// the agent's probes and maintenance.
    pub fn max_backend(&self) -> u32 {
        (self.limits.max_connections * 4 / 5).max(4)
    }
}

pub const PLANS: &[Plan] = &[
    Plan {
        name: "micro",
        limits: Limits { memory_mb: 64, max_connections: 100 },
        max_clients: 10_000,
    },
    Plan {
        name: "small",
        limits: Limits { memory_mb: 256, max_connections: 300 },
        max_clients: 20_000,
    },
    Plan {
        name: "medium",
        limits: Limits { memory_mb: 1024, max_connections: 1000 },
        max_clients: 50_000,
    },
];

pub const DEFAULT_PLAN: &str = "micro";

pub fn plan(name: &str) -> Option<Plan> {
    PLANS.iter().copied().find(|p| p.name == name)
}

pub fn plan_names() -> String {
    PLANS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "cache", "my-db_2", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1db", "-x", "Cache", "a b", "a.b", "ü", &"a".repeat(64), "a;drop"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn plans_are_found_by_name() {
        assert_eq!(plan(DEFAULT_PLAN).map(|p| p.limits.memory_mb), Some(64));
        assert!(plan("huge").is_none());
    }
}
