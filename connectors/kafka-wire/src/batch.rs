//! Decoding of Kafka record batches (message format v2, magic 2).
//!
//! Owns the byte-level work: splitting the `records` bytes of a Fetch
//! response into batches, checking each batch's length, magic and CRC32C,
//! decompressing it, and decoding its records with every header kept (Kafka
//! allows repeated header keys). All counts and lengths are checked against
//! the bytes actually present before anything is allocated.
//!
//! Does not own what the records mean: transaction visibility is
//! [`crate::visibility`]'s job, and talking to a broker is
//! [`crate::connection`]'s.
//!
//! Why not `kafka_protocol::records::RecordBatchDecoder` (0.18), whose
//! decompressors this module does use: for this reader it is wrong in
//! three measurable ways.
//!
//! * It keeps headers in an `IndexMap`, so a record with the header key
//!   `h` twice comes back with one `h` (the last value): a repeated key,
//!   which Kafka allows, is lost.
//! * It sizes `Vec`s and maps from the counts in the batch (records,
//!   headers) before checking that the bytes hold them, so a batch with a
//!   valid CRC but a wrong count (a buggy producer or broker) asks for up
//!   to 2^31 records' worth of memory; this decoder checks every count and
//!   length against the bytes present first.
//! * `decode_all` fails on a Fetch response whose last batch is cut at the
//!   size limit, which brokers do by design (KIP-74); [`split_batches`]
//!   returns the complete batches and the [`TruncatedTail`], so the reader
//!   fetches again from its offset.
//!
//! Error names do come from `kafka_protocol` ([`crate::connection::error_name`]).

use bytes::{Buf, Bytes};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::header::RecordHeader;

/// Bytes before the batch length field ends: base offset (8) + length (4).
const LOG_OVERHEAD: usize = 12;
/// Bytes of a v2 batch header, from base offset through record count.
const HEADER_LEN: usize = 61;
/// Where the CRC-covered part of a batch starts (the attributes field).
const CRC_START: usize = 21;
/// Smallest record: length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
const MIN_RECORD_LEN: usize = 7;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
pub(crate) const ATTR_TRANSACTIONAL: i16 = 1 << 4;
pub(crate) const ATTR_CONTROL: i16 = 1 << 5;

/// One complete batch cut out of a fetch response, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawBatch {
    /// The batch's base offset.
    pub base_offset: i64,
    /// The whole batch, from the base offset field to its last byte.
    pub bytes: Bytes,
}

/// The start of a batch whose remaining bytes were not in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The batch's base offset, when at least those 8 bytes arrived.
    pub base_offset: Option<i64>,
    /// The bytes the batch needs (or the log overhead, when unknown).
    pub needed: usize,
    /// The bytes that arrived.
    pub available: usize,
}

/// The batches of one fetch response, and what was left over.
#[derive(Debug, Clone)]
pub struct Framed {
    /// The complete batches, in log order.
    pub batches: Vec<RawBatch>,
    /// A partial last batch. Kafka may cut the last batch of a response at
    /// the size limit; the reader fetches again from its offset.
    pub truncated_tail: Option<TruncatedTail>,
}

/// A batch that could not be framed or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// The base offset of the bad batch.
    pub offset: i64,
    /// What was wrong with it.
    pub reason: String,
}

/// One decoded record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// The record's offset.
    pub offset: i64,
    /// Its timestamp, in milliseconds since the epoch.
    pub timestamp: i64,
    /// Its key; `None` for a null key.
    pub key: Option<Bytes>,
    /// Its value; `None` for a null value.
    pub value: Option<Bytes>,
    /// Its headers, in order, repetitions kept.
    pub headers: Vec<RecordHeader>,
}

/// A decoded batch: its header fields and its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBatch {
    /// The offset of the batch's first record.
    pub base_offset: i64,
    /// The offset of its last record.
    pub last_offset: i64,
    /// The producer id (-1 for none).
    pub producer_id: i64,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// Whether the batch belongs to a transaction.
    pub transactional: bool,
    /// Whether it is a control batch (a COMMIT or ABORT marker).
    pub control: bool,
    /// Its records.
    pub records: Vec<DecodedRecord>,
}

