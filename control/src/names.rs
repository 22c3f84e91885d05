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
    pub limits: Limits,
}

pub const PLANS: &[Plan] = &[
    Plan { name: "micro", limits: Limits { memory_mb: 64, max_connections: 100 } },
    Plan { name: "small", limits: Limits { memory_mb: 256, max_connections: 300 } },
    Plan { name: "medium", limits: Limits { memory_mb: 1024, max_connections: 1000 } },
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
