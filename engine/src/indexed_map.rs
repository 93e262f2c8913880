//! An ordered map with a hash index beside it, for the in-memory backends
//! (the metadata store's tables, the in-memory object store, the simulated
//! disk's namespace).
//!
//! Found in a B-tree alone, a key is compared with a stored key at every
//! step down, each a cache miss once the map outgrows the cache: a GC pass
//! reads one object and one reference row per manifest, and nearly every
//! simulated disk operation starts by looking a path up. The hash answers
//! point reads in one slot; the B-tree keeps serving scans and listings in
//! key order. Only the B-tree is ever iterated, so iteration order stays
//! deterministic (the simulator's final-state hashes depend on it).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, btree_map};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::RangeBounds;

/// Both maps hold every entry; keys and values are cloned into both, so
/// they should be cheap to clone (shared pointers, small copies).
#[derive(Debug, Clone)]
pub(crate) struct IndexedMap<K, V> {
    ordered: BTreeMap<K, V>,
    hashed: HashMap<K, V, BuildHasherDefault<WordHasher>>,
}

/// The hash of the point-read index: a multiply-rotate over 8-byte words
/// (the `FxHasher` of rustc). SipHash, the default, spent more time
/// hashing a simulated disk's path than the lookup took. Not keyed, so
/// chosen keys can collide on purpose: fine for the in-memory backends of
/// the lab and the simulator, whose keys the store itself builds; a
/// backend serving untrusted keys at scale would want the default.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WordHasher(u64);

impl WordHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<K, V> Default for IndexedMap<K, V> {
    fn default() -> Self {
        IndexedMap {
            ordered: BTreeMap::new(),
            hashed: HashMap::default(),
        }
    }
}

impl<K: Ord + Hash + Clone, V: Clone> IndexedMap<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.hashed.get(key)
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.hashed.contains_key(key)
    }

    /// The value `key` had before, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.ordered.insert(key.clone(), value.clone());
        self.hashed.insert(key, value)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        self.ordered.remove(key);
        self.hashed.remove(key)
    }

    /// Entries with keys in `range`, in key order.
    pub(crate) fn range<Q, R>(&self, range: R) -> btree_map::Range<'_, K, V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        self.ordered.range(range)
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> btree_map::Iter<'_, K, V> {
        self.ordered.iter()
    }
}

impl<K: Ord + Hash + Clone, V: Clone> FromIterator<(K, V)> for IndexedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = IndexedMap::default();
        for (k, v) in entries {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;

    /// Point reads (the hash) and ordered reads (the B-tree) see the same
    /// entries after any mix of inserts, overwrites and removals.
    #[test]
    fn the_hash_and_the_order_agree() {
        let mut map = IndexedMap::default();
        let mut model = BTreeMap::new();
        let mut x: u64 = 7;
        for _ in 0..2_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 300);
            if (x >> 20).is_multiple_of(4) {
                assert_eq!(map.remove(key.as_str()), model.remove(&key));
            } else {
                assert_eq!(map.insert(key.clone(), x), model.insert(key, x));
            }
        }
        assert!(map.iter().eq(model.iter()));
        assert!(
            map.range::<str, _>((Bound::Included("k1"), Bound::Excluded("k2")))
                .eq(model.range::<str, _>((Bound::Included("k1"), Bound::Excluded("k2"))))
        );
        for i in 0..300 {
            let key = format!("k{i}");
            assert_eq!(map.get(key.as_str()), model.get(&key));
            assert_eq!(map.contains_key(key.as_str()), model.contains_key(&key));
        }
    }
}
