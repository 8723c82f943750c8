use std::collections::HashMap;

/// The documents a role keeps in memory, keyed by doc id. Beyond its
/// capacity it evicts the least recently used (a quarter of the capacity at
/// a time, so eviction stays rare); an evicted document is simply rebuilt
/// from store and log the next time it is needed.
#[derive(Debug)]
pub struct DocCache<V> {
    map: HashMap<String, (V, u64)>,
    tick: u64,
    capacity: usize,
}

impl<V> DocCache<V> {
    pub fn new(capacity: usize) -> Self {
        DocCache {
            map: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, doc: &str) -> bool {
        self.map.contains_key(doc)
    }

    /// The document, marked as just used.
    pub fn get_mut(&mut self, doc: &str) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(doc).map(|(v, used)| {
            *used = tick;
            v
        })
    }

    /// The document without marking it used (for the log consumers, which
    /// touch every loaded document and would otherwise keep them all hot).
    pub fn peek_mut(&mut self, doc: &str) -> Option<&mut V> {
        self.map.get_mut(doc).map(|(v, _)| v)
    }

    /// Inserts, first evicting least recently used entries that `keep`
    /// does not protect if the cache is full. Returns how many went.
    pub fn insert(&mut self, doc: String, value: V, keep: impl Fn(&str, &V) -> bool) -> usize {
        let mut evicted = 0;
        if self.map.len() >= self.capacity {
            let target = self.capacity - self.capacity / 4;
            let mut idle: Vec<(u64, String)> = self
                .map
                .iter()
                .filter(|(k, (v, _))| !keep(k, v))
                .map(|(k, (_, used))| (*used, k.clone()))
                .collect();
            idle.sort_unstable();
            let excess = (self.map.len() + 1).saturating_sub(target);
            for (_, k) in idle.into_iter().take(excess) {
                self.map.remove(&k);
                evicted += 1;
            }
        }
        self.tick += 1;
        self.map.insert(doc, (value, self.tick));
        evicted
    }

    pub fn remove(&mut self, doc: &str) -> Option<V> {
        self.map.remove(doc).map(|(v, _)| v)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (String, V)> + '_ {
        self.map.drain().map(|(k, (v, _))| (k, v))
    }

    /// Every document, without marking any used.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut().map(|(v, _)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_unless_kept() {
        let mut c = DocCache::new(4);
        for i in 0..4 {
            c.insert(format!("d{i}"), i, |_, _| false);
        }
        c.get_mut("d0"); // d0 is now the most recent
                         // Full: inserting evicts down to 3/4 of the capacity, oldest first,
                         // never the ones `keep` protects (here d1).
        let gone = c.insert("d4".into(), 4, |_, v| *v == 1);
        assert_eq!(gone, 2);
        let mut left: Vec<_> = c.iter().map(|(k, _)| k.clone()).collect();
        left.sort();
        assert_eq!(left, ["d0", "d1", "d4"]);
    }
}
