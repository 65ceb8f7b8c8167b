//! The state codec: the one place that knows how state values become bytes.
//!
//! Owns: the choice of serde format ([`Codec`]) and the encode/decode calls.
//! bincode 2.0.1 is the default (pinned with `=`: bincode 3.0.0 is a tombstone
//! release) and postcard is the alternative measured in `BENCHMARKS.md`.
//! Does not own the file framing (magic bytes, version, checksum): that is
//! [`crate::storage::frame`], which records the codec id in every header so a
//! checkpoint written with one codec stays readable after the default changes.

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};

/// A serde format for state. The numeric id is stored in every snapshot
/// header; never reuse an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// bincode 2.0.1 with its `standard` configuration (varint integers).
    #[default]
    Bincode,
    /// postcard 1.x.
    Postcard,
}

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode {what} with {codec:?}: {message}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The codec in use.
        codec: Codec,
        /// The codec's own message.
        message: String,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {what} with {codec:?}: {message}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The codec in use.
        codec: Codec,
        /// The codec's own message.
        message: String,
    },
    /// The header names a codec this build does not know.
    #[error("unknown codec id {0}; this checkpoint was written by a newer version of exactly")]
    UnknownId(u8),
}

impl Codec {
    /// The id stored in snapshot headers.
    pub const fn id(self) -> u8 {
        match self {
            Codec::Bincode => 1,
            Codec::Postcard => 2,
        }
    }

    /// The codec with the given header id.
    pub fn from_id(id: u8) -> Result<Self, CodecError> {
        match id {
            1 => Ok(Codec::Bincode),
            2 => Ok(Codec::Postcard),
            other => Err(CodecError::UnknownId(other)),
        }
    }

    /// Encodes `value`; `what` names it in errors.
    pub fn encode<T: Serialize + ?Sized>(
        self,
        value: &T,
        what: &str,
    ) -> Result<Vec<u8>, CodecError> {
        let result = match self {
            Codec::Bincode => bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| e.to_string()),
            Codec::Postcard => postcard::to_allocvec(value).map_err(|e| e.to_string()),
        };
        result.map_err(|message| CodecError::Encode {
            what: what.to_owned(),
            codec: self,
            message,
        })
    }

    /// Appends the encoding of `value` to `out`; `what` names it in errors.
    /// A run of values appended this way is read back, one by one, with
    /// [`Codec::decode_prefix`].
    pub(crate) fn encode_append<T: Serialize + ?Sized>(
        self,
        value: &T,
        out: &mut Vec<u8>,
        what: &str,
    ) -> Result<(), CodecError> {
        let result = match self {
            Codec::Bincode => {
                bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Codec::Postcard => postcard::to_extend(value, std::mem::take(out))
                .map(|extended| *out = extended)
                .map_err(|e| e.to_string()),
        };
        result.map_err(|message| CodecError::Encode {
            what: what.to_owned(),
            codec: self,
            message,
        })
    }

    /// Decodes a `T` that must use all of `bytes`; `what` names it in errors.
    /// The value may borrow from `bytes`.
    pub fn decode<'de, T: Deserialize<'de>>(
        self,
        bytes: &'de [u8],
        what: &str,
    ) -> Result<T, CodecError> {
        let (value, used) = self.decode_prefix(bytes, what)?;
        if used == bytes.len() {
            Ok(value)
        } else {
            Err(CodecError::Decode {
                what: what.to_owned(),
                codec: self,
                message: format!("{} trailing bytes after the value", bytes.len() - used),
            })
        }
    }

    /// Decodes the `T` at the start of `bytes` and returns it with the
    /// number of bytes it used; `what` names it in errors. The value may
    /// borrow from `bytes`.
    pub(crate) fn decode_prefix<'de, T: Deserialize<'de>>(
        self,
        bytes: &'de [u8],
        what: &str,
    ) -> Result<(T, usize), CodecError> {
        self.decode_seed(std::marker::PhantomData::<T>, bytes, what)
    }

    /// Decodes the value at the start of `bytes` through `seed` and returns
    /// it with the number of bytes it used; `what` names it in errors.
    pub(crate) fn decode_seed<'de, T: DeserializeSeed<'de>>(
        self,
        seed: T,
        bytes: &'de [u8],
        what: &str,
    ) -> Result<(T::Value, usize), CodecError> {
        let result = match self {
            Codec::Bincode => {
                bincode::serde::seed_decode_from_slice(seed, bytes, bincode::config::standard())
                    .map_err(|e| e.to_string())
            }
            Codec::Postcard => {
                let mut deserializer = postcard::Deserializer::from_bytes(bytes);
                seed.deserialize(&mut deserializer)
                    .and_then(|value| {
                        let rest = deserializer.finalize()?;
                        Ok((value, bytes.len() - rest.len()))
                    })
                    .map_err(|e| e.to_string())
            }
        };
        result.map_err(|message| CodecError::Decode {
            what: what.to_owned(),
            codec: self,
            message,
        })
    }
}

