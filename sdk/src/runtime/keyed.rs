//! Keyed state: the map an operator after `key_by` keeps, its layout in a
//! snapshot, and its restore.
//!
//! Owns: [`KeyedState`] (one state value per key, hashed with
//! [`StateHasher`], with the snapshot epoch in which each key last
//! changed), [`encode`] (of every key, a base, or of the changed ones, a
//! delta) and [`restore`] (of a base and the deltas after it). Does not own where the map
//! lives and how records reach it ([`super::chain`]), the codec
//! ([`crate::codec`]) or the file frame ([`crate::storage::frame`]).
//!
//! Layout of one map, or one segment of it, in a snapshot (frame format
//! version 2 and later; a delta has the same layout with fewer entries):
//!
//! ```text
//! offset  size  field
//! 0       8     SipHash key k0 of the map's hasher, little endian
//! 8       8     SipHash key k1, little endian
//! 16      8     entry count n, little endian
//! 24      ...   n entries (key, state), each encoded with the file's codec,
//!               in the map's iteration order
//! ```
//!
//! A map iterates in bucket order, and the restore rebuilds it with the
//! recorded hasher keys and room for every entry up front, so the entries
//! arrive in the order of the new map's buckets: it is filled front to back
//! with no growth and no rehash. Format version 1 wrote the map as a serde
//! map (entry count as a codec integer, then the entries) and recorded no
//! hasher keys; it is still read, with new random keys.
//!
//! A restore with unchanged parallelism reads only the subtask's own old
//! map: its keys are the ones the routing sent to that subtask. The first
//! [`ROUTING_SAMPLE`] keys are checked against this build's routing; if one
//! disagrees (a build whose key hash differs), every old map is read and
//! filtered key by key, as a restore after a change of parallelism always
//! does.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;

use serde::de::{DeserializeOwned, DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::state_hasher::StateHasher;
use crate::codec::{Codec, CodecError};

/// One key's state, and the snapshot epoch in which it last changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Slot<S> {
    /// The operator's `#[state]`.
    pub(crate) state: S,
    /// The epoch (`runtime::incremental`) in which a record of the key was
    /// last processed; 0 for a key restored and not changed since.
    pub(crate) changed_in: u64,
}

impl<S> Slot<S> {
    /// A slot restored from a snapshot: not changed since.
    pub(crate) fn restored(state: S) -> Self {
        Slot {
            state,
            changed_in: 0,
        }
    }
}

/// One state value per key.
pub(crate) type KeyedState<K, S> = HashMap<K, Slot<S>, StateHasher>;

/// Which entries of a map a segment holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Selection<'a, K> {
    /// Every key: a full snapshot, or the base of an incremental chain.
    All,
    /// The keys changed in this epoch, found by a pass over the map.
    ChangedIn(u64),
    /// These keys, each in the map: the changed keys, found by lookups,
    /// which beats a pass over the map when few changed.
    Keys(&'a [K]),
}

/// Size of the header in front of a map's entries (format version 2).
const HEADER_LEN: usize = 24;

/// How many keys of a subtask's own old map are checked against the
/// routing before the rest is trusted.
pub(crate) const ROUTING_SAMPLE: usize = 64;

/// Encodes the entries of `states` that `selection` selects in the version
/// 2 layout; `id` names it in errors.
pub(crate) fn encode<K: Hash + Eq + Serialize, S: Serialize>(
    states: &KeyedState<K, S>,
    selection: Selection<'_, K>,
    codec: Codec,
    id: &str,
) -> Result<Vec<u8>, CodecError> {
    let (k0, k1) = states.hasher().keys();
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&k0.to_le_bytes());
    out.extend_from_slice(&k1.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    let entries = Selected {
        states,
        selection,
        written: Cell::new(0),
    };
    codec.encode_append(&entries, &mut out, id)?;
    out[16..HEADER_LEN].copy_from_slice(&entries.written.get().to_le_bytes());
    Ok(out)
}

/// The selected entries of a map (all in iteration order, the changed
/// ones in iteration order, or listed keys in list order), serialized as a
/// tuple: for both codecs, the entries one after another with no count in
/// front. Counts what it wrote, for the header.
struct Selected<'a, K, S> {
    states: &'a KeyedState<K, S>,
    selection: Selection<'a, K>,
    written: Cell<u64>,
}

