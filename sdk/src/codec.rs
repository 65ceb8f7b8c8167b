//! The state codec: the one place that knows how state values become bytes.
//!
//! Owns: the choice of serde format ([`Codec`]) and the encode/decode calls.
//! bincode 2.0.1 is the default (pinned with `=`: bincode 3.0.0 is a tombstone
//! release) and postcard is the alternative measured in `BENCHMARKS.md`.
//! Does not own the file framing (magic bytes, version, checksum): that is
//! [`crate::storage::frame`], which records the codec id in every header so a
//! checkpoint written with one codec stays readable after the default changes.

use serde::Serialize;
use serde::de::DeserializeOwned;

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

    /// Decodes a `T` that must use all of `bytes`; `what` names it in errors.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8], what: &str) -> Result<T, CodecError> {
        let result = match self {
            Codec::Bincode => {
                bincode::serde::decode_from_slice::<T, _>(bytes, bincode::config::standard())
                    .map_err(|e| e.to_string())
                    .and_then(|(value, used)| {
                        if used == bytes.len() {
                            Ok(value)
                        } else {
                            Err(format!(
                                "{} trailing bytes after the value",
                                bytes.len() - used
                            ))
                        }
                    })
            }
            Codec::Postcard => postcard::take_from_bytes::<T>(bytes)
                .map_err(|e| e.to_string())
                .and_then(|(value, rest)| {
                    if rest.is_empty() {
                        Ok(value)
                    } else {
                        Err(format!("{} trailing bytes after the value", rest.len()))
                    }
                }),
        };
        result.map_err(|message| CodecError::Decode {
            what: what.to_owned(),
            codec: self,
            message,
        })
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
}
