//! A record header, the one type both the batch decoder and the
//! read_committed rule hand on.
//!
//! Owns [`RecordHeader`] alone. It lives here, not in [`crate::batch`] or
//! [`crate::visibility`], so that the decoder (which builds headers) and
//! the visibility rule (which hands them on in [`crate::VisibleRecord`])
//! both depend on it and not on each other's module: the visibility rule
//! uses the decoder, never the other way round.

use bytes::Bytes;

/// One record header. Kafka allows the same key more than once; headers
/// keep their order and repetitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// The header key.
    pub key: String,
    /// The header value; `None` for a null value.
    pub value: Option<Bytes>,
}