impl<K: Hash + Eq + Serialize, S: Serialize> Serialize for Selected<'_, K, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        // Neither codec writes a tuple's length, so the hint may exceed
        // what is written.
        let mut tuple = serializer.serialize_tuple(self.states.len())?;
        let mut written = 0;
        match self.selection {
            Selection::All | Selection::ChangedIn(_) => {
                for (key, slot) in self.states {
                    if let Selection::ChangedIn(epoch) = self.selection
                        && slot.changed_in != epoch
                    {
                        continue;
                    }
                    tuple.serialize_element(&(key, &slot.state))?;
                    written += 1;
                }
            }
            Selection::Keys(keys) => {
                for key in keys {
                    if let Some((key, slot)) = self.states.get_key_value(key) {
                        tuple.serialize_element(&(key, &slot.state))?;
                        written += 1;
                    }
                }
            }
        }
        self.written.set(written);
        tuple.end()
    }
}

/// Decodes `count` entries (a tuple, as [`InIterationOrder`] writes them)
/// straight into `map`, keeping the keys `keep` accepts. With `checked`
/// set, stops at the first of the first [`ROUTING_SAMPLE`] keys that
/// `checked` rejects and yields `false`; keys after the sample are kept
/// unchecked.
struct Fill<'m, K, S> {
    map: &'m mut KeyedState<K, S>,
    count: u64,
    keep: &'m dyn Fn(&K) -> bool,
    checked: Option<&'m dyn Fn(&K) -> bool>,
}

impl<'de, K, S> DeserializeSeed<'de> for Fill<'_, K, S>
where
    K: Hash + Eq + Deserialize<'de>,
    S: Deserialize<'de>,
{
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let len = usize::try_from(self.count)
            .map_err(|_| D::Error::custom("the entry count does not fit in memory"))?;
        deserializer.deserialize_tuple(len, self)
    }
}

impl<'de, K, S> Visitor<'de> for Fill<'_, K, S>
where
    K: Hash + Eq + Deserialize<'de>,
    S: Deserialize<'de>,
{
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} keyed state entries", self.count)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        for i in 0..self.count {
            let entry = seq
                .next_element::<(K, S)>()
                .map_err(|e| A::Error::custom(format_args!("entry {i} of {}: {e}", self.count)))?;
            let Some((key, state)) = entry else {
                return Err(A::Error::invalid_length(i as usize, &self));
            };
            if let Some(check) = self.checked
                && (i as usize) < ROUTING_SAMPLE
                && !check(&key)
            {
                return Ok(false);
            }
            if (self.keep)(&key) {
                self.map.insert(key, Slot::restored(state));
            }
        }
        Ok(true)
    }
}

/// The map encoded in `segments` (version 2 layout: a base, then deltas)
/// as format version 1 wrote it: a serde map, which for both codecs is the
/// entry count as a codec integer followed by the entries. The deltas'
/// entries follow the base's, so a key a delta changed appears twice and
/// the later entry wins, as in a restore of the chain. For tests and
/// benches of the restore of old checkpoints.
pub(crate) fn as_format_1(
    segments: &[&[u8]],
    codec: Codec,
    id: &str,
) -> Result<Vec<u8>, CodecError> {
    let mut count = 0u64;
    let mut entries = Vec::new();
    for bytes in segments {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(CodecError::Decode {
                what: id.to_owned(),
                codec,
                message: format!(
                    "keyed state is {} bytes, shorter than its header",
                    bytes.len()
                ),
            });
        };
        count += u64::from_le_bytes(header[16..].try_into().expect("8-byte field"));
        entries.extend_from_slice(rest);
    }
    let mut out = codec.encode(&count, id)?;
    out.extend_from_slice(&entries);
    Ok(out)
}

/// One old subtask's snapshot of a map, as read from a checkpoint.
#[derive(Debug)]
pub(crate) struct StoredMap<'a> {
    /// The old subtask.
    pub(crate) subtask: usize,
    /// The codec of its file.
    pub(crate) codec: Codec,
    /// The frame format version of its file.
    pub(crate) version: u16,
    /// The map's bytes.
    pub(crate) bytes: &'a [u8],
    /// Names the map in errors.
    pub(crate) what: String,
}

/// A [`StoredMap`] with its header read.
struct Entries<'a> {
    codec: Codec,
    keys: Option<(u64, u64)>,
    count: u64,
    bytes: &'a [u8],
    what: &'a str,
}

