//! The statements prepared on one backend connection, cached by SQL text for any client that
//! runs the same statement, and the ones holding a client statement's cursor or parameter
//! data, which are never shared, evicted or replaced while they do.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;

/// Statements kept prepared per connection; the least recently used one is closed beyond
/// this, so connections never pile up toward the server's `max_prepared_stmt_count`.
const MAX_STATEMENTS: usize = 256;

#[derive(Debug, Default)]
pub struct Prepared {
    /// Hashed with foldhash: every execute looks its SQL text up, and at most
    /// `MAX_STATEMENTS` entries leave nothing for a flood of colliding texts to build on.
    cached: HashMap<Bytes, Cached, foldhash::fast::RandomState>,
    clock: u64,
    /// Backend statements with a client statement's open cursor or long data on them.
    held: BTreeSet<u32>,
    /// Held statements outside the cache: prepared for one client statement while another
    /// held the cached one, or pushed out of the cache while held. Closed when let go.
    detached: BTreeSet<u32>,
}

#[derive(Debug)]
struct Cached {
    schema: String,
    id: u32,
    used: u64,
}

impl Prepared {
    /// The cached statement for `sql` prepared against `schema`, whether held or not.
    pub fn lookup(&mut self, sql: &[u8], schema: &str) -> Option<u32> {
        self.clock += 1;
        let stmt = self.cached.get_mut(sql).filter(|s| s.schema == schema)?;
        stmt.used = self.clock;
        Some(stmt.id)
    }

    pub fn is_held(&self, id: u32) -> bool {
        self.held.contains(&id)
    }

    /// Caches a statement prepared on this connection; returns the ids of statements to close
    /// (the one it replaces, or the least recently used one over the limit), never a held one.
    pub fn remember(&mut self, sql: Bytes, schema: &str, id: u32) -> Vec<u32> {
        self.clock += 1;
        let mut close = Vec::new();
        let stmt = Cached { schema: schema.to_owned(), id, used: self.clock };
        if let Some(old) = self.cached.insert(sql, stmt) {
            close.extend(self.drop_unless_held(old.id));
        }
        if self.cached.len() > MAX_STATEMENTS
            && let Some(oldest) = self
                .cached
                .iter()
                .filter(|(_, s)| !self.held.contains(&s.id))
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            && let Some(old) = self.cached.remove(&oldest)
        {
            close.push(old.id);
        }
        close
    }

    /// Records a statement prepared for one client statement alone, outside the cache.
    pub fn detach(&mut self, id: u32) {
        self.detached.insert(id);
    }

    /// Marks `id` as holding a client statement's cursor or parameter data.
    pub fn hold(&mut self, id: u32) {
        self.held.insert(id);
    }

    /// `id` holds nothing any more; returns it when it is to be closed now (it was detached).
    pub fn let_go(&mut self, id: u32) -> Option<u32> {
        self.held.remove(&id);
        self.detached.remove(&id).then_some(id)
    }

    /// Forgets a statement closed on the server.
    pub fn forget(&mut self, id: u32) {
        self.cached.retain(|_, s| s.id != id);
        self.held.remove(&id);
        self.detached.remove(&id);
    }

    /// `id`, out of the cache: to close now, or kept detached while it is held.
    fn drop_unless_held(&mut self, id: u32) -> Option<u32> {
        if self.held.contains(&id) {
            self.detached.insert(id);
            None
        } else {
            Some(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn statements_are_found_by_text_and_schema() {
        let mut p = Prepared::default();
        assert!(p.remember(sql("SELECT 1"), "a", 7).is_empty());
        assert_eq!(p.lookup(b"SELECT 1", "a"), Some(7));
        assert_eq!(p.lookup(b"SELECT 1", "b"), None);
        assert_eq!(p.remember(sql("SELECT 1"), "b", 8), vec![7], "replaced and closed");
        assert_eq!(p.lookup(b"SELECT 1", "b"), Some(8));
    }

    #[test]
    fn a_held_statement_is_neither_closed_when_replaced_nor_evicted() {
        let mut p = Prepared::default();
        p.remember(sql("SELECT ?"), "a", 1);
        p.hold(1);
        assert!(p.remember(sql("SELECT ?"), "a", 2).is_empty(), "held: kept open");
        assert_eq!(p.lookup(b"SELECT ?", "a"), Some(2));
        assert_eq!(p.let_go(1), Some(1), "out of the cache, so closed once let go");
        assert_eq!(p.let_go(2), None, "cached statements stay open");

        p.hold(2);
        let mut closed = Vec::new();
        for n in 0..MAX_STATEMENTS as u32 {
            closed.extend(p.remember(sql(&format!("SELECT {n}")), "a", 10 + n));
        }
        assert_eq!(closed, vec![10], "the oldest statement not held goes");
        assert_eq!(p.lookup(b"SELECT ?", "a"), Some(2));
    }

    #[test]
    fn detached_statements_close_when_let_go_or_forgotten() {
        let mut p = Prepared::default();
        p.detach(5);
        p.hold(5);
        assert!(p.is_held(5));
        assert_eq!(p.let_go(5), Some(5));
        assert_eq!(p.let_go(5), None);
        p.detach(6);
        p.hold(6);
        p.forget(6);
        assert!(!p.is_held(6));
        assert_eq!(p.let_go(6), None);
    }
}
