//! Per-database client connection counts, so one database cannot take every connection the
//! proxy has. A `ClientSlot` holds a database's count up for as long as the session lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;

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
}