/// Splits the `records` bytes of one partition of a fetch response into
/// complete batches. A batch whose declared length is impossible is an
/// error; a batch cut short by the end of the bytes is reported as the
/// truncated tail.
pub fn split_batches(mut bytes: Bytes) -> Result<Framed, BatchError> {
    let mut batches = Vec::new();
    while bytes.has_remaining() {
        let available = bytes.remaining();
        if available < LOG_OVERHEAD {
            let base_offset = (available >= 8).then(|| (&bytes[..8]).get_i64());
            return Ok(Framed {
                batches,
                truncated_tail: Some(TruncatedTail {
                    base_offset,
                    needed: LOG_OVERHEAD,
                    available,
                }),
            });
        }
        let mut header = &bytes[..LOG_OVERHEAD];
        let base_offset = header.get_i64();
        let declared = header.get_i32();
        let min_declared = HEADER_LEN - LOG_OVERHEAD;
        let declared = usize::try_from(declared)
            .ok()
            .filter(|&declared| declared >= min_declared)
            .ok_or_else(|| BatchError {
                offset: base_offset,
                reason: format!(
                    "batch length {declared} is below the {min_declared}-byte v2 batch header"
                ),
            })?;
        let needed = LOG_OVERHEAD + declared;
        if available < needed {
            return Ok(Framed {
                batches,
                truncated_tail: Some(TruncatedTail {
                    base_offset: Some(base_offset),
                    needed,
                    available,
                }),
            });
        }
        batches.push(RawBatch {
            base_offset,
            bytes: bytes.split_to(needed),
        });
    }
    Ok(Framed {
        batches,
        truncated_tail: None,
    })
}

/// Decodes one complete batch: checks magic and CRC32C, decompresses, and
/// decodes every record.
pub fn decode_batch(raw: &RawBatch) -> Result<DecodedBatch, BatchError> {
    let fail = |reason: String| BatchError {
        offset: raw.base_offset,
        reason,
    };
    let bytes = &raw.bytes;
    let mut header = &bytes[..HEADER_LEN];
    let base_offset = header.get_i64();
    let _batch_length = header.get_i32();
    let _partition_leader_epoch = header.get_i32();
    let magic = header.get_i8();
    if magic != 2 {
        return Err(fail(format!(
            "magic byte {magic}: only message format v2 (magic 2) is supported"
        )));
    }
    let stored_crc = header.get_u32();
    let computed_crc = crc32c::crc32c(&bytes[CRC_START..]);
    if stored_crc != computed_crc {
        return Err(fail(format!(
            "CRC32C mismatch: the batch says {stored_crc:#010x}, its bytes give {computed_crc:#010x}"
        )));
    }
    let attributes = header.get_i16();
    let last_offset_delta = header.get_i32();
    let base_timestamp = header.get_i64();
    let max_timestamp = header.get_i64();
    let producer_id = header.get_i64();
    let producer_epoch = header.get_i16();
    let _base_sequence = header.get_i32();
    let record_count = header.get_i32();
    // The base offset is outside the CRC: a garbage value must not overflow.
    let last_offset = base_offset
        .checked_add(i64::from(last_offset_delta))
        .ok_or_else(|| {
            fail(format!(
                "base offset {base_offset} plus last offset delta {last_offset_delta} overflows"
            ))
        })?;

    let payload = bytes.slice(HEADER_LEN..);
    let mut records_bytes = match attributes & ATTR_COMPRESSION_MASK {
        0 => payload,
        codec => decompress(codec, payload).map_err(fail)?,
    };
    let record_count = usize::try_from(record_count)
        .ok()
        .filter(|&count| count <= records_bytes.len() / MIN_RECORD_LEN)
        .ok_or_else(|| {
            fail(format!(
                "record count {record_count} does not fit in {} bytes of records",
                records_bytes.len()
            ))
        })?;
    let log_append_time = attributes & ATTR_LOG_APPEND_TIME != 0;
    let mut records = Vec::with_capacity(record_count);
    for index in 0..record_count {
        let record = decode_record(&mut records_bytes, base_offset, base_timestamp)
            .map_err(|reason| fail(format!("record {index} of {record_count}: {reason}")))?;
        records.push(DecodedRecord {
            timestamp: if log_append_time {
                max_timestamp
            } else {
                record.timestamp
            },
            ..record
        });
    }
    if records_bytes.has_remaining() {
        return Err(fail(format!(
            "{} bytes left over after its {record_count} records",
            records_bytes.remaining()
        )));
    }
    Ok(DecodedBatch {
        base_offset,
        last_offset,
        producer_id,
        producer_epoch,
        transactional: attributes & ATTR_TRANSACTIONAL != 0,
        control: attributes & ATTR_CONTROL != 0,
        records,
    })
}

