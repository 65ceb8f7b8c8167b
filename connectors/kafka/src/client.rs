//! How the connector reaches a cluster, and the topic checks it runs at
//! start.
//!
//! Owns: [`ClientSettings`] (bootstrap address, extra librdkafka
//! properties, the bound on blocking calls), the check that topics exist
//! (creating them when asked), [`ClientError`], and the broker address
//! from the environment ([`BOOTSTRAP_ENV`]). Does not own what a source or
//! sink does with a client.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use exactly_kafka_wire::ReadError;
use exactly_kafka_wire::ReaderConfig;
use exactly_kafka_wire::connection::{Connection, ConnectionSettings};
use exactly_kafka_wire::security::{Security, SecurityError, SecurityProtocol};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;

/// The environment variable naming the bootstrap broker, `host:port`.
pub const BOOTSTRAP_ENV: &str = "EXACTLY_KAFKA_BOOTSTRAP";
/// The bootstrap broker when [`BOOTSTRAP_ENV`] is unset.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";
/// The environment variable naming a file of client properties
/// (`key=value` lines, librdkafka's names) that
/// [`ClientSettings::from_env`] reads: how the tools and tests reach a
/// secured cluster.
pub const PROPERTIES_FILE_ENV: &str = "EXACTLY_KAFKA_PROPERTIES_FILE";

/// The broker address from [`BOOTSTRAP_ENV`], or [`DEFAULT_BOOTSTRAP`].
pub fn bootstrap_from_env() -> String {
    std::env::var(BOOTSTRAP_ENV).unwrap_or_else(|_| DEFAULT_BOOTSTRAP.to_owned())
}

/// How to reach a Kafka cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Extra librdkafka properties, applied last.
    pub properties: BTreeMap<String, String>,
    /// The bound on every blocking call to the cluster (metadata, topic
    /// creation, transaction calls).
    pub timeout: Duration,
}

