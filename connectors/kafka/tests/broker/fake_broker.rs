//! Tiny fake brokers on the loopback interface, for failures a real broker
//! will not produce on demand: silence, hang-ups, corrupt and truncated
//! record batches.

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
    ApiKey, ApiVersionsResponse, BrokerId, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// How a fake broker treats its connections.
pub enum Behaviour {
    /// Accepts connections and never answers.
    Silent,
    /// Accepts connections and closes them at once.
    HangUp,
    /// Serves one single-partition topic whose partition 0 holds `records`
    /// (the raw bytes every Fetch returns) below `high_watermark`.
    Serve {
        topic: String,
        records: Bytes,
        high_watermark: i64,
    },
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
                Behaviour::Serve {
                    topic,
                    records,
                    high_watermark,
                } => serve(stream, address.port(), topic, records, *high_watermark),
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

fn serve(mut stream: TcpStream, port: u16, topic: &str, records: &Bytes, high_watermark: i64) {
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
        let name = TopicName(StrBytes::from_string(topic.to_owned()));
        let body = match ApiKey::try_from(header.request_api_key).expect("a known API") {
            ApiKey::ApiVersions => encode(
                ApiVersionsResponse::default().with_api_keys(
                    [(18, 0, 3), (3, 1, 12), (2, 1, 10), (1, 4, 12)]
                        .map(|(key, min, max)| {
                            ApiVersion::default()
                                .with_api_key(key)
                                .with_min_version(min)
                                .with_max_version(max)
                        })
                        .to_vec(),
                ),
                version,
            ),
            ApiKey::Metadata => encode(
                MetadataResponse::default()
                    .with_brokers(vec![
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(0))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(i32::from(port)),
                    ])
                    .with_topics(vec![
                        MetadataResponseTopic::default()
                            .with_name(Some(name))
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
                encode(
                    ListOffsetsResponse::default().with_topics(vec![
                        ListOffsetsTopicResponse::default()
                            .with_name(name)
                            .with_partitions(vec![
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(0)
                                    .with_offset(if earliest { 0 } else { high_watermark }),
                            ]),
                    ]),
                    version,
                )
            }
            ApiKey::Fetch => encode(
                FetchResponse::default().with_responses(vec![
                    FetchableTopicResponse::default()
                        .with_topic(name)
                        .with_partitions(vec![
                            PartitionData::default()
                                .with_partition_index(0)
                                .with_high_watermark(high_watermark)
                                .with_last_stable_offset(high_watermark)
                                .with_records(Some(records.clone())),
                        ]),
                ]),
                version,
            ),
            other => panic!("the fake broker does not serve {other:?}"),
        };
        let mut response = BytesMut::new();
        response.put_i32(0);
        let header_version = response_header_version(header.request_api_key, version);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut response, header_version)
            .expect("a response header");
        response.put_slice(&body);
        let size = (response.len() - 4) as i32;
        response[..4].copy_from_slice(&size.to_be_bytes());
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

fn response_header_version(api_key: i16, version: i16) -> i16 {
    ApiKey::try_from(api_key)
        .expect("a known API")
        .response_header_version(version)
}

fn encode<M: Encodable>(message: M, version: i16) -> Bytes {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf, version)
        .expect("an encodable response");
    buf.freeze()
}
