//! The hasher of keyed state maps: SipHash-1-3, the algorithm of std's
//! `HashMap`, with keys that a snapshot records.
//!
//! Owns: [`StateHasher`] (the map's `BuildHasher`: random keys for a new
//! map, or the keys a snapshot recorded) and [`SipHasher13`]. Does not own
//! the maps or their snapshot layout: that is [`super::keyed`].
//!
//! Why not std's `RandomState`: its keys cannot be read or set. A map
//! iterates in the order of its buckets, which follows the hash, so a
//! snapshot written by iterating the map is in bucket order for the map's
//! keys. Rebuilt with the same keys, the restored map is filled from front
//! to back instead of at random places, which avoids most cache and TLB
//! misses (measured in `BENCHMARKS.md`). The algorithm stays SipHash-1-3,
//! keyed at random per new map, so a key chosen by an attacker cannot be
//! aimed at a bucket any more than with std's maps; the keys live in the
//! checkpoint files, which an attacker who can read them need not attack.

use std::hash::{BuildHasher, Hasher, RandomState};

/// Builds [`SipHasher13`]s with fixed keys: random for a new map, recorded
/// for a restored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateHasher {
    keys: (u64, u64),
}

impl StateHasher {
    /// A hasher with the given SipHash keys.
    pub(crate) fn with_keys(k0: u64, k1: u64) -> Self {
        StateHasher { keys: (k0, k1) }
    }

    /// The SipHash keys, to record in a snapshot.
    pub(crate) fn keys(&self) -> (u64, u64) {
        self.keys
    }
}

impl Default for StateHasher {
    /// Random keys, drawn from std's `RandomState` (seeded by the operating
    /// system once per thread, then varied per call).
    fn default() -> Self {
        StateHasher::with_keys(
            RandomState::new().hash_one(0u8),
            RandomState::new().hash_one(1u8),
        )
    }
}

impl BuildHasher for StateHasher {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.keys.0, self.keys.1)
    }
}

/// SipHash-1-3 (one compression round, three finalisation rounds), the
/// same function as std's `DefaultHasher`, with settable keys.
#[derive(Debug, Clone)]
pub(crate) struct SipHasher13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Bytes written since the last whole 8-byte word, little endian.
    tail: u64,
    ntail: usize,
    length: usize,
}

/// Reads up to eight bytes as a little-endian word.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

impl SipHasher13 {
    /// A hasher keyed with `k0` and `k1`.
    pub(crate) fn new_with_keys(k0: u64, k1: u64) -> Self {
        SipHasher13 {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
    }
}

impl Hasher for SipHasher13 {
    #[inline]
    fn write(&mut self, mut msg: &[u8]) {
        self.length += msg.len();
        if self.ntail != 0 {
            let needed = 8 - self.ntail;
            let fill = needed.min(msg.len());
            self.tail |= word(&msg[..fill]) << (8 * self.ntail);
            if fill < needed {
                self.ntail += fill;
                return;
            }
            self.compress(self.tail);
            msg = &msg[fill..];
        }
        let mut words = msg.chunks_exact(8);
        for w in &mut words {
            self.compress(word(w));
        }
        let rest = words.remainder();
        self.tail = word(rest);
        self.ntail = rest.len();
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut state = self.clone();
        let last = ((self.length as u64 & 0xff) << 56) | self.tail;
        state.compress(last);
        state.v2 ^= 0xff;
        state.round();
        state.round();
        state.round();
        state.v0 ^ state.v1 ^ state.v2 ^ state.v3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{DefaultHasher, Hash};

    /// std's `DefaultHasher::new()` is SipHash-1-3 with zero keys.
    fn std_hash<T: Hash + ?Sized>(value: &T) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    fn ours<T: Hash + ?Sized>(value: &T) -> u64 {
        StateHasher::with_keys(0, 0).hash_one(value)
    }

    #[test]
    fn matches_std_siphash_1_3_on_every_length_and_split() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for len in 0..40 {
            assert_eq!(ours(&bytes[..len]), std_hash(&bytes[..len]), "len {len}");
            for split in 0..len {
                let mut a = SipHasher13::new_with_keys(0, 0);
                a.write(&bytes[..split]);
                a.write(&bytes[split..len]);
                let mut b = DefaultHasher::new();
                b.write(&bytes[..split]);
                b.write(&bytes[split..len]);
                assert_eq!(a.finish(), b.finish(), "len {len} split {split}");
            }
        }
        for value in [0u64, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(ours(&value), std_hash(&value));
        }
        for text in ["", "a", "word", "a longer key of several words"] {
            assert_eq!(ours(text), std_hash(text));
            assert_eq!(ours(&(text, 7u32)), std_hash(&(text, 7u32)));
        }
    }

    #[test]
    fn keys_change_the_hash_and_new_hashers_get_different_keys() {
        let a = StateHasher::with_keys(1, 2);
        assert_eq!(a.keys(), (1, 2));
        assert_eq!(a.hash_one("k"), StateHasher::with_keys(1, 2).hash_one("k"));
        assert_ne!(a.hash_one("k"), StateHasher::with_keys(2, 1).hash_one("k"));
        assert_ne!(StateHasher::default(), StateHasher::default());
    }
}
