//! The fast path of `caching_sha2_password`, for tokens: after a token's first full login the
//! proxy remembers it per user, so the next login with it is checked against the client's
//! scramble (three SHA-256s) instead of an RSA decryption, as a MySQL server caches passwords.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use mysql_common::scramble::scramble_sha256;

/// Tokens remembered per user (database name): a database rarely has more in use at once.
const PER_USER: usize = 8;

/// Tokens that passed a full login, by user. A remembered token is still verified in full
/// (signature, expiry, revocation) at every login; the cache only spares the client's way of
/// handing it over.
pub struct FastAuth {
    users: Mutex<HashMap<String, VecDeque<Arc<str>>>>,
    max_users: usize,
}

impl FastAuth {
    pub fn new(max_users: usize) -> Self {
        Self { users: Mutex::default(), max_users }
    }

    /// The remembered token of `user` whose scramble with `nonce` is `scramble`, if any.
    pub fn find(&self, user: &str, nonce: &[u8], scramble: &[u8]) -> Option<Arc<str>> {
        if scramble.len() != 32 {
            return None;
        }
        let users = self.users.lock().ok()?;
        users
            .get(user)?
            .iter()
            .find(|token| {
                scramble_sha256(nonce, token.as_bytes()).is_some_and(|s| same(&s, scramble))
            })
            .cloned()
    }

    /// Remembers a token that just passed a full login as `user`.
    pub fn remember(&self, user: &str, token: &str) {
        let Ok(mut users) = self.users.lock() else { return };
        if !users.contains_key(user) && users.len() >= self.max_users {
            // Full: drop some user's tokens; they log in the slow way once more.
            if let Some(victim) = users.keys().next().cloned() {
                users.remove(&victim);
            }
        }
        let tokens = users.entry(user.to_owned()).or_default();
        if let Some(i) = tokens.iter().position(|t| &**t == token) {
            tokens.remove(i);
        } else if tokens.len() >= PER_USER {
            tokens.pop_back();
        }
        tokens.push_front(Arc::from(token));
    }

    /// Forgets a token that no longer passes (expired, revoked, signed by a retired key).
    pub fn forget(&self, user: &str, token: &str) {
        let Ok(mut users) = self.users.lock() else { return };
        if let Some(tokens) = users.get_mut(user) {
            tokens.retain(|t| &**t != token);
            if tokens.is_empty() {
                users.remove(user);
            }
        }
    }
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &[u8; 20] = b"abcdefghijklmnopqrst";

    fn scramble(token: &str) -> [u8; 32] {
        scramble_sha256(NONCE, token.as_bytes()).unwrap_or_default()
    }

    #[test]
    fn finds_a_remembered_token_by_its_scramble_only() {
        let cache = FastAuth::new(10);
        assert!(cache.find("db", NONCE, &scramble("tok")).is_none(), "nothing remembered yet");
        cache.remember("db", "tok");
        cache.remember("db", "other");
        assert_eq!(cache.find("db", NONCE, &scramble("tok")).as_deref(), Some("tok"));
        assert!(cache.find("db", NONCE, &scramble("wrong")).is_none());
        assert!(cache.find("db2", NONCE, &scramble("tok")).is_none(), "per user");
        let other_nonce = scramble_sha256(b"ABCDEFGHIJKLMNOPQRST", b"tok").unwrap_or_default();
        assert!(cache.find("db", NONCE, &other_nonce).is_none(), "a replay for another nonce");
        assert!(cache.find("db", NONCE, &[]).is_none());
        cache.forget("db", "tok");
        assert!(cache.find("db", NONCE, &scramble("tok")).is_none());
        assert_eq!(cache.find("db", NONCE, &scramble("other")).as_deref(), Some("other"));
    }

    #[test]
    fn stays_bounded() {
        let cache = FastAuth::new(2);
        for i in 0..20 {
            cache.remember("db", &format!("t{i}"));
        }
        assert!(cache.find("db", NONCE, &scramble("t19")).is_some());
        assert!(cache.find("db", NONCE, &scramble("t0")).is_none(), "oldest dropped");
        for user in ["a", "b", "c"] {
            cache.remember(user, "t");
        }
        let users = cache.users.lock().map(|u| u.len()).unwrap_or_default();
        assert_eq!(users, 2);
    }
}
