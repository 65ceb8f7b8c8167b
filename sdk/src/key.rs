//! Keys: what `key_by` may return, and which subtask owns a key.
//!
//! Owns: the public [`Key`] trait and the placement of a key on a subtask
//! (its hash, reduced modulo the parallelism), which the `key_by` exchange
//! and the restore of keyed state both follow so that state stays with its
//! key. Does not own the exchange that routes records
//! (`runtime::exchange`) or the keyed state map
//! (`runtime::keyed`).

use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A key: hashed to choose the subtask that owns it, and stored in
/// checkpoints with its state.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a key",
    label = "the key function returns this type",
    note = "keys must be `Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static`, such as `String`, integers or a `#[derive(Hash, Eq, PartialEq, Clone, Serialize, Deserialize)]` struct"
)]
pub trait Key: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<K: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Key for K {}

/// The subtask, of `parallelism`, that owns `key`.
///
/// The hasher has fixed keys, so the choice is the same in every subtask and
/// every attempt of one build. Restores recompute it, so state follows its
/// key even if the parallelism or the hasher changed.
pub(crate) fn key_subtask<K: Hash + ?Sized>(key: &K, parallelism: usize) -> usize {
    (key_hash(key) % parallelism as u64) as usize
}

/// The hash that places a key; [`key_subtask`] reduces it to a subtask.
pub(crate) fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_subtask_is_stable_and_in_range() {
        for p in 1..8 {
            for k in 0..100u32 {
                let s = key_subtask(&k, p);
                assert!(s < p);
                assert_eq!(s, key_subtask(&k, p));
            }
        }
    }
}
