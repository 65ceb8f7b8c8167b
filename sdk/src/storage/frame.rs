//! The snapshot file frame: a fixed header in front of every file that
//! checkpoint storage writes.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"EXACTLY\0"
//! 8       2     format version, little endian (currently 4)
//! 10      1     codec id (see crate::codec::Codec::id)
//! 11      1     payload kind (1 = task state, 2 = checkpoint metadata,
//!                 3 = keyed state segment)
//! 12      4     CRC-32 of the payload, little endian
//! 16      8     payload length in bytes, little endian
//! 24      ...   payload
//! ```
//!
//! Versions: 1 wrote keyed state maps as serde maps; 2 writes them in the
//! layout of `runtime::keyed` (hasher keys, entry count, entries in bucket
//! order), everything else unchanged; 3 adds the lineage to the checkpoint
//! metadata ([`super::CheckpointMetadata::lineage`]), task state unchanged;
//! 4 keeps keyed state incrementally, in segments that task states name
//! and the metadata lists ([`super::TaskStateHandle::shared`]). All four
//! are read.
//!
//! The version and codec id let a later release read checkpoints written by
//! this one; the length and checksum turn a truncated or corrupt file into an
//! error that names the file instead of a decoder panic or a wrong value.
//!
//! Owns: encoding and checking the frame. Does not own the payload's
//! encoding ([`crate::codec`]) or where the files go
//! ([`super::LocalStorage`]).

use super::StorageError;
use crate::codec::Codec;

/// The first eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"EXACTLY\0";
/// The format version this build writes.
pub const FORMAT_VERSION: u16 = 4;
/// The oldest format version this build reads.
pub const OLDEST_READABLE_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;

/// What a framed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// The state of one subtask.
    TaskState = 1,
    /// The metadata that marks a checkpoint complete.
    Metadata = 2,
    /// A base or delta of one subtask's keyed state, in a shared object.
    KeyedSegment = 3,
}

/// Frames `payload` (already encoded with `codec`).
pub fn encode(kind: PayloadKind, codec: Codec, payload: &[u8]) -> Vec<u8> {
    encode_version(FORMAT_VERSION, kind, codec, payload)
}

/// Frames `payload` with the header of format `version`: for tests and
/// benches that write what an older build wrote.
pub(crate) fn encode_version(
    version: u16,
    kind: PayloadKind,
    codec: Codec,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.push(codec.id());
    out.push(kind as u8);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A checked frame: what its header says, and the payload it vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The format version the file was written with.
    pub version: u16,
    /// The codec the payload was encoded with.
    pub codec: Codec,
    /// The payload.
    pub payload: &'a [u8],
}

/// Checks the frame of `bytes`, read from `file`, and returns it.
pub fn decode<'a>(
    bytes: &'a [u8],
    expected: PayloadKind,
    file: &dyn std::fmt::Display,
) -> Result<Frame<'a>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        file: file.to_string(),
        reason,
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte snapshot header (truncated?)",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(corrupt(
            "missing magic bytes: not a snapshot written by exactly".into(),
        ));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(corrupt(format!(
            "snapshot format version {version} is not supported by this build (it reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
        )));
    }
    let codec = Codec::from_id(bytes[10]).map_err(|e| corrupt(e.to_string()))?;
    if bytes[11] != expected as u8 {
        return Err(corrupt(format!(
            "holds payload kind {}, expected {:?}",
            bytes[11], expected
        )));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4-byte slice"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8-byte slice"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "header announces {len} payload bytes but the file has {} (truncated or appended to)",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt(
            "payload checksum mismatch (the file is corrupt)".into(),
        ));
    }
    Ok(Frame {
        version,
        codec,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static dyn std::fmt::Display {
        &"/ckpt/chk-0000000001/0-0.state"
    }

    #[test]
    fn round_trip_keeps_codec_and_payload() {
        let framed = encode(PayloadKind::TaskState, Codec::Postcard, b"hello");
        let frame = decode(&framed, PayloadKind::TaskState, path()).unwrap();
        assert_eq!(frame.version, FORMAT_VERSION);
        assert_eq!(frame.codec, Codec::Postcard);
        assert_eq!(frame.payload, b"hello");
    }

    #[test]
    fn every_truncation_is_a_named_error() {
        let framed = encode(PayloadKind::TaskState, Codec::Bincode, b"some state bytes");
        for cut in 0..framed.len() {
            let err = decode(&framed[..cut], PayloadKind::TaskState, path()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("chk-0000000001/0-0.state"), "{text}");
        }
    }

    #[test]
    fn flipped_bits_are_detected() {
        let framed = encode(PayloadKind::TaskState, Codec::Bincode, b"some state bytes");
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x40;
            assert!(
                decode(&bad, PayloadKind::TaskState, path()).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn wrong_kind_version_and_codec_are_reported() {
        let framed = encode(PayloadKind::Metadata, Codec::Bincode, b"x");
        let err = decode(&framed, PayloadKind::TaskState, path()).unwrap_err();
        assert!(err.to_string().contains("expected TaskState"), "{err}");

        let mut newer = framed.clone();
        newer[8] = 9;
        let err = decode(&newer, PayloadKind::Metadata, path()).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");
        newer[8] = 0;
        let err = decode(&newer, PayloadKind::Metadata, path()).unwrap_err();
        assert!(err.to_string().contains("format version 0"), "{err}");

        let older = encode_version(
            OLDEST_READABLE_VERSION,
            PayloadKind::Metadata,
            Codec::Bincode,
            b"x",
        );
        let frame = decode(&older, PayloadKind::Metadata, path()).unwrap();
        assert_eq!(frame.version, OLDEST_READABLE_VERSION);

        let mut unknown_codec = framed;
        unknown_codec[10] = 77;
        let err = decode(&unknown_codec, PayloadKind::Metadata, path()).unwrap_err();
        assert!(err.to_string().contains("unknown codec id 77"), "{err}");
    }
}