impl<'a> Entries<'a> {
    fn read(stored: &'a StoredMap<'a>) -> Result<Self, CodecError> {
        let corrupt = |message: String| CodecError::Decode {
            what: stored.what.clone(),
            codec: stored.codec,
            message,
        };
        let (keys, count, bytes) = if stored.version == 1 {
            let (count, used): (u64, usize) =
                stored.codec.decode_prefix(stored.bytes, &stored.what)?;
            (None, count, &stored.bytes[used..])
        } else {
            let Some((header, rest)) = stored.bytes.split_first_chunk::<HEADER_LEN>() else {
                return Err(corrupt(format!(
                    "keyed state is {} bytes, shorter than its {HEADER_LEN}-byte header",
                    stored.bytes.len()
                )));
            };
            let field = |i: usize| {
                u64::from_le_bytes(header[8 * i..8 * i + 8].try_into().expect("8-byte field"))
            };
            (Some((field(0), field(1))), field(2), rest)
        };
        // Every entry takes at least one byte, except the one entry a map
        // with a zero-sized key and state can hold.
        if count > (bytes.len() as u64).max(1) {
            return Err(corrupt(format!(
                "announces {count} entries in {} bytes",
                bytes.len()
            )));
        }
        Ok(Entries {
            codec: stored.codec,
            keys,
            count,
            bytes,
            what: &stored.what,
        })
    }

    /// Decodes every entry into `map`, keeping the keys `keep` accepts;
    /// see [`Fill`] for `checked` and the result.
    fn insert_into<K, S>(
        &self,
        map: &mut KeyedState<K, S>,
        keep: &dyn Fn(&K) -> bool,
        checked: Option<&dyn Fn(&K) -> bool>,
    ) -> Result<bool, CodecError>
    where
        K: Hash + Eq + DeserializeOwned,
        S: DeserializeOwned,
    {
        let fill = Fill {
            map,
            count: self.count,
            keep,
            checked,
        };
        let (complete, used) = self.codec.decode_seed(fill, self.bytes, self.what)?;
        if complete && used != self.bytes.len() {
            return Err(CodecError::Decode {
                what: self.what.to_owned(),
                codec: self.codec,
                message: format!(
                    "{} trailing bytes after {} entries",
                    self.bytes.len() - used,
                    self.count
                ),
            });
        }
        Ok(complete)
    }
}

/// The subtask a map is restored for.
pub(crate) struct Owner<R> {
    /// The new parallelism.
    pub(crate) parallelism: usize,
    /// The subtask's index.
    pub(crate) index: usize,
    /// The subtask this build routes a key to.
    pub(crate) route: R,
}