impl ClientSettings {
    /// Settings for the cluster at `bootstrap`, with a 30 s bound on calls.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        ClientSettings {
            bootstrap: bootstrap.into(),
            properties: BTreeMap::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Settings for the cluster named by `EXACTLY_KAFKA_BOOTSTRAP` (default
    /// `127.0.0.1:9092`), with the properties of the file named by
    /// `EXACTLY_KAFKA_PROPERTIES_FILE`, if set.
    ///
    /// # Errors
    ///
    /// [`PropertiesFileError`] when that file cannot be read or has a
    /// line that is not `key=value`.
    pub fn from_env() -> Result<Self, PropertiesFileError> {
        let settings = Self::new(bootstrap_from_env());
        match std::env::var_os(PROPERTIES_FILE_ENV) {
            Some(path) => settings.properties_file(path),
            None => Ok(settings),
        }
    }

    /// These settings with the properties of a file of `key=value` lines
    /// (blank lines and lines starting with `#` are skipped), as Kafka's
    /// client properties files are written; a `bootstrap.servers` line
    /// sets the bootstrap address.
    ///
    /// ```
    /// # use exactly_kafka::client::ClientSettings;
    /// let dir = tempfile::tempdir().unwrap();
    /// let file = dir.path().join("app.properties");
    /// std::fs::write(&file, "# the app's identity\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n").unwrap();
    /// let settings = ClientSettings::new("broker:9093").properties_file(&file).unwrap();
    /// assert_eq!(settings.properties["security.protocol"], "SASL_SSL");
    /// ```
    ///
    /// # Errors
    ///
    /// [`PropertiesFileError`] naming the file, and the line when one is
    /// not `key=value`.
    pub fn properties_file(
        mut self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, PropertiesFileError> {
        let path = path.as_ref();
        let problem = |reason: String| PropertiesFileError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(problem(format!(
                    "line {} is not `key=value`: {line:?}",
                    number + 1
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            if key == "bootstrap.servers" {
                value.clone_into(&mut self.bootstrap);
            } else {
                self = self.property(key, value);
            }
        }
        Ok(self)
    }

    /// The TLS and SASL of these settings, as the raw protocol client
    /// (recovery, the lingering-transaction cleanup, the oracles) honours
    /// them: librdkafka's `security.protocol`, `ssl.*` and `sasl.*`
    /// properties, every file read now.
    ///
    /// ```
    /// # use exactly_kafka::client::ClientSettings;
    /// let kerberos = ClientSettings::new("broker:9093")
    ///     .property("security.protocol", "SASL_SSL")
    ///     .property("sasl.mechanism", "GSSAPI");
    /// let error = kerberos.security().unwrap_err().to_string();
    /// assert!(error.contains("sasl.mechanism") && error.contains("GSSAPI"), "{error}");
    /// ```
    ///
    /// # Errors
    ///
    /// [`SecurityError`] naming a property it cannot honour, or a file it
    /// cannot use.
    pub fn security(&self) -> Result<Security, SecurityError> {
        Security::from_properties(&self.properties)
    }

    /// The raw protocol client's reader configuration for these settings:
    /// the same cluster, reached the same way, with the same bound on each
    /// call (and at most 10 s to connect).
    ///
    /// # Errors
    ///
    /// [`SecurityError`], as [`Self::security`].
    pub fn reader_config(&self) -> Result<ReaderConfig, SecurityError> {
        Ok(ReaderConfig {
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            request_timeout: self.timeout,
            security: self.security()?,
            ..ReaderConfig::new(self.bootstrap.clone())
        })
    }

    /// Settings for one raw protocol connection, as
    /// [`Self::reader_config`], sending `client_id`.
    ///
    /// # Errors
    ///
    /// [`SecurityError`], as [`Self::security`].
    pub fn connection_settings(
        &self,
        client_id: &str,
    ) -> Result<ConnectionSettings, SecurityError> {
        Ok(ConnectionSettings {
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            request_timeout: self.timeout,
            client_id: client_id.to_owned(),
            security: self.security()?,
        })
    }

    /// An rdkafka configuration with the bootstrap address and the
    /// properties, for a client of one's own (a test's consumer, a tool)
    /// that must reach the same cluster the same way.
    pub fn rdkafka_config(&self) -> ClientConfig {
        self.config(&[])
    }

    /// The first of `controlled` (a property a connector sets itself, with
    /// what to do instead) that these settings set too: the source and
    /// the sink refuse it at build, since the settings' properties win.
    pub(crate) fn overridden<'a>(
        &self,
        controlled: &'a [(&'a str, &'a str)],
    ) -> Option<&'a (&'a str, &'a str)> {
        controlled
            .iter()
            .find(|(key, _)| self.properties.contains_key(*key))
    }

    /// Sets a librdkafka property (applied after the connector's own).
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// An rdkafka configuration with the bootstrap address and the extra
    /// properties.
    pub(crate) fn config(&self, defaults: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in defaults {
            config.set(*key, value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// A client properties file could not be used: its path, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use the Kafka client properties file {path}: {reason}")]
pub struct PropertiesFileError {
    /// The file.
    pub path: String,
    /// Why: the I/O error, or the line that is not `key=value`.
    pub reason: String,
}

/// A cluster call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A client could not be created (usually a bad property).
    #[error("cannot create a Kafka {what} for {bootstrap}: {source}")]
    Create {
        /// Which client.
        what: &'static str,
        /// The bootstrap address.
        bootstrap: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The cluster did not answer.
    #[error(
        "Kafka cluster at {bootstrap} did not answer a metadata request within {timeout:?} ({source}); \
         check the address (EXACTLY_KAFKA_BOOTSTRAP) and that the broker runs (scripts/kafka-up)"
    )]
    Unreachable {
        /// The bootstrap address.
        bootstrap: String,
        /// The bound that elapsed.
        timeout: Duration,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The security properties cannot be honoured, or the cluster refused
    /// them: the TLS handshake or the SASL authentication failed. The
    /// message names the properties to check.
    #[error("cannot reach the Kafka cluster at {bootstrap} securely: {source}")]
    Secure {
        /// The bootstrap address.
        bootstrap: String,
        /// What failed, from the raw protocol client.
        #[source]
        source: Box<ReadError>,
    },
    /// The cluster's ACLs do not let this client's principal see a topic.
    #[error(
        "the principal of this client ({principal}) may not Describe topic `{topic}` on {bootstrap} \
         (TOPIC_AUTHORIZATION_FAILED); grant it the topic's ACLs (Describe, plus Read for a source, Write for a sink), \
         or check sasl.username / the client certificate"
    )]
    TopicNotAuthorized {
        /// The topic.
        topic: String,
        /// The bootstrap address.
        bootstrap: String,
        /// Who the client authenticates as, from its properties.
        principal: String,
    },
    /// Topics the job needs do not exist.
    #[error(
        "topic(s) {topics:?} do not exist on {bootstrap}; create them, or let the connector create them with .create_missing_topic(partitions)"
    )]
    MissingTopics {
        /// The missing topics.
        topics: Vec<String>,
        /// The bootstrap address.
        bootstrap: String,
    },
    /// Creating a topic failed.
    #[error("cannot create topic `{topic}` on {bootstrap}: {message}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The bootstrap address.
        bootstrap: String,
        /// Why.
        message: String,
    },
}

/// What to do about topics that do not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingTopics {
    /// Report them at start (the default).
    #[default]
    Fail,
    /// Create them with this many partitions (and the broker's `default.replication.factor`).
    Create {
        /// Partitions of each created topic.
        partitions: i32,
    },
}

