//! One TCP connection to one Kafka broker, speaking the Kafka protocol.
//!
//! Owns framing (size-prefixed request and response), request headers and
//! correlation ids, API version negotiation (ApiVersions on connect, then
//! the highest version both sides support within the caller's range), the
//! TLS handshake and the SASL authentication the [`Security`] asks for
//! (SaslHandshake, then SaslAuthenticate carrying each message of the
//! exchange), and the bounds on every wait: a connect timeout (the TCP
//! connect and the TLS handshake) and a per-request timeout.
//! After any I/O error or timeout the connection is marked broken and must
//! be replaced, since a half-read response leaves the stream unusable.
//!
//! Does not own what is asked (the committed reader, the sink's recovery
//! and the audit ask) or reconnect policy. Public so that tests and tools
//! can send a request the crate does not wrap (for example a version-5
//! `EndTxn`), with the message types of the `kafka-protocol` crate.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FindCoordinatorRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ReadError;

use crate::security::{Sasl, Security};

/// The largest response accepted: well above any fetch this crate asks for,
/// low enough that a garbage size prefix cannot exhaust memory.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// ApiVersions v3: the first flexible version, which every broker since
/// Kafka 2.4 answers.
const API_VERSIONS_VERSION: i16 = 3;

/// The timeouts and identity of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// The bound on opening the TCP connection.
    pub connect_timeout: Duration,
    /// The bound on each request's round trip.
    pub request_timeout: Duration,
    /// The client id sent with every request.
    pub client_id: String,
    /// TLS and SASL (default: neither).
    pub security: Security,
}

/// The byte stream of a connection: plain TCP, or TLS over it.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection to one broker, with the API versions it supports.
#[derive(Debug)]
pub struct Connection {
    address: String,
    stream: Stream,
    settings: ConnectionSettings,
    next_correlation_id: i32,
    broker_versions: HashMap<i16, (i16, i16)>,
    broken: bool,
}

/// The name of an API key, for error messages.
fn api_name<R: Request>() -> &'static str {
    match ApiKey::try_from(R::KEY) {
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::ListOffsets) => "ListOffsets",
        Ok(ApiKey::Fetch) => "Fetch",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::EndTxn) => "EndTxn",
        Ok(ApiKey::ListTransactions) => "ListTransactions",
        Ok(ApiKey::DescribeTransactions) => "DescribeTransactions",
        Ok(ApiKey::DescribeProducers) => "DescribeProducers",
        Ok(ApiKey::SaslHandshake) => "SaslHandshake",
        Ok(ApiKey::SaslAuthenticate) => "SaslAuthenticate",
        _ => "request",
    }
}

/// A topic name as the protocol types want it.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