/// Rebuilds the map of subtask `owner.index` from the maps of every old
/// subtask (`old_parallelism` of them; `stored` lists the segments of those
/// that had one, in subtask order and each subtask's oldest first: its base,
/// then deltas whose entries replace the base's).
pub(crate) fn restore<K, S, R>(
    stored: &[StoredMap<'_>],
    old_parallelism: usize,
    owner: &Owner<R>,
) -> Result<KeyedState<K, S>, CodecError>
where
    K: Hash + Eq + DeserializeOwned,
    S: DeserializeOwned,
    R: Fn(&K) -> usize,
{
    let own = stored
        .iter()
        .filter(|s| s.subtask == owner.index)
        .map(Entries::read)
        .collect::<Result<Vec<_>, _>>()?;
    let own_keys = own.first().and_then(|base| base.keys);
    let ours = |key: &K| (owner.route)(key) == owner.index;
    let everything = |_: &K| true;

    if old_parallelism == owner.parallelism
        && let Some((base, deltas)) = own.split_first()
    {
        let hasher = own_keys.map_or_else(StateHasher::default, |(k0, k1)| {
            StateHasher::with_keys(k0, k1)
        });
        let mut map = HashMap::with_capacity_and_hasher(base.count as usize, hasher);
        let check: Option<&dyn Fn(&K) -> bool> = (owner.parallelism > 1).then_some(&ours);
        if base.insert_into(&mut map, &everything, check)? {
            for delta in deltas {
                delta.insert_into(&mut map, &everything, None)?;
            }
            return Ok(map);
        }
        tracing::warn!(
            state = base.what,
            "keys of a subtask's own state are routed elsewhere by this build (its key hash differs from the build that wrote the checkpoint); re-partitioning every key"
        );
    }

    let parts = stored
        .iter()
        .map(Entries::read)
        .collect::<Result<Vec<_>, _>>()?;
    let hasher = own_keys
        .or_else(|| parts.iter().find_map(|p| p.keys))
        .map_or_else(StateHasher::default, |(k0, k1)| {
            StateHasher::with_keys(k0, k1)
        });
    let total: u64 = parts.iter().map(|p| p.count).sum();
    let expected = total.div_ceil(owner.parallelism.max(1) as u64);
    let mut map = HashMap::with_capacity_and_hasher(expected as usize, hasher);
    let keep: &dyn Fn(&K) -> bool = if owner.parallelism > 1 {
        &ours
    } else {
        &everything
    };
    for part in &parts {
        part.insert_into(&mut map, keep, None)?;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of entries the segment `bytes` holds.
    fn entry_count(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes[16..HEADER_LEN].try_into().unwrap())
    }

    fn map(keys: std::ops::Range<u64>) -> KeyedState<u64, (String,)> {
        keys.map(|k| (k, Slot::restored((format!("v{k}"),))))
            .collect()
    }

    fn stored<'a>(subtask: usize, codec: Codec, version: u16, bytes: &'a [u8]) -> StoredMap<'a> {
        StoredMap {
            subtask,
            codec,
            version,
            bytes,
            what: format!("state `1:count` of subtask {subtask}"),
        }
    }

    fn owner(parallelism: usize, index: usize) -> Owner<impl Fn(&u64) -> usize> {
        Owner {
            parallelism,
            index,
            route: move |k: &u64| (*k % parallelism as u64) as usize,
        }
    }

    #[test]
    fn a_map_round_trips_with_its_hasher_keys() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let original = map(0..5000);
            let bytes = encode(&original, Selection::All, codec, "1:count").unwrap();
            let back: KeyedState<u64, (String,)> =
                restore(&[stored(0, codec, 2, &bytes)], 1, &owner(1, 0)).unwrap();
            assert_eq!(back, original, "{codec:?}");
            assert_eq!(back.hasher(), original.hasher(), "{codec:?}");
        }
    }

    #[test]
    fn an_old_format_map_restores() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let original: HashMap<u64, (String,)> = map(0..3000)
                .into_iter()
                .map(|(k, slot)| (k, slot.state))
                .collect();
            // What format version 1 wrote: the map through serde.
            let bytes = codec.encode(&original, "1:count").unwrap();
            let back: KeyedState<u64, (String,)> =
                restore(&[stored(0, codec, 1, &bytes)], 1, &owner(1, 0)).unwrap();
            let states = back.into_iter().map(|(k, slot)| (k, slot.state));
            assert_eq!(states.collect::<HashMap<_, _>>(), original);

            let base = encode(&map(0..3000), Selection::All, codec, "x").unwrap();
            let rewritten = as_format_1(&[&base], codec, "x");
            let through_serde: HashMap<u64, (String,)> =
                codec.decode(&rewritten.unwrap(), "x").unwrap();
            assert_eq!(through_serde, original);
        }
    }

    #[test]
    fn a_change_of_parallelism_repartitions_by_route() {
        let codec = Codec::Bincode;
        let old: Vec<Vec<u8>> = (0..3u64)
            .map(|s| {
                encode(
                    &map(0..90).into_iter().filter(|(k, _)| k % 3 == s).collect(),
                    Selection::All,
                    codec,
                    "x",
                )
                .unwrap()
            })
            .collect();
        let stored: Vec<_> = old
            .iter()
            .enumerate()
            .map(|(s, b)| stored(s, codec, 2, b))
            .collect();
        for index in 0..2 {
            let back: KeyedState<u64, (String,)> = restore(&stored, 3, &owner(2, index)).unwrap();
            let mut keys: Vec<u64> = back.into_keys().collect();
            keys.sort_unstable();
            let expected: Vec<u64> = (0..90).filter(|k| (k % 2) as usize == index).collect();
            assert_eq!(keys, expected);
        }
    }

    #[test]
    fn a_chain_restores_with_its_deltas_winning_at_any_parallelism() {
        let codec = Codec::Postcard;
        // Two old subtasks, each with a base and one delta that changes a
        // tenth of its keys and adds new ones.
        let chains: Vec<Vec<Vec<u8>>> = (0..2u64)
            .map(|s| {
                let mut states: KeyedState<u64, (String,)> = map(0..200)
                    .into_iter()
                    .filter(|(k, _)| k % 2 == s)
                    .collect();
                let base = encode(&states, Selection::All, codec, "x").unwrap();
                for k in (0..300).filter(|k| k % 2 == s && (*k >= 200 || k % 10 == s)) {
                    let slot = states.entry(k).or_default();
                    slot.state.0 = format!("new{k}");
                    slot.changed_in = 1;
                }
                // Subtask 0 finds the changed keys by a pass over the map,
                // subtask 1 by looking listed keys up.
                let listed: Vec<u64> = states
                    .iter()
                    .filter(|(_, slot)| slot.changed_in == 1)
                    .map(|(k, _)| *k)
                    .collect();
                let selection = match s {
                    0 => Selection::ChangedIn(1),
                    _ => Selection::Keys(&listed),
                };
                let delta = encode(&states, selection, codec, "x").unwrap();
                assert!(entry_count(&delta) < 100);
                vec![base, delta]
            })
            .collect();
        let stored: Vec<StoredMap<'_>> = chains
            .iter()
            .enumerate()
            .flat_map(|(s, chain)| chain.iter().map(move |b| stored(s, codec, 4, b)))
            .collect();
        let expected = |k: u64| {
            if k >= 200 || k % 10 == k % 2 {
                format!("new{k}")
            } else {
                format!("v{k}")
            }
        };
        for parallelism in [2, 3] {
            for index in 0..parallelism {
                let back: KeyedState<u64, (String,)> =
                    restore(&stored, 2, &owner(parallelism, index)).unwrap();
                let owned: Vec<u64> = (0..300)
                    .filter(|k| (k % parallelism as u64) as usize == index)
                    .collect();
                assert_eq!(back.len(), owned.len(), "{parallelism}/{index}");
                for k in owned {
                    assert_eq!(back[&k].state.0, expected(k), "key {k} at {parallelism}");
                }
            }
        }
    }

    #[test]
    fn unchanged_parallelism_reads_only_its_own_map_unless_routing_changed() {
        let codec = Codec::Bincode;
        let own = encode(
            &map(0..200)
                .into_iter()
                .filter(|(k, _)| k % 2 == 1)
                .collect(),
            Selection::All,
            codec,
            "x",
        )
        .unwrap();
        // Another subtask's map: a restore with unchanged routing never reads
        // it, so garbage there goes unnoticed.
        let stored_maps = [stored(0, codec, 2, b"garbage"), stored(1, codec, 2, &own)];
        let back: KeyedState<u64, (String,)> = restore(&stored_maps, 2, &owner(2, 1)).unwrap();
        assert_eq!(back.len(), 100);

        // A build that routes differently: the sample check fails and every
        // map is re-partitioned.
        let other = encode(
            &map(0..200)
                .into_iter()
                .filter(|(k, _)| k % 2 == 0)
                .collect(),
            Selection::All,
            codec,
            "x",
        )
        .unwrap();
        let stored_maps = [stored(0, codec, 2, &other), stored(1, codec, 2, &own)];
        let flipped = Owner {
            parallelism: 2,
            index: 1,
            route: |k: &u64| ((k + 1) % 2) as usize,
        };
        let back: KeyedState<u64, (String,)> = restore(&stored_maps, 2, &flipped).unwrap();
        assert_eq!(back.len(), 100);
        assert!(back.keys().all(|k| k % 2 == 0));
    }

    #[test]
    fn corrupt_maps_are_errors_not_panics() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let good = encode(&map(0..100), Selection::All, codec, "x").unwrap();
            let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|cut| good[..cut].to_vec()).collect();
            let mut huge = good.clone();
            huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
            cases.push(huge);
            let mut appended = good.clone();
            appended.push(0);
            cases.push(appended);
            for bad in &cases {
                let err =
                    restore::<u64, (String,), _>(&[stored(0, codec, 2, bad)], 1, &owner(1, 0))
                        .unwrap_err();
                assert!(
                    err.to_string().contains("state `1:count` of subtask 0"),
                    "{err}"
                );
            }
        }
    }
}
