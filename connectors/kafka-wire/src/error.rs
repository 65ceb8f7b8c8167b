//! The typed errors of this crate.
//!
//! Owns [`ReadError`], the one error type of the committed reader. Every
//! variant names what was wrong: the broker address, the topic, the
//! partition, the offset. It does not own retry policy: callers decide
//! whether an error is worth another attempt.

use std::time::Duration;

/// Why reading a Kafka log failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bootstrap address is not of the form `host:port`.
    #[error("invalid Kafka bootstrap address '{address}': expected host:port")]
    InvalidAddress {
        /// The address as given.
        address: String,
    },

    /// No TCP connection to the broker could be opened.
    #[error("Kafka broker not reachable at {address}: {source}")]
    Connect {
        /// The broker address.
        address: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The TLS handshake failed: the broker's certificate is not trusted,
    /// names another host, the broker refused the client certificate, or
    /// the broker does not speak TLS on that port.
    #[error(
        "TLS handshake with Kafka broker at {address} failed: {source}; check ssl.ca.location \
         (the CA that signed the broker's certificate), ssl.endpoint.identification.algorithm \
         (https: the certificate must name the host connected to; none: the chain only), \
         ssl.certificate.location and ssl.key.location (when the broker wants a client \
         certificate), and that the port is an SSL or SASL_SSL listener"
    )]
    Tls {
        /// The broker address.
        address: String,
        /// What the handshake said (a `rustls::Error` inside, when TLS
        /// itself failed).
        #[source]
        source: std::io::Error,
    },

    /// The broker refused the SASL authentication.
    #[error(
        "SASL {mechanism} authentication with Kafka broker at {address} failed: {message}; check sasl.username, \
         sasl.password and sasl.mechanism"
    )]
    Authentication {
        /// The broker address.
        address: String,
        /// The mechanism.
        mechanism: &'static str,
        /// What the broker (or the exchange) said.
        message: String,
    },

    /// The connection's TLS or SASL settings cannot be used.
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),

    /// Opening the TCP connection took longer than the connect timeout.
    #[error("Kafka broker not reachable at {address}: no connection within {timeout:?}")]
    ConnectTimeout {
        /// The broker address.
        address: String,
        /// The connect timeout that elapsed.
        timeout: Duration,
    },

    /// The broker did not answer a request within the request timeout.
    #[error("Kafka broker at {address} did not answer {api} within {timeout:?}")]
    RequestTimeout {
        /// The broker address.
        address: String,
        /// The Kafka API of the request, e.g. `Fetch`.
        api: &'static str,
        /// The request timeout that elapsed.
        timeout: Duration,
    },

    /// Reading from or writing to the broker connection failed, including
    /// the broker closing the connection mid-request.
    #[error("I/O error talking to Kafka broker at {address} during {api}: {source}")]
    Io {
        /// The broker address.
        address: String,
        /// The Kafka API of the request, e.g. `Fetch`.
        api: &'static str,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The broker answered with bytes that are not a valid response.
    #[error("malformed {api} response from Kafka broker at {address}: {reason}")]
    Protocol {
        /// The broker address.
        address: String,
        /// The Kafka API of the request, e.g. `Fetch`.
        api: &'static str,
        /// What was wrong with the response.
        reason: String,
    },

    /// The broker supports no version of an API that this reader can speak.
    #[error(
        "Kafka broker at {address} supports {api} versions {broker_min}..={broker_max}, \
         this reader needs one of {min}..={max}"
    )]
    UnsupportedApi {
        /// The broker address.
        address: String,
        /// The Kafka API, e.g. `Fetch`.
        api: &'static str,
        /// The lowest version the broker accepts (-1 when it lists none).
        broker_min: i16,
        /// The highest version the broker accepts (-1 when it lists none).
        broker_max: i16,
        /// The lowest version this reader can use.
        min: i16,
        /// The highest version this reader can use.
        max: i16,
    },

    /// The topic does not exist on the cluster.
    #[error("unknown topic '{topic}' on Kafka broker at {address}")]
    UnknownTopic {
        /// The topic name.
        topic: String,
        /// The broker that was asked.
        address: String,
    },

    /// The topic exists but has no partition with this index.
    #[error("topic '{topic}' has no partition {partition} (it has {partition_count} partitions)")]
    UnknownPartition {
        /// The topic name.
        topic: String,
        /// The requested partition.
        partition: i32,
        /// How many partitions the topic has.
        partition_count: usize,
    },

    /// The partition has no leader, or its leader is not among the brokers
    /// the cluster metadata lists.
    #[error("no reachable leader for {topic}/{partition}: leader id {leader_id}")]
    NoLeader {
        /// The topic name.
        topic: String,
        /// The partition.
        partition: i32,
        /// The leader id the metadata reported (-1 when there is none).
        leader_id: i32,
    },

    /// The broker answered a request with a Kafka error code.
    #[error(
        "Kafka broker at {address} answered {api} for {topic}/{partition} with error {code} ({name})"
    )]
    Broker {
        /// The broker address.
        address: String,
        /// The Kafka API of the request, e.g. `Fetch`.
        api: &'static str,
        /// The topic name.
        topic: String,
        /// The partition, or -1 for a topic-level error.
        partition: i32,
        /// The Kafka error code.
        code: i16,
        /// The name of the Kafka error code.
        name: String,
    },

    /// A record batch failed its checks: bad CRC, unsupported magic,
    /// impossible lengths or counts, undecodable records.
    #[error("corrupt record batch in {topic}/{partition} at offset {offset}: {reason}")]
    CorruptBatch {
        /// The topic name.
        topic: String,
        /// The partition.
        partition: i32,
        /// The base offset of the batch (or the fetch offset when the batch
        /// header itself is unreadable).
        offset: i64,
        /// What was wrong.
        reason: String,
    },

    /// A fetch response held only the beginning of a record batch, so no
    /// progress is possible from this offset.
    #[error(
        "truncated record batch in {topic}/{partition} at offset {offset}: \
         the batch needs {needed} bytes but the fetch response holds {available}"
    )]
    TruncatedBatch {
        /// The topic name.
        topic: String,
        /// The partition.
        partition: i32,
        /// The base offset of the batch (or the fetch offset when not even
        /// the batch header arrived).
        offset: i64,
        /// How many bytes the batch needs, header included.
        needed: usize,
        /// How many bytes of it the response held.
        available: usize,
    },

    /// Fetches below the high watermark kept returning no records.
    #[error(
        "no progress reading {topic}/{partition} at offset {offset}, below the high watermark \
         {high_watermark}: {fetches} fetches from {address} returned no record batch"
    )]
    Stalled {
        /// The broker address.
        address: String,
        /// The topic name.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset the reader was fetching from.
        offset: i64,
        /// The high watermark the read was bounded by.
        high_watermark: i64,
        /// How many empty fetches were tolerated.
        fetches: u32,
    },
}
