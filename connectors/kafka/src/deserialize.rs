//! Turning a Kafka record's value bytes into the value a pipeline works on.
//!
//! Owns: the [`ValueDeserializer`] trait and the built-in deserializers
//! ([`Bytes`], [`Utf8`], [`Json`], and closures through [`from_fn`]), and
//! [`DeserializeErrorPolicy`], what the source does with a record whose value
//! does not deserialize. Does not own applying the policy (counting,
//! dead-lettering, failing the job): that is the source's job
//! ([`crate::source`]). Keys and headers are handed to the pipeline as raw
//! bytes; only the value is deserialized.
//!
//! A null value (a tombstone) reaches the deserializer as `None`. [`Bytes`]
//! passes it on; [`Utf8`] rejects it; [`Json`] reads it as JSON `null`, so
//! `Json<Option<T>>` accepts tombstones and `Json<T>` rejects them.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use exactly::BoxError;
use serde::de::DeserializeOwned;

/// Deserializes the value of a Kafka record.
///
/// An error does not stop the job by itself: the source applies its
/// [`DeserializeErrorPolicy`], and names the topic, partition and offset.
pub trait ValueDeserializer: Clone + Send + Sync + 'static {
    /// The deserialized value.
    type Value: Send + 'static;

    /// Deserializes `value`, which is `None` for a record with a null value
    /// (a tombstone).
    ///
    /// # Errors
    ///
    /// Why the bytes are not a valid value.
    fn deserialize(&self, value: Option<&[u8]>) -> Result<Self::Value, BoxError>;
}

/// The raw value bytes, `None` for a tombstone. Never fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes;

impl ValueDeserializer for Bytes {
    type Value = Option<Vec<u8>>;

    fn deserialize(&self, value: Option<&[u8]>) -> Result<Self::Value, BoxError> {
        Ok(value.map(<[u8]>::to_vec))
    }
}

/// The value as UTF-8 text. Invalid UTF-8 and tombstones are errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8;

impl ValueDeserializer for Utf8 {
    type Value = String;

    fn deserialize(&self, value: Option<&[u8]>) -> Result<String, BoxError> {
        let bytes = value.ok_or(
            "the value is null (a tombstone), not UTF-8 text; use the Bytes deserializer to read tombstones",
        )?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => Err(format!("the value is not valid UTF-8: {e}").into()),
        }
    }
}

/// The value as JSON, deserialized with serde into `T`. A tombstone is read
/// as JSON `null`, so `Json<Option<T>>` turns it into `None`.
pub struct Json<T> {
    target: PhantomData<fn() -> T>,
}

impl<T> Json<T> {
    /// A JSON deserializer into `T`.
    pub fn new() -> Self {
        Json {
            target: PhantomData,
        }
    }
}

impl<T> Default for Json<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T: DeserializeOwned + Send + 'static> ValueDeserializer for Json<T> {
    type Value = T;

    fn deserialize(&self, value: Option<&[u8]>) -> Result<T, BoxError> {
        let bytes = value.unwrap_or(b"null");
        serde_json::from_slice(bytes).map_err(|e| {
            let what = if value.is_none() {
                "the value is null (a tombstone)"
            } else {
                "the value is not valid JSON"
            };
            format!("{what} for {}: {e}", std::any::type_name::<T>()).into()
        })
    }
}

/// A user function as a deserializer; build it with [`from_fn`].
pub struct FnDeserializer<F, T, E> {
    function: Arc<F>,
    output: PhantomData<fn() -> (T, E)>,
}

impl<F, T, E> Clone for FnDeserializer<F, T, E> {
    fn clone(&self) -> Self {
        FnDeserializer {
            function: Arc::clone(&self.function),
            output: PhantomData,
        }
    }
}

impl<F, T, E> fmt::Debug for FnDeserializer<F, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnDeserializer -> {}", std::any::type_name::<T>())
    }
}