impl Connection {
    /// Connects to `address` (`host:port`), with TLS when the settings'
    /// security asks for it, asks which API versions the broker supports,
    /// and authenticates with SASL when asked.
    ///
    /// # Errors
    ///
    /// [`ReadError`] when the address is invalid, the broker cannot be
    /// reached in time, the TLS handshake or the authentication fails, or
    /// its ApiVersions answer is an error.
    pub async fn open(address: &str, settings: &ConnectionSettings) -> Result<Self, ReadError> {
        let host = match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
            _ => {
                return Err(ReadError::InvalidAddress {
                    address: address.to_owned(),
                });
            }
        };
        let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ReadError::ConnectTimeout {
                address: address.to_owned(),
                timeout: settings.connect_timeout,
            })?
            .map_err(|source| ReadError::Connect {
                address: address.to_owned(),
                source,
            })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ReadError::Connect {
                address: address.to_owned(),
                source,
            })?;
        let stream = match settings.security.tls() {
            None => Stream::Plain(stream),
            Some(tls) => {
                let tls_error = |source: std::io::Error| ReadError::Tls {
                    address: address.to_owned(),
                    source,
                };
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).map_err(
                    |e| {
                        tls_error(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("`{host}` is neither a DNS name nor an IP address ({e})"),
                        ))
                    },
                )?;
                let handshake =
                    TlsConnector::from(std::sync::Arc::clone(tls)).connect(name, stream);
                let tls_stream = tokio::time::timeout(settings.connect_timeout, handshake)
                    .await
                    .map_err(|_| ReadError::ConnectTimeout {
                        address: address.to_owned(),
                        timeout: settings.connect_timeout,
                    })?
                    .map_err(tls_error)?;
                Stream::Tls(Box::new(tls_stream))
            }
        };
        let mut connection = Self {
            address: address.to_owned(),
            stream,
            settings: settings.clone(),
            next_correlation_id: 0,
            broker_versions: HashMap::new(),
            broken: false,
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("exactly-kafka"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response = connection.exchange(&request, API_VERSIONS_VERSION).await?;
        if response.error_code != 0 {
            return Err(ReadError::Protocol {
                address: connection.address,
                api: "ApiVersions",
                reason: format!(
                    "error code {} for ApiVersions v{API_VERSIONS_VERSION}",
                    response.error_code
                ),
            });
        }
        connection.broker_versions = response
            .api_keys
            .iter()
            .map(|v| (v.api_key, (v.min_version, v.max_version)))
            .collect();
        if let Some(sasl) = settings.security.sasl() {
            connection.authenticate(sasl).await?;
        }
        Ok(connection)
    }

    /// Authenticates with SaslHandshake v1 and SaslAuthenticate, one
    /// request per message of the exchange.
    async fn authenticate(&mut self, sasl: &Sasl) -> Result<(), ReadError> {
        let mechanism = sasl.mechanism.name();
        let refused = |address: &str, message: String| ReadError::Authentication {
            address: address.to_owned(),
            mechanism,
            message,
        };
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let (answer, _) = self.request(&handshake, 1, 1).await?;
        if answer.error_code != 0 {
            let enabled: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(
                &self.address,
                format!(
                    "the broker answered {} to the mechanism; it enables {enabled:?} on this listener",
                    error_name(answer.error_code)
                ),
            ));
        }
        let mut exchange =
            crate::sasl::exchange(sasl).map_err(|message| refused(&self.address, message))?;
        let mut server = Bytes::new();
        while let Some(message) = exchange
            .next(&server)
            .map_err(|message| refused(&self.address, message))?
        {
            let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
            let (answer, _) = self.request(&request, 0, 2).await?;
            if answer.error_code != 0 {
                let said = answer
                    .error_message
                    .as_ref()
                    .map_or_else(String::new, |m| format!(": {}", m.as_str()));
                return Err(refused(
                    &self.address,
                    format!("{}{said}", error_name(answer.error_code)),
                ));
            }
            server = answer.auth_bytes;
        }
        Ok(())
    }

    /// Connects to the first broker of `bootstrap` (`host:port`, or several
    /// separated by commas, as librdkafka's `bootstrap.servers`) that
    /// answers, trying them in order, so that one broker down does not
    /// make a healthy cluster unreachable.
    ///
    /// # Errors
    ///
    /// The last address's [`ReadError`] when none answers.
    pub async fn open_any(
        bootstrap: &str,
        settings: &ConnectionSettings,
    ) -> Result<Self, ReadError> {
        let mut last = None;
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::open(address, settings).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| ReadError::InvalidAddress {
            address: bootstrap.to_owned(),
        }))
    }

    /// The broker address this connection talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether an earlier I/O error or timeout left the stream unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// A new connection to the transaction coordinator of
    /// `transactional_id`, found with FindCoordinator (versions 1 to 3,
    /// which take one key); or the error code the broker answered instead.
    ///
    /// # Errors
    ///
    /// [`ReadError`] when either broker cannot be reached or answers
    /// nonsense.
    pub async fn transaction_coordinator(
        &mut self,
        transactional_id: &str,
    ) -> Result<Result<Connection, i16>, ReadError> {
        let find = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(transactional_id.to_owned()))
            .with_key_type(1);
        let (found, _) = self.request(&find, 1, 3).await?;
        if found.error_code != 0 {
            return Ok(Err(found.error_code));
        }
        let address = format!("{}:{}", found.host.as_str(), found.port);
        Connection::open(&address, &self.settings).await.map(Ok)
    }

    /// Sends `request` with the highest version that both the broker and
    /// `min..=max` (clipped to what the protocol crate knows) allow, and
    /// returns the response with the version used.
    ///
    /// # Errors
    ///
    /// [`ReadError::UnsupportedApi`] when no version fits; I/O, timeout and
    /// decoding errors otherwise (after which the connection is broken).
    pub async fn request<R: Request>(
        &mut self,
        request: &R,
        min: i16,
        max: i16,
    ) -> Result<(R::Response, i16), ReadError> {
        let (min, max) = (min.max(R::VERSIONS.min), max.min(R::VERSIONS.max));
        let (broker_min, broker_max) = self
            .broker_versions
            .get(&R::KEY)
            .copied()
            .unwrap_or((-1, -1));
        let version = max.min(broker_max);
        if broker_max < 0 || version < min.max(broker_min) {
            return Err(ReadError::UnsupportedApi {
                address: self.address.clone(),
                api: api_name::<R>(),
                broker_min,
                broker_max,
                min,
                max,
            });
        }
        Ok((self.exchange(request, version).await?, version))
    }

    async fn exchange<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ReadError> {
        let api = api_name::<R>();
        if self.broken {
            return Err(ReadError::Io {
                address: self.address.clone(),
                api,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the connection broke during an earlier request",
                ),
            });
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = self.encode(request, version, correlation_id)?;
        let timeout = self.settings.request_timeout;
        let result = tokio::time::timeout(timeout, self.round_trip(&frame)).await;
        let mut body = match result {
            Ok(Ok(body)) => body,
            Ok(Err(source)) if is_tls_error(&source) => {
                self.broken = true;
                return Err(ReadError::Tls {
                    address: self.address.clone(),
                    source,
                });
            }
            Ok(Err(source)) => {
                self.broken = true;
                return Err(ReadError::Io {
                    address: self.address.clone(),
                    api,
                    source,
                });
            }
            Err(_) => {
                self.broken = true;
                return Err(ReadError::RequestTimeout {
                    address: self.address.clone(),
                    api,
                    timeout,
                });
            }
        };
        let protocol_error = |reason: String| ReadError::Protocol {
            address: self.address.clone(),
            api,
            reason,
        };
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| protocol_error(format!("undecodable response header: {e:#}")))?;
        if header.correlation_id != correlation_id {
            self.broken = true;
            return Err(protocol_error(format!(
                "correlation id {} answers a request other than {correlation_id}",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| protocol_error(format!("undecodable v{version} response: {e:#}")))
    }

    fn encode<R: Request>(
        &self,
        request: &R,
        version: i16,
        correlation_id: i32,
    ) -> Result<Bytes, ReadError> {
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_string(self.settings.client_id.clone())));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, R::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| ReadError::Protocol {
                address: self.address.clone(),
                api: api_name::<R>(),
                reason: format!("cannot encode the v{version} request: {e:#}"),
            })?;
        let size = i32::try_from(frame.len() - 4).map_err(|_| ReadError::Protocol {
            address: self.address.clone(),
            api: api_name::<R>(),
            reason: format!("the request is too large ({} bytes)", frame.len()),
        })?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        Ok(frame.freeze())
    }

    async fn round_trip(&mut self, frame: &[u8]) -> std::io::Result<Bytes> {
        self.stream.write_all(frame).await?;
        // TLS buffers what it encrypts: send it now.
        self.stream.flush().await?;
        let size = self.stream.read_i32().await?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "response size prefix {size} is outside 0..={MAX_RESPONSE_BYTES} bytes"
                    ),
                )
            })?;
        let mut body = BytesMut::zeroed(size);
        self.stream.read_exact(&mut body).await?;
        Ok(body.freeze())
    }
}

/// Whether an I/O error is TLS failing after the handshake: TLS 1.3
/// reports a refused client certificate with the first read, as an alert.
fn is_tls_error(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Kafka's name for an error code, for error messages.
pub fn error_name(code: i16) -> String {
    use kafka_protocol::error::ParseResponseErrorCode;
    code.err()
        .map_or_else(|| "NONE".to_owned(), |error| format!("{error:?}"))
}

/// Runs `work` to completion from blocking code: on the current tokio
/// runtime when called from its blocking pool, else on a runtime of its
/// own. Fails only when that runtime cannot be built.
pub fn block_on<F: std::future::Future>(work: F) -> std::io::Result<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(work)),
        Err(_) => Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work)),
    }
}
