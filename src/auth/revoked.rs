//! Sessions ended by a logout before their expiry. A session token names its session (`sid`);
//! logging out records the id until the token would have expired anyway, in the store (so a
//! restart keeps it) and in memory (so checking costs one lookup per request).

use std::collections::HashMap;
use std::sync::RwLock;

pub struct RevokedSessions {
    ids: RwLock<HashMap<String, i64>>,
}

impl RevokedSessions {
    /// From what the store holds.
    pub fn new(revoked: Vec<(String, i64)>) -> Self {
        Self {
            ids: RwLock::new(revoked.into_iter().collect()),
        }
    }

    pub fn contains(&self, sid: &str) -> bool {
        !sid.is_empty()
            && self
                .ids
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(sid)
    }

    /// Notes a revocation the store has just recorded; forgets expired ones.
    pub fn insert(&self, sid: String, exp: i64, now_s: i64) {
        let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
        ids.retain(|_, e| *e > now_s);
        ids.insert(sid, exp);
    }
}