/// An opaque byte string inside an encoded value, such as one element's
/// state in a task's snapshot. It is written as a length and the raw bytes,
/// which for both codecs is the same encoding as a `Vec<u8>` (a sequence
/// of single-byte `u8`s), so files written with `Vec<u8>` read back
/// unchanged; but it is encoded and decoded as one block rather than byte
/// by byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn both_codecs_round_trip_a_map() {
        let mut map = HashMap::new();
        map.insert("word".to_string(), (3u64, vec![1i32, -2]));
        for codec in [Codec::Bincode, Codec::Postcard] {
            let bytes = codec.encode(&map, "map").unwrap();
            let back: HashMap<String, (u64, Vec<i32>)> = codec.decode(&bytes, "map").unwrap();
            assert_eq!(back, map, "{codec:?}");
        }
    }

    #[test]
    fn ids_round_trip_and_unknown_ids_are_rejected() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            assert_eq!(Codec::from_id(codec.id()).unwrap(), codec);
        }
        assert!(matches!(Codec::from_id(9), Err(CodecError::UnknownId(9))));
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let err = codec
                .decode::<Vec<String>>(&[0xff, 0xff, 0xff, 0xff, 0x0f], "list")
                .unwrap_err();
            assert!(err.to_string().contains("cannot decode list"), "{err}");
            let bytes = codec.encode(&(1u32, 2u32), "pair").unwrap();
            let err = codec.decode::<u32>(&bytes, "one").unwrap_err();
            assert!(err.to_string().contains("one"), "{err}");
        }
    }

    #[test]
    fn bytes_are_encoded_as_a_vec_of_u8_is() {
        let raw: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let entries = vec![("1:count".to_string(), raw.clone())];
        let wrapped = vec![("1:count".to_string(), Bytes(raw))];
        for codec in [Codec::Bincode, Codec::Postcard] {
            let old = codec.encode(&entries, "entries").unwrap();
            assert_eq!(codec.encode(&wrapped, "entries").unwrap(), old, "{codec:?}");
            let back: Vec<(String, Bytes)> = codec.decode(&old, "entries").unwrap();
            assert_eq!(back, wrapped, "{codec:?}");
        }
    }

    /// Checkpoint loading decodes the element list borrowed, so that each
    /// element's state stays a slice of the file's buffer.
    #[test]
    fn an_element_list_decodes_borrowed_from_the_buffer() {
        let entries = vec![
            ("1:count".to_string(), Bytes(vec![7; 300])),
            ("source".to_string(), Bytes(Vec::new())),
        ];
        for codec in [Codec::Bincode, Codec::Postcard] {
            let buffer = codec.encode(&entries, "entries").unwrap();
            let back: Vec<(String, &[u8])> = codec.decode(&buffer, "entries").unwrap();
            let expected: Vec<(String, &[u8])> = entries
                .iter()
                .map(|(id, b)| (id.clone(), &b.0[..]))
                .collect();
            assert_eq!(back, expected, "{codec:?}");
            let within = buffer.as_ptr_range();
            assert!(
                within.contains(&back[0].1.as_ptr()),
                "{codec:?} copied the bytes"
            );
        }
    }

    #[test]
    fn appended_values_decode_one_by_one() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let mut out = b"head".to_vec();
            for value in [(1u64, "a".to_string()), (300, "bc".into())] {
                codec.encode_append(&value, &mut out, "pair").unwrap();
            }
            let (first, used): ((u64, String), usize) =
                codec.decode_prefix(&out[4..], "pair").unwrap();
            assert_eq!(first, (1, "a".into()), "{codec:?}");
            let second: (u64, String) = codec.decode(&out[4 + used..], "pair").unwrap();
            assert_eq!(second, (300, "bc".into()), "{codec:?}");
        }
    }
}
