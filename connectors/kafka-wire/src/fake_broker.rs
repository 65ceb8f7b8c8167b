//! A fake Kafka broker on the loopback interface, and a record batch
//! encoder, for tests (feature `test-support`; this crate's own unit tests
//! have it always).
//!
//! Owns the failures a real broker will not produce on demand (silence,
//! hang-ups, corrupt and truncated record batches, a broker without the
//! transaction APIs), SASL authentication (PLAIN and the server side of
//! SCRAM, which refuses every other request until the client has
//! authenticated, as Kafka does) and batches built byte by byte:
//! transactional ones, control markers, repeated header keys.
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
    ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::batch::{ATTR_CONTROL, ATTR_TRANSACTIONAL};
use crate::sasl::{ScramHash, attribute, escape_username};

/// The APIs every fake broker offers: (key, min version, max version) for
/// Fetch, Metadata, ListOffsets and ApiVersions.
const APIS: [(i16, i16, i16); 4] = [(18, 0, 3), (3, 1, 12), (2, 1, 10), (1, 4, 12)];
/// What a broker with transactions adds: ListTransactions and
/// DescribeTransactions.
const TRANSACTION_APIS: [(i16, i16, i16); 2] = [(66, 0, 1), (65, 0, 0)];
/// What a broker with SASL adds: SaslHandshake and SaslAuthenticate.
const SASL_APIS: [(i16, i16, i16); 2] = [(17, 0, 1), (36, 0, 2)];
/// Kafka's `UNSUPPORTED_SASL_MECHANISM` error code.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Kafka's `SASL_AUTHENTICATION_FAILED` error code.
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// The salt and iteration count of the fake broker's SCRAM credentials.
const SCRAM_SALT: &[u8] = b"fake-broker-salt";
const SCRAM_ITERATIONS: u32 = 4096;

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
    /// The one user every connection must authenticate as, with SASL,
    /// before any request but ApiVersions; `None` for no SASL.
    pub sasl: Option<FakeSasl>,
}