/// A deserializer that calls `function` with the value bytes (`None` for a
/// tombstone).
///
/// ```
/// use exactly_kafka::deserialize::{ValueDeserializer, from_fn};
///
/// let number = from_fn(|value: Option<&[u8]>| -> Result<u64, String> {
///     let text = std::str::from_utf8(value.unwrap_or_default()).map_err(|e| e.to_string())?;
///     text.trim().parse::<u64>().map_err(|e| format!("not a number: {e}"))
/// });
/// assert_eq!(number.deserialize(Some(b"42")).unwrap(), 42);
/// assert!(number.deserialize(Some(b"x")).is_err());
/// ```
pub fn from_fn<F, T, E>(function: F) -> FnDeserializer<F, T, E>
where
    F: Fn(Option<&[u8]>) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Into<BoxError> + 'static,
{
    FnDeserializer {
        function: Arc::new(function),
        output: PhantomData,
    }
}

impl<F, T, E> ValueDeserializer for FnDeserializer<F, T, E>
where
    F: Fn(Option<&[u8]>) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Into<BoxError> + 'static,
{
    type Value = T;

    fn deserialize(&self, value: Option<&[u8]>) -> Result<T, BoxError> {
        (self.function)(value).map_err(Into::into)
    }
}

/// What the source does with a record whose value does not deserialize.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeserializeErrorPolicy {
    /// Fail the job with an error naming the topic, partition, offset and
    /// the reason (the default). A restart reads the same record again, so
    /// the job stays down until the record is dealt with.
    #[default]
    Fail,
    /// Drop the record, count it
    /// ([`KafkaSourceMetrics::skipped`](crate::source::KafkaSourceMetrics::skipped))
    /// and log the first one and every
    /// [`SKIP_LOG_EVERY`](crate::source::SKIP_LOG_EVERY)-th after it.
    Skip,
    /// Send the raw record (key, value, headers) to `topic`, with headers
    /// saying where it came from and why it was rejected (see
    /// [`crate::source::dead_letter_headers`]), then go on. The dead-letter
    /// producer is idempotent but not transactional, and its records are
    /// acknowledged by the broker before the source position moves past the
    /// bad record: no bad record is lost, but one re-read after a restart is
    /// dead-lettered again (at-least-once).
    DeadLetter {
        /// The dead-letter topic.
        topic: String,
    },
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Reading {
        seq: u64,
    }

    #[test]
    fn bytes_pass_values_and_tombstones_through() {
        assert_eq!(Bytes.deserialize(Some(b"\xff")).unwrap(), Some(vec![0xff]));
        assert_eq!(Bytes.deserialize(None).unwrap(), None);
    }

    #[test]
    fn utf8_rejects_invalid_text_and_tombstones() {
        assert_eq!(Utf8.deserialize(Some(b"hi")).unwrap(), "hi");
        let bad = Utf8.deserialize(Some(b"\xff")).unwrap_err().to_string();
        assert!(bad.contains("not valid UTF-8"), "{bad}");
        let null = Utf8.deserialize(None).unwrap_err().to_string();
        assert!(null.contains("tombstone"), "{null}");
    }

    #[test]
    fn json_reads_structs_and_tombstones_as_null() {
        let json = Json::<Reading>::new();
        assert_eq!(
            json.deserialize(Some(br#"{"seq":7}"#)).unwrap(),
            Reading { seq: 7 }
        );
        let bad = json.deserialize(Some(b"{")).unwrap_err().to_string();
        assert!(
            bad.contains("not valid JSON") && bad.contains("Reading"),
            "{bad}"
        );
        let null = json.deserialize(None).unwrap_err().to_string();
        assert!(null.contains("tombstone"), "{null}");
        assert_eq!(
            Json::<Option<Reading>>::new().deserialize(None).unwrap(),
            None
        );
    }

    #[test]
    fn closures_are_deserializers() {
        let len = from_fn(|v: Option<&[u8]>| -> Result<usize, &'static str> {
            v.map(<[u8]>::len).ok_or("tombstone")
        });
        assert_eq!(len.clone().deserialize(Some(b"abc")).unwrap(), 3);
        assert_eq!(len.deserialize(None).unwrap_err().to_string(), "tombstone");
    }
}