fn decompress(codec: i16, mut payload: Bytes) -> Result<Bytes, String> {
    let take = |buf: &mut Bytes| Ok(std::mem::take(buf));
    let (name, result) = match codec {
        1 => ("gzip", Gzip::decompress(&mut payload, take)),
        2 => ("snappy", Snappy::decompress(&mut payload, take)),
        3 => ("lz4", Lz4::decompress(&mut payload, take)),
        4 => ("zstd", Zstd::decompress(&mut payload, take)),
        other => return Err(format!("unknown compression codec {other}")),
    };
    result.map_err(|error| format!("{name} decompression failed: {error:#}"))
}

fn decode_record(
    buf: &mut Bytes,
    base_offset: i64,
    base_timestamp: i64,
) -> Result<DecodedRecord, String> {
    let length = read_length(buf, "record length")?.ok_or("record length is -1")?;
    let mut record = take(buf, length, "record")?;
    let _attributes = take(&mut record, 1, "record attributes")?;
    let timestamp_delta = read_varlong(&mut record, "timestamp delta")?;
    let offset_delta = read_varint(&mut record, "offset delta")?;
    let key = read_optional_bytes(&mut record, "key")?;
    let value = read_optional_bytes(&mut record, "value")?;
    let header_count = read_length(&mut record, "header count")?.ok_or("header count is -1")?;
    if header_count > record.len() / 2 {
        return Err(format!(
            "header count {header_count} does not fit in the record's remaining {} bytes",
            record.len()
        ));
    }
    let mut headers = Vec::with_capacity(header_count);
    for _ in 0..header_count {
        let key_length =
            read_length(&mut record, "header key length")?.ok_or("header key length is -1")?;
        let key = take(&mut record, key_length, "header key")?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| "a header key is not valid UTF-8".to_owned())?;
        let value = read_optional_bytes(&mut record, "header value")?;
        headers.push(RecordHeader { key, value });
    }
    if record.has_remaining() {
        return Err(format!(
            "{} bytes left over after the record's headers",
            record.remaining()
        ));
    }
    let offset = base_offset
        .checked_add(i64::from(offset_delta))
        .ok_or_else(|| {
            format!("base offset {base_offset} plus offset delta {offset_delta} overflows")
        })?;
    Ok(DecodedRecord {
        offset,
        timestamp: base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers,
    })
}

fn take(buf: &mut Bytes, length: usize, what: &str) -> Result<Bytes, String> {
    if buf.len() < length {
        return Err(format!(
            "{what} needs {length} bytes, only {} remain",
            buf.len()
        ));
    }
    Ok(buf.split_to(length))
}

/// A zigzag varint used as a length: `None` for -1, an error for other
/// negative values.
fn read_length(buf: &mut Bytes, what: &str) -> Result<Option<usize>, String> {
    match read_varint(buf, what)? {
        -1 => Ok(None),
        length => usize::try_from(length)
            .map(Some)
            .map_err(|_| format!("{what} is negative ({length})")),
    }
}

fn read_optional_bytes(buf: &mut Bytes, what: &str) -> Result<Option<Bytes>, String> {
    read_length(buf, what)?
        .map(|length| take(buf, length, what))
        .transpose()
}

fn read_varint(buf: &mut Bytes, what: &str) -> Result<i32, String> {
    let value = read_varlong(buf, what)?;
    i32::try_from(value).map_err(|_| format!("{what} {value} does not fit in 32 bits"))
}

