//! A small write-through cache for records read on every request and written rarely
//! (projects, project roles). A miss reads the store under the cache's write lock, and a write
//! updates the store and the cache under that same lock, so a read racing a write can never
//! leave the old value behind.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::RwLock;

use crate::store::StoreResult;

/// Entries kept at most; past it the cache starts again empty (lookups of ids that do not
/// exist are cached too, and must not grow it without bound).
const MAX_ENTRIES: usize = 65_536;

pub(super) struct Cache<K, V> {
    entries: RwLock<HashMap<K, V>>,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Copy, V: Clone> Cache<K, V> {
    /// The cached value, or `load`'s, remembered.
    pub fn get_or_load(&self, key: K, load: impl FnOnce() -> StoreResult<V>) -> StoreResult<V> {
        if let Some(value) = self.entries.read().get(&key) {
            return Ok(value.clone());
        }
        let mut entries = self.entries.write();
        if let Some(value) = entries.get(&key) {
            return Ok(value.clone());
        }
        let value = load()?;
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, value.clone());
        Ok(value)
    }

    /// Runs `write` against the store and, when it succeeds, sets the key to `value`. On failure
    /// the key is forgotten: the next read goes to the store.
    pub fn write_through<R>(
        &self,
        key: K,
        value: V,
        write: impl FnOnce() -> StoreResult<R>,
    ) -> StoreResult<R> {
        let mut entries = self.entries.write();
        match write() {
            Ok(r) => {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(key, value);
                Ok(r)
            }
            Err(e) => {
                entries.remove(&key);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn reads_see_the_last_write_and_a_failed_write_is_forgotten() {
        let cache: Cache<u64, Option<&str>> = Cache::default();
        let mut loads = 0;
        let mut load = |v| {
            loads += 1;
            Ok(v)
        };
        assert_eq!(cache.get_or_load(1, || load(None)).unwrap(), None);
        // Cached, missing values included: the store is not asked again.
        assert_eq!(cache.get_or_load(1, || load(Some("x"))).unwrap(), None);
        cache.write_through(1, Some("a"), || Ok(())).unwrap();
        assert_eq!(cache.get_or_load(1, || load(None)).unwrap(), Some("a"));
        let failed = cache.write_through(1, Some("b"), || -> StoreResult<()> {
            Err(StoreError::Missing("project"))
        });
        assert!(failed.is_err());
        // After a failed write the store decides again.
        assert_eq!(cache.get_or_load(1, || load(Some("a"))).unwrap(), Some("a"));
        assert_eq!(loads, 2);
    }
}