/// Checks that `topics` exist (creating them if `missing` says so) and
/// returns each topic's partition count. Blocks for at most about twice
/// `settings.timeout`.
///
/// # Errors
///
/// [`ClientError`] naming the cluster and the topics.
pub fn ensure_topics(
    settings: &ClientSettings,
    topics: &[String],
    missing: MissingTopics,
) -> Result<HashMap<String, usize>, ClientError> {
    check_security(settings)?;
    let mut found = partition_counts(settings)?;
    let absent: Vec<String> = topics
        .iter()
        .filter(|t| !found.contains_key(*t))
        .cloned()
        .collect();
    if absent.is_empty() {
        return Ok(topics.iter().map(|t| (t.clone(), found[t])).collect());
    }
    refuse_unauthorized(settings, &absent)?;
    let MissingTopics::Create { partitions } = missing else {
        return Err(ClientError::MissingTopics {
            topics: absent,
            bootstrap: settings.bootstrap.clone(),
        });
    };
    let admin: AdminClient<DefaultClientContext> =
        settings
            .config(&[])
            .create()
            .map_err(|source| ClientError::Create {
                what: "admin client",
                bootstrap: settings.bootstrap.clone(),
                source,
            })?;
    let new_topics: Vec<NewTopic<'_>> = absent
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(settings.timeout));
    let results =
        futures_executor::block_on(admin.create_topics(&new_topics, &options)).map_err(|e| {
            ClientError::CreateTopic {
                topic: absent.join(", "),
                bootstrap: settings.bootstrap.clone(),
                message: e.to_string(),
            }
        })?;
    for result in results {
        if let Err((topic, code)) = result
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(ClientError::CreateTopic {
                topic,
                bootstrap: settings.bootstrap.clone(),
                message: code.to_string(),
            });
        }
    }
    for topic in &absent {
        found.insert(topic.clone(), partitions as usize);
    }
    Ok(topics.iter().map(|t| (t.clone(), found[t])).collect())
}

/// With TLS or SASL, one raw protocol connection to the cluster, so that a
/// setting that cannot be honoured, an untrusted certificate or refused
/// credentials stop the job at start with an error naming the properties
/// to check. librdkafka reports them only as log lines while it retries,
/// and its calls then time out without saying why.
fn check_security(settings: &ClientSettings) -> Result<(), ClientError> {
    let secure = |source: ReadError| ClientError::Secure {
        bootstrap: settings.bootstrap.clone(),
        source: Box::new(source),
    };
    let connection = settings
        .connection_settings("exactly-kafka-start")
        .map_err(|e| secure(e.into()))?;
    if connection.security.protocol() == SecurityProtocol::Plaintext {
        return Ok(());
    }
    exactly_kafka_wire::connection::block_on(Connection::open_any(&settings.bootstrap, &connection))
        .map_err(|source| {
            secure(ReadError::Io {
                address: settings.bootstrap.clone(),
                api: "runtime",
                source,
            })
        })?
        .map(drop)
        .map_err(secure)
}

/// Who a client with `settings` authenticates as, for error messages.
fn principal(settings: &ClientSettings) -> String {
    let property = |key: &str| settings.properties.get(key).map(String::as_str);
    match (
        property("sasl.username"),
        property("ssl.certificate.location"),
    ) {
        (Some(user), _) => format!("sasl.username={user}"),
        (None, Some(cert)) => format!("the certificate in ssl.certificate.location={cert}"),
        (None, None) => "ANONYMOUS, no SASL user or client certificate set".to_owned(),
    }
}

/// Fails when one of `topics` (missing from the cluster-wide metadata,
/// which leaves out the topics a principal may not Describe) is there but
/// not authorized: asked for by name, the broker says which.
fn refuse_unauthorized(settings: &ClientSettings, topics: &[String]) -> Result<(), ClientError> {
    let consumer = metadata_client(
        settings,
        &[("allow.auto.create.topics", "false".to_owned())],
    )?;
    for topic in topics {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), settings.timeout) else {
            continue;
        };
        let denied = metadata.topics().iter().any(|t| {
            t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        });
        if denied {
            return Err(ClientError::TopicNotAuthorized {
                topic: topic.clone(),
                bootstrap: settings.bootstrap.clone(),
                principal: principal(settings),
            });
        }
    }
    Ok(())
}

/// A consumer for metadata requests, with `extra` properties.
fn metadata_client(
    settings: &ClientSettings,
    extra: &[(&str, String)],
) -> Result<BaseConsumer, ClientError> {
    settings
        .config(extra)
        .create()
        .map_err(|source| ClientError::Create {
            what: "metadata client",
            bootstrap: settings.bootstrap.clone(),
            source,
        })
}

/// The partition count of every topic in the cluster.
pub(crate) fn partition_counts(
    settings: &ClientSettings,
) -> Result<HashMap<String, usize>, ClientError> {
    let metadata = metadata_client(settings, &[])?
        .fetch_metadata(None, settings.timeout)
        .map_err(|source| ClientError::Unreachable {
            bootstrap: settings.bootstrap.clone(),
            timeout: settings.timeout,
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect())
}
