//! A fake Kafka broker on the loopback interface, and a record batch
//! encoder, for tests (feature `test-support`; this crate's own unit tests
//! have it always).
//!
//! Owns the failures a real broker will not produce on demand (silence,
//! hang-ups, corrupt and truncated record batches, a broker without the
//! transaction APIs) and batches built byte by byte: transactional ones,
//! control markers, repeated header keys.
//!
//! Why here and not in a dev-only crate of its own: the fake broker speaks
//! the protocol this crate owns, and this crate's unit tests (the batch
//! decoder, the visibility rule) need the same encoder. A separate crate
//! would depend on this one, so this crate's unit tests could not use it
//! without a dependency cycle. The crates above (`exactly-kafka`,
//! `exactly-kafka-tools`) take it as a dev-dependency with the feature on;
//! nothing ships it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, DescribeTransactionsResponse, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, ListTransactionsResponse, MetadataResponse,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::batch::{ATTR_CONTROL, ATTR_TRANSACTIONAL};

/// The APIs every fake broker offers: (key, min version, max version) for
/// Fetch, Metadata, ListOffsets and ApiVersions.
const APIS: [(i16, i16, i16); 4] = [(18, 0, 3), (3, 1, 12), (2, 1, 10), (1, 4, 12)];
/// What a broker with transactions adds: ListTransactions and
/// DescribeTransactions.
const TRANSACTION_APIS: [(i16, i16, i16); 2] = [(66, 0, 1), (65, 0, 0)];

/// How a fake broker treats its connections.
pub enum Behaviour {
    /// Accepts connections and never answers.
    Silent,
    /// Accepts connections and closes them at once.
    HangUp,
    /// Serves one single-partition topic.
    Serve(Served),
}

/// The one single-partition topic a [`Behaviour::Serve`] broker serves.
pub struct Served {
    /// The topic's name.
    pub topic: String,
    /// The raw bytes every Fetch of partition 0 returns.
    pub records: Bytes,
    /// The high watermark every Fetch and a latest ListOffsets return
    /// (the log start offset is 0).
    pub high_watermark: i64,
    /// The last stable offset every Fetch returns.
    pub last_stable_offset: i64,
    /// The answers to ListTransactions and DescribeTransactions; `None`
    /// for a broker that does not offer them.
    pub transactions: Option<Box<(ListTransactionsResponse, DescribeTransactionsResponse)>>,
}

impl Served {
    /// `topic` holding `records` below `high_watermark`, nothing open (the
    /// last stable offset is the high watermark), no transaction APIs.
    pub fn new(topic: impl Into<String>, records: Bytes, high_watermark: i64) -> Self {
        Self {
            topic: topic.into(),
            records,
            high_watermark,
            last_stable_offset: high_watermark,
            transactions: None,
        }
    }
}

/// Starts a fake broker on a free loopback port and returns its address.
pub fn start(behaviour: Behaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let behaviour = Arc::new(behaviour);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let behaviour = Arc::clone(&behaviour);
            thread::spawn(move || match &*behaviour {
                Behaviour::Silent => {
                    let mut sink = Vec::new();
                    let _ = (&stream).read_to_end(&mut sink);
                }
                Behaviour::HangUp => drop(stream),
                Behaviour::Serve(served) => serve(stream, address.port(), served),
            });
        }
    });
    address.to_string()
}

/// A valid, uncompressed, non-transactional batch of `values` starting at
/// `base_offset`.
pub fn batch(base_offset: i64, values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: base_offset + i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encodable records");
    buf.freeze()
}