/// The SASL side of a fake broker: the mechanisms it enables and its one
/// user.
#[derive(Debug, Clone)]
pub struct FakeSasl {
    /// The enabled mechanisms, of PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.
    pub mechanisms: Vec<String>,
    /// The user's name.
    pub username: String,
    /// The user's password.
    pub password: String,
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
            sasl: None,
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
    let mut sasl = served.sasl.as_ref().map(SaslServer::new);
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
        let unauthenticated = sasl.as_ref().is_some_and(|sasl| !sasl.authenticated);
        if unauthenticated
            && !matches!(
                key,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            )
        {
            // Kafka closes the connection of a client that skips SASL.
            return;
        }
        let body = match key {
            ApiKey::ApiVersions => {
                let extra = served
                    .transactions
                    .as_ref()
                    .map_or(&[][..], |_| &TRANSACTION_APIS);
                let sasl_apis = served.sasl.as_ref().map_or(&[][..], |_| &SASL_APIS);
                encode_body(
                    ApiVersionsResponse::default().with_api_keys(
                        APIS.iter()
                            .chain(extra)
                            .chain(sasl_apis)
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
            ApiKey::SaslHandshake if let Some(sasl) = &mut sasl => {
                let request =
                    SaslHandshakeRequest::decode(&mut frame, version).expect("SaslHandshake");
                encode_body(sasl.handshake(request.mechanism.as_str()), version)
            }
            ApiKey::SaslAuthenticate if let Some(sasl) = &mut sasl => {
                let request =
                    SaslAuthenticateRequest::decode(&mut frame, version).expect("SaslAuthenticate");
                encode_body(sasl.authenticate(&request.auth_bytes), version)
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

/// One connection's SASL state: the server side of PLAIN and SCRAM.
struct SaslServer<'a> {
    config: &'a FakeSasl,
    mechanism: Option<String>,
    /// SCRAM after the client-first message: the client-first-bare and
    /// server-first messages.
    scram_first: Option<(String, String)>,
    authenticated: bool,
}

impl<'a> SaslServer<'a> {
    fn new(config: &'a FakeSasl) -> Self {
        Self {
            config,
            mechanism: None,
            scram_first: None,
            authenticated: false,
        }
    }

    fn handshake(&mut self, mechanism: &str) -> SaslHandshakeResponse {
        let enabled = self.config.mechanisms.iter().any(|m| m == mechanism);
        if enabled {
            self.mechanism = Some(mechanism.to_owned());
        }
        SaslHandshakeResponse::default()
            .with_error_code(if enabled {
                0
            } else {
                UNSUPPORTED_SASL_MECHANISM
            })
            .with_mechanisms(
                self.config
                    .mechanisms
                    .iter()
                    .map(|m| StrBytes::from_string(m.clone()))
                    .collect(),
            )
    }

    fn authenticate(&mut self, message: &[u8]) -> SaslAuthenticateResponse {
        let mechanism = self.mechanism.clone().expect("SaslHandshake first");
        let hash = match mechanism.as_str() {
            "SCRAM-SHA-256" => ScramHash::Sha256,
            "SCRAM-SHA-512" => ScramHash::Sha512,
            _ => {
                let expected = format!("\0{}\0{}", self.config.username, self.config.password);
                return self.outcome(message == expected.as_bytes(), &mechanism, Bytes::new());
            }
        };
        let text = std::str::from_utf8(message).expect("SCRAM messages are UTF-8");
        let salted = hash.salted_password(
            self.config.password.as_bytes(),
            SCRAM_SALT,
            SCRAM_ITERATIONS,
        );
        match self.scram_first.take() {
            None => {
                let bare = text
                    .strip_prefix("n,,")
                    .expect("a gs2 header without binding");
                let nonce = attribute(bare, 'r').expect("a client nonce");
                let server_first = format!(
                    "r={nonce}fake-server-nonce,s={},i={SCRAM_ITERATIONS}",
                    BASE64.encode(SCRAM_SALT)
                );
                let user_ok = attribute(bare, 'n') == Some(&escape_username(&self.config.username));
                self.scram_first = Some((bare.to_owned(), server_first.clone()));
                if !user_ok {
                    return self.outcome(false, &mechanism, Bytes::new());
                }
                SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(server_first))
            }
            Some((bare, server_first)) => {
                // RFC 5802's server side: recover the client key from the
                // proof and compare its hash with the stored key.
                let (without_proof, proof) = text.rsplit_once(",p=").expect("a proof");
                let proof = BASE64.decode(proof).expect("a base64 proof");
                let auth_message = format!("{bare},{server_first},{without_proof}");
                let stored_key = hash.digest(&hash.hmac(&salted, b"Client Key"));
                let client_signature = hash.hmac(&stored_key, auth_message.as_bytes());
                let client_key: Vec<u8> = proof
                    .iter()
                    .zip(&client_signature)
                    .map(|(p, s)| p ^ s)
                    .collect();
                let server_key = hash.hmac(&salted, b"Server Key");
                let server_final = format!(
                    "v={}",
                    BASE64.encode(hash.hmac(&server_key, auth_message.as_bytes()))
                );
                self.outcome(
                    hash.digest(&client_key) == stored_key,
                    &mechanism,
                    Bytes::from(server_final),
                )
            }
        }
    }

    /// Success with `message`, or Kafka's answer to bad credentials.
    fn outcome(&mut self, ok: bool, mechanism: &str, message: Bytes) -> SaslAuthenticateResponse {
        if ok {
            self.authenticated = true;
            return SaslAuthenticateResponse::default().with_auth_bytes(message);
        }
        SaslAuthenticateResponse::default()
            .with_error_code(SASL_AUTHENTICATION_FAILED)
            .with_error_message(Some(StrBytes::from_string(format!(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism {mechanism}"
            ))))
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
