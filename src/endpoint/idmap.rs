//! A fast hasher for maps keyed by [`ClientId`](crate::ClientId): one multiplication instead
//! of SipHash. Ids are picked by the server or signed into connect tokens by the backend, so
//! a peer cannot choose colliding ones; maps keyed by addresses keep SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A map keyed by client id.
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHash>;
/// A set of client ids.
pub(crate) type IdSet<K> = HashSet<K, IdHash>;

/// Builds [`IdHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// Multiplies each 64-bit word in (Fibonacci hashing), folding the high half down so that
/// both the bucket index (low bits) and the control byte (high bits) vary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientId;

    #[test]
    fn sequential_and_high_bit_ids_spread() {
        let mut m: IdMap<ClientId, u64> = IdMap::default();
        for i in 0..10_000u64 {
            m.insert(ClientId(i), i);
            m.insert(ClientId((1 << 63) | i), i);
        }
        assert_eq!(m.len(), 20_000);
        assert_eq!(m.get(&ClientId((1 << 63) | 77)), Some(&77));
        // Both halves of the hash vary with sequential ids.
        let h = |i: u64| IdHash.hash_one(ClientId(i));
        assert_ne!(h(1) & 0xFF, h(2) & 0xFF);
        assert_ne!(h(1) >> 57, h(2) >> 57);
    }
}