fn serve(mut stream: TcpStream, port: u16, served: &Served) {
    let name = || TopicName(StrBytes::from_string(served.topic.clone()));
    loop {
        let mut size = [0; 4];
        if stream.read_exact(&mut size).is_err() {
            return;
        }
        let mut frame = vec![0; i32::from_be_bytes(size) as usize];
        if stream.read_exact(&mut frame).is_err() {
            return;
        }
        let mut frame = Bytes::from(frame);
        let header = decode_request_header_from_buffer(&mut frame).expect("a request header");
        let version = header.request_api_version;
        let key = ApiKey::try_from(header.request_api_key).expect("a known API");
        let body = match key {
            ApiKey::ApiVersions => {
                let extra = served
                    .transactions
                    .as_ref()
                    .map_or(&[][..], |_| &TRANSACTION_APIS);
                encode_body(
                    ApiVersionsResponse::default().with_api_keys(
                        APIS.iter()
                            .chain(extra)
                            .map(|&(key, min, max)| {
                                ApiVersion::default()
                                    .with_api_key(key)
                                    .with_min_version(min)
                                    .with_max_version(max)
                            })
                            .collect(),
                    ),
                    version,
                )
            }
            ApiKey::Metadata => encode_body(
                MetadataResponse::default()
                    .with_brokers(vec![
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(0))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(i32::from(port)),
                    ])
                    .with_topics(vec![
                        MetadataResponseTopic::default()
                            .with_name(Some(name()))
                            .with_partitions(vec![
                                MetadataResponsePartition::default()
                                    .with_partition_index(0)
                                    .with_leader_id(BrokerId(0)),
                            ]),
                    ]),
                version,
            ),
            ApiKey::ListOffsets => {
                let request = ListOffsetsRequest::decode(&mut frame, version).expect("ListOffsets");
                let earliest = request.topics[0].partitions[0].timestamp == -2;
                encode_body(
                    ListOffsetsResponse::default().with_topics(vec![
                        ListOffsetsTopicResponse::default()
                            .with_name(name())
                            .with_partitions(vec![
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(0)
                                    .with_offset(if earliest { 0 } else { served.high_watermark }),
                            ]),
                    ]),
                    version,
                )
            }
            ApiKey::Fetch => encode_body(
                FetchResponse::default().with_responses(vec![
                    FetchableTopicResponse::default()
                        .with_topic(name())
                        .with_partitions(vec![
                            PartitionData::default()
                                .with_partition_index(0)
                                .with_high_watermark(served.high_watermark)
                                .with_last_stable_offset(served.last_stable_offset)
                                .with_records(Some(served.records.clone())),
                        ]),
                ]),
                version,
            ),
            ApiKey::ListTransactions | ApiKey::DescribeTransactions
                if let Some(answers) = &served.transactions =>
            {
                let (listed, described) = &**answers;
                if key == ApiKey::ListTransactions {
                    encode_body(listed.clone(), version)
                } else {
                    encode_body(described.clone(), version)
                }
            }
            other => panic!("the fake broker does not serve {other:?}"),
        };
        let mut response = BytesMut::new();
        response.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut response, key.response_header_version(version))
            .expect("a response header");
        response.put_slice(&body);
        let size = (response.len() - 4) as i32;
        response[..4].copy_from_slice(&size.to_be_bytes());
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

fn encode_body<M: Encodable>(message: M, version: i16) -> Bytes {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf, version)
        .expect("an encodable response");
    buf.freeze()
}

/// Appends `value` as a zigzag varlong, as record fields are encoded.
pub fn put_varlong(buf: &mut BytesMut, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        buf.put_u8((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    buf.put_u8(raw as u8);
}

fn put_optional(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            put_varlong(buf, bytes.len() as i64);
            buf.put_slice(bytes);
        }
        None => put_varlong(buf, -1),
    }
}

/// A test record: key, value and headers.
pub type TestRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Vec<(&'a str, &'a [u8])>);

/// What a test batch looks like before encoding.
pub struct TestBatch<'a> {
    /// The base offset.
    pub base_offset: i64,
    /// The producer id (-1 for none).
    pub producer_id: i64,
    /// Whether the batch belongs to a transaction.
    pub transactional: bool,
    /// Whether it is a control batch (a COMMIT or ABORT marker).
    pub control: bool,
    /// Its records.
    pub records: Vec<TestRecord<'a>>,
}

/// Encodes a v2 batch the way a broker stores it, CRC included.
pub fn encode(batch: &TestBatch<'_>) -> Bytes {
    let mut records = BytesMut::new();
    for (delta, (key, value, headers)) in batch.records.iter().enumerate() {
        let mut record = BytesMut::new();
        record.put_i8(0);
        put_varlong(&mut record, delta as i64);
        put_varlong(&mut record, delta as i64);
        put_optional(&mut record, *key);
        put_optional(&mut record, *value);
        put_varlong(&mut record, headers.len() as i64);
        for (header_key, header_value) in headers {
            put_optional(&mut record, Some(header_key.as_bytes()));
            put_optional(&mut record, Some(header_value));
        }
        put_varlong(&mut records, record.len() as i64);
        records.put_slice(&record);
    }
    let mut attributes = 0;
    if batch.transactional {
        attributes |= ATTR_TRANSACTIONAL;
    }
    if batch.control {
        attributes |= ATTR_CONTROL;
    }
    let count = batch.records.len() as i32;
    let mut crc_part = BytesMut::new();
    crc_part.put_i16(attributes);
    crc_part.put_i32(count - 1);
    crc_part.put_i64(1_000);
    crc_part.put_i64(1_000 + i64::from(count - 1));
    crc_part.put_i64(batch.producer_id);
    crc_part.put_i16(0);
    crc_part.put_i32(0);
    crc_part.put_i32(count);
    crc_part.put_slice(&records);
    let mut out = BytesMut::new();
    out.put_i64(batch.base_offset);
    out.put_i32((4 + 1 + 4 + crc_part.len()) as i32);
    out.put_i32(0);
    out.put_i8(2);
    out.put_u32(crc32c::crc32c(&crc_part));
    out.put_slice(&crc_part);
    out.freeze()
}

/// A control batch carrying one COMMIT (`commit`) or ABORT marker.
pub fn marker(base_offset: i64, producer_id: i64, commit: bool) -> Bytes {
    let key: &[u8] = if commit { &[0, 0, 0, 1] } else { &[0, 0, 0, 0] };
    let value: &[u8] = &[0, 0, 0, 0, 0, 0];
    encode(&TestBatch {
        base_offset,
        producer_id,
        transactional: true,
        control: true,
        records: vec![(Some(key), Some(value), vec![])],
    })
}