fn read_varlong(buf: &mut Bytes, what: &str) -> Result<i64, String> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err(format!("{what} runs past the end of the record"));
        }
        let byte = buf.get_u8();
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let magnitude = i64::try_from(raw >> 1).unwrap_or(i64::MAX);
            return Ok(if raw & 1 == 0 {
                magnitude
            } else {
                -magnitude - 1
            });
        }
    }
    Err(format!("{what} is a varint longer than 10 bytes"))
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::fake_broker::{TestBatch, encode, marker, put_varlong};

    fn plain(base_offset: i64) -> Bytes {
        encode(&TestBatch {
            base_offset,
            producer_id: -1,
            transactional: false,
            control: false,
            records: vec![
                (Some(b"k0"), Some(b"v0"), vec![("h", b"1"), ("h", b"2")]),
                (None, None, vec![]),
            ],
        })
    }

    fn decode_one(bytes: Bytes) -> Result<DecodedBatch, BatchError> {
        let framed = split_batches(bytes)?;
        assert_eq!(framed.truncated_tail, None);
        assert_eq!(framed.batches.len(), 1);
        decode_batch(&framed.batches[0])
    }

    #[test]
    fn a_base_offset_that_overflows_is_an_error_not_a_panic() {
        let error = decode_one(plain(i64::MAX)).unwrap_err();
        assert_eq!(error.offset, i64::MAX);
        assert!(error.reason.contains("overflows"), "{}", error.reason);
    }

    #[test]
    fn decodes_records_keeping_repeated_headers() {
        let batch = decode_one(plain(40)).unwrap();
        assert_eq!((batch.base_offset, batch.last_offset), (40, 41));
        assert!(!batch.transactional && !batch.control);
        assert_eq!(batch.records.len(), 2);
        let first = &batch.records[0];
        assert_eq!(first.offset, 40);
        assert_eq!(first.timestamp, 1_000);
        assert_eq!(first.key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(
            first
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref()))
                .collect::<Vec<_>>(),
            [("h", Some(&b"1"[..])), ("h", Some(&b"2"[..]))]
        );
        let second = &batch.records[1];
        assert_eq!((second.offset, second.timestamp), (41, 1_001));
        assert_eq!((second.key.clone(), second.value.clone()), (None, None));
    }

    #[test]
    fn splits_consecutive_batches_and_reports_a_cut_tail() {
        let mut bytes = BytesMut::new();
        bytes.put_slice(&plain(0));
        bytes.put_slice(&marker(2, 7, true));
        let third = plain(3);
        bytes.put_slice(&third[..third.len() - 5]);
        let framed = split_batches(bytes.freeze()).unwrap();
        assert_eq!(
            framed
                .batches
                .iter()
                .map(|b| b.base_offset)
                .collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(
            framed.truncated_tail,
            Some(TruncatedTail {
                base_offset: Some(3),
                needed: third.len(),
                available: third.len() - 5,
            })
        );
    }

    #[test]
    fn a_tail_shorter_than_the_length_field_is_truncated_too() {
        let framed = split_batches(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 9, 0])).unwrap();
        assert!(framed.batches.is_empty());
        assert_eq!(
            framed.truncated_tail,
            Some(TruncatedTail {
                base_offset: Some(9),
                needed: LOG_OVERHEAD,
                available: 9,
            })
        );
    }

    #[test]
    fn rejects_a_flipped_byte_by_crc() {
        let mut bytes = BytesMut::from(&plain(5)[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let error = decode_one(bytes.freeze()).unwrap_err();
        assert_eq!(error.offset, 5);
        assert!(error.reason.contains("CRC32C mismatch"), "{}", error.reason);
    }

    #[test]
    fn rejects_an_impossible_batch_length() {
        let mut bytes = BytesMut::from(&plain(8)[..]);
        bytes[8..12].copy_from_slice(&(-3i32).to_be_bytes());
        let error = split_batches(bytes.freeze()).unwrap_err();
        assert_eq!(error.offset, 8);
        assert!(error.reason.contains("batch length -3"), "{}", error.reason);
    }

    #[test]
    fn rejects_other_magic_bytes() {
        let mut bytes = BytesMut::from(&plain(0)[..]);
        bytes[16] = 1;
        let error = decode_one(bytes.freeze()).unwrap_err();
        assert!(error.reason.contains("magic byte 1"), "{}", error.reason);
    }

    /// Rewrites the record count and fixes the CRC, as a buggy writer would.
    fn with_record_count(bytes: Bytes, count: i32) -> Bytes {
        let mut bytes = BytesMut::from(&bytes[..]);
        bytes[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes.freeze()
    }

    #[test]
    fn rejects_record_counts_that_do_not_match_the_bytes() {
        let huge = decode_one(with_record_count(plain(0), i32::MAX)).unwrap_err();
        assert!(
            huge.reason.contains("record count 2147483647"),
            "{}",
            huge.reason
        );
        let short = decode_one(with_record_count(plain(0), 1)).unwrap_err();
        assert!(short.reason.contains("left over"), "{}", short.reason);
        let long = decode_one(with_record_count(plain(0), 3)).unwrap_err();
        assert!(long.reason.contains("record 2 of 3"), "{}", long.reason);
    }

    #[test]
    fn decodes_zigzag_varints() {
        let mut buf = BytesMut::new();
        for value in [0, -1, 1, 63, -64, 300, i64::MAX, i64::MIN] {
            put_varlong(&mut buf, value);
        }
        let mut buf = buf.freeze();
        for value in [0, -1, 1, 63, -64, 300, i64::MAX, i64::MIN] {
            assert_eq!(read_varlong(&mut buf, "test").unwrap(), value);
        }
        let mut endless = Bytes::from_static(&[0xff; 11]);
        assert!(read_varlong(&mut endless, "test").is_err());
    }
}
