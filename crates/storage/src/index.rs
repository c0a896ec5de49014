//! The shared, size-bounded cache of sealed segments' indexes and open file handles
//! (least recently used entry evicted), so memory and file descriptors stay bounded.

use std::collections::HashMap;
use std::sync::Arc;

use crate::segment::SealedHandle;

/// Key: (log id, segment base offset).
type Key = (u64, u64);

pub(crate) struct IndexCache {
    cap: usize,
    tick: u64,
    map: HashMap<Key, (Arc<SealedHandle>, u64)>,
}

impl IndexCache {
    pub fn new(cap: usize) -> Self {
        assert!(cap > 0, "index cache capacity validated by config");
        IndexCache {
            cap,
            tick: 0,
            map: HashMap::new(),
        }
    }

    pub fn get(&mut self, key: Key) -> Option<Arc<SealedHandle>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(&key).map(|(h, used)| {
            *used = t;
            h.clone()
        })
    }

    pub fn insert(&mut self, key: Key, h: Arc<SealedHandle>) {
        self.tick += 1;
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            // O(cap) eviction: caches are small and misses do disk I/O anyway.
            if let Some(victim) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                self.map.remove(&victim);
            }
        }
        self.map.insert(key, (h, self.tick));
        assert!(self.map.len() <= self.cap, "index cache over capacity");
    }

    pub fn remove(&mut self, key: Key) {
        self.map.remove(&key);
    }

    pub fn remove_log(&mut self, log_id: u64) {
        self.map.retain(|k, _| k.0 != log_id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::SegMeta;
    use crate::vfs::{StdVfs, Vfs};

    #[test]
    fn evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = StdVfs.open(&dir.path().join("x"), true).unwrap();
        let h = |b| {
            Arc::new(SealedHandle {
                file: f.clone(),
                entries: vec![],
                meta: SegMeta {
                    base: b,
                    end: b,
                    size: 16,
                    max_ts: 0,
                },
            })
        };
        let mut c = IndexCache::new(2);
        c.insert((1, 0), h(0));
        c.insert((1, 10), h(10));
        assert!(c.get((1, 0)).is_some());
        c.insert((1, 20), h(20));
        assert!(c.get((1, 10)).is_none(), "LRU evicted");
        assert!(c.get((1, 0)).is_some());
        assert_eq!(c.len(), 2);
        c.remove_log(1);
        assert_eq!(c.len(), 0);
    }
}
