//! How the raw protocol client secures its connections: TLS and SASL,
//! configured with the client properties the job gives librdkafka.
//!
//! Owns [`Security`], built once from librdkafka's property names by
//! [`Security::from_properties`], which validates everything up front: a
//! setting this client cannot honour, an unreadable or unparsable
//! certificate or key, a SASL mechanism it does not speak, is a
//! [`SecurityError`] there, never a surprise at the first connection. The
//! TLS configuration (`rustls`, with the `ring` provider) is built there
//! too, so that a bad file fails at construction. [`crate::connection`]
//! applies it on every connection: TCP, then TLS (SSL, SASL_SSL), then
//! ApiVersions, then SaslHandshake and SaslAuthenticate (SASL_PLAINTEXT,
//! SASL_SSL).
//!
//! Does not own: the SASL messages (the private module `sasl`), the
//! connection and its errors ([`crate::connection`], [`crate::ReadError`]),
//! or where the properties come from (`exactly-kafka`'s `ClientSettings`).
//!
//! Written by hand here, and why: the mapping from librdkafka's property
//! names to a `rustls` configuration (no crate does it for librdkafka's
//! names, and the errors must name those properties), and the small
//! certificate verifier behind `ssl.endpoint.identification.algorithm=none`,
//! which wraps `rustls`'s WebPKI verifier and forgives only its name
//! mismatch error, so that the chain is still verified (and, with
//! `enable.ssl.certificate.verification=false`, skips the certificate check
//! altogether while still checking the handshake's signatures). Everything
//! cryptographic is a maintained crate: `rustls` and `tokio-rustls` for
//! TLS, `rustls-pki-types` for PEM, `rustls-native-certs` for the system's
//! trust store (what OpenSSL's default store is to librdkafka), and the
//! RustCrypto `pkcs8` crate to decrypt an encrypted PKCS#8 key.
//!
//! | property | values | meaning |
//! |---|---|---|
//! | `security.protocol` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` (any case) | TLS and/or SASL on every connection |
//! | `ssl.ca.location` | a PEM file of CA certificates, or `probe` | the CAs trusted for the broker's certificate; unset or `probe`: the system's trust store |
//! | `ssl.certificate.location` | a PEM file (certificate, then its chain) | the client certificate for mTLS; needs `ssl.key.location` |
//! | `ssl.key.location` | a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), or encrypted PKCS#8 | the client certificate's key; needs `ssl.certificate.location` |
//! | `ssl.key.password` | text | decrypts an `ENCRYPTED PRIVATE KEY` (PKCS#8); a legacy OpenSSL `Proc-Type: 4,ENCRYPTED` key must be converted with `openssl pkcs8 -topk8` |
//! | `ssl.endpoint.identification.algorithm` | `https` (default), `none` | whether the broker's certificate must name the host connected to (the chain is verified either way) |
//! | `enable.ssl.certificate.verification` | `true` (default), `false` (also `t`/`f`, `1`/`0`, as librdkafka) | `false` accepts ANY certificate, so anyone between the client and the broker can read and change the traffic, SASL passwords included: for a throwaway test cluster only |
//! | `sasl.mechanism` (or `sasl.mechanisms`) | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` | required with SASL_*: librdkafka's default, GSSAPI, is not supported |
//! | `sasl.username`, `sasl.password` | text | required with SASL_* |
//!
//! Every other `ssl.*` or `sasl.*` property is an error that names it and
//! what to use instead (a Java keystore or truststore, inline `*.pem`
//! properties, Kerberos, OAUTHBEARER). Properties that are not about
//! security (`linger.ms`, `client.id`, ...) are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The properties this module honours, for error messages.
const HONOURED: &str = "security.protocol, ssl.ca.location, ssl.certificate.location, \
    ssl.key.location, ssl.key.password, ssl.endpoint.identification.algorithm, \
    enable.ssl.certificate.verification, sasl.mechanism, sasl.username, sasl.password";

/// librdkafka's `security.protocol`: whether connections use TLS and SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// Neither TLS nor SASL (the default).
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The property value, as librdkafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections use TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// A SASL mechanism this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN` (RFC 4616): the password in the clear, so over TLS only in
    /// practice.
    Plain,
    /// `SCRAM-SHA-256` (RFC 5802, RFC 7677).
    ScramSha256,
    /// `SCRAM-SHA-512` (RFC 5802 with SHA-512).
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name, as Kafka and librdkafka spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A SASL identity: the mechanism, the user and the password.
#[derive(Clone)]
pub(crate) struct Sasl {
    pub(crate) mechanism: SaslMechanism,
    pub(crate) username: String,
    pub(crate) password: String,
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The TLS side: the built configuration and what it was built from.
#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    ca_location: Option<PathBuf>,
    certificate_location: Option<PathBuf>,
    verification: Verification,
}

/// How much of the broker's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    /// The chain and the host name (`https`, the default).
    Full,
    /// The chain only (`ssl.endpoint.identification.algorithm=none`).
    ChainOnly,
    /// Nothing (`enable.ssl.certificate.verification=false`): dangerous.
    Disabled,
}

/// How every connection of the raw protocol client is secured: built once
/// from librdkafka's properties with [`Security::from_properties`]; the
/// default is PLAINTEXT.
///
/// Cloning is cheap (the TLS configuration is shared). `Debug` never shows
/// the password.
#[derive(Clone, Default)]
pub struct Security {
    protocol: SecurityProtocol,
    tls: Option<Tls>,
    sasl: Option<Sasl>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Security");
        out.field("protocol", &self.protocol);
        if let Some(tls) = &self.tls {
            out.field(
                "ssl.ca.location",
                &tls.ca_location.as_ref().map_or_else(
                    || "<system trust store>".to_owned(),
                    |p| p.display().to_string(),
                ),
            )
            .field("ssl.certificate.location", &tls.certificate_location)
            .field("verification", &tls.verification);
        }
        if let Some(sasl) = &self.sasl {
            out.field("sasl", sasl);
        }
        out.finish()
    }
}

/// Why the security properties cannot be honoured. Each names the
/// property and what to change.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// `security.protocol` has a value librdkafka does not know.
    #[error("security.protocol = '{value}' is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")]
    UnknownProtocol {
        /// The value as given.
        value: String,
    },

    /// The SASL mechanism is one the raw client does not speak.
    #[error(
        "sasl.mechanism = '{value}' is not supported: the raw Kafka client used for recovery \
         supports PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 only{hint}"
    )]
    UnsupportedMechanism {
        /// The value as given.
        value: String,
        /// What to do instead, starting with "; " (empty when there is
        /// nothing more to say).
        hint: &'static str,
    },

    /// A SASL protocol without `sasl.mechanism`.
    #[error(
        "security.protocol = {protocol} needs sasl.mechanism: set PLAIN, SCRAM-SHA-256 or \
         SCRAM-SHA-512 (librdkafka's default, GSSAPI, is not supported by the raw Kafka client \
         used for recovery)"
    )]
    MissingMechanism {
        /// The protocol, `SASL_PLAINTEXT` or `SASL_SSL`.
        protocol: &'static str,
    },

    /// `sasl.mechanism` and `sasl.mechanisms` disagree.
    #[error(
        "sasl.mechanism = '{mechanism}' and sasl.mechanisms = '{mechanisms}' disagree: set one"
    )]
    ConflictingMechanisms {
        /// The value of `sasl.mechanism`.
        mechanism: String,
        /// The value of `sasl.mechanisms`.
        mechanisms: String,
    },

    /// SASL without a username or a password.
    #[error(
        "sasl.mechanism = {mechanism} needs sasl.username and sasl.password: {missing} is not set"
    )]
    MissingCredentials {
        /// The mechanism's name.
        mechanism: &'static str,
        /// The missing property.
        missing: &'static str,
    },

    /// Only one of `ssl.certificate.location` and `ssl.key.location`.
    #[error(
        "{present} is set but {missing} is not: a client certificate needs both \
         (or neither, for TLS without a client certificate)"
    )]
    IncompleteClientCertificate {
        /// The property that is set.
        present: &'static str,
        /// The property that is missing.
        missing: &'static str,
    },

    /// A property this client does not honour.
    #[error("{property} is not supported by the raw Kafka client used for recovery: {instead}")]
    UnsupportedProperty {
        /// The property.
        property: String,
        /// What to use instead.
        instead: String,
    },

    /// A property with a value this client does not accept.
    #[error("{property} = '{value}' is not supported: {instead}")]
    UnsupportedValue {
        /// The property.
        property: &'static str,
        /// The value as given.
        value: String,
        /// The accepted values, and what they mean.
        instead: &'static str,
    },

    /// A certificate or key file cannot be read.
    #[error("{property} = {}: cannot read the file: {source}", path.display())]
    File {
        /// The property naming the file.
        property: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A certificate or key file is not what the property needs.
    #[error("{property} = {}: {reason}", path.display())]
    Unparsable {
        /// The property naming the file.
        property: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },

    /// The system's trust store is empty or unreadable, and
    /// `ssl.ca.location` is not set.
    #[error(
        "no CA certificates in the system's trust store ({reason}): set ssl.ca.location to a \
         PEM file of the CAs that signed the brokers' certificates"
    )]
    NoSystemRoots {
        /// What loading the store reported.
        reason: String,
    },

    /// `rustls` refused the configuration (for example a key that does not
    /// belong to the certificate).
    #[error("cannot build the TLS configuration from {what}: {source}")]
    TlsConfig {
        /// The properties involved.
        what: &'static str,
        /// The error of `rustls`.
        #[source]
        source: rustls::Error,
    },
}

impl Security {
    /// Reads and validates librdkafka's security properties (see the
    /// module's table), reading every certificate and key file and
    /// building the TLS configuration now. Properties that are not about
    /// security are ignored.
    ///
    /// # Errors
    ///
    /// [`SecurityError`] for any setting this client cannot honour,
    /// naming the property and what to change.
    pub fn from_properties(properties: &BTreeMap<String, String>) -> Result<Self, SecurityError> {
        for property in properties.keys() {
            check_honoured(property)?;
        }
        let get = |key: &str| {
            properties
                .get(key)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let protocol = match get("security.protocol") {
            None => SecurityProtocol::Plaintext,
            Some(value) => parse_protocol(value)?,
        };
        let verify_certificate = match get("enable.ssl.certificate.verification") {
            None => true,
            Some(value) => {
                librdkafka_bool(value).ok_or_else(|| SecurityError::UnsupportedValue {
                    property: "enable.ssl.certificate.verification",
                    value: value.to_owned(),
                    instead: "use true (verify the broker's certificate, the default) or false \
                          (accept any certificate: for a throwaway test cluster only)",
                })?
            }
        };
        let verify_hostname = match properties
            .get("ssl.endpoint.identification.algorithm")
            .map(|value| value.trim())
        {
            None => true,
            Some(value) if value.eq_ignore_ascii_case("https") => true,
            Some(value) if value.eq_ignore_ascii_case("none") => false,
            Some(value) => {
                return Err(SecurityError::UnsupportedValue {
                    property: "ssl.endpoint.identification.algorithm",
                    value: value.to_owned(),
                    instead: "use https (verify that the broker's certificate names the host, \
                              the default) or none (verify its chain only)",
                });
            }
        };
        let tls = if protocol.uses_tls() {
            Some(build_tls(
                get("ssl.ca.location").filter(|v| !v.eq_ignore_ascii_case("probe")),
                get("ssl.certificate.location"),
                get("ssl.key.location"),
                properties.get("ssl.key.password").map(String::as_str),
                match (verify_certificate, verify_hostname) {
                    (false, _) => Verification::Disabled,
                    (true, false) => Verification::ChainOnly,
                    (true, true) => Verification::Full,
                },
            )?)
        } else {
            None
        };
        let sasl = if protocol.uses_sasl() {
            Some(sasl_credentials(protocol, &get)?)
        } else {
            None
        };
        Ok(Self {
            protocol,
            tls,
            sasl,
        })
    }

    /// The `security.protocol` in effect.
    pub fn protocol(&self) -> SecurityProtocol {
        self.protocol
    }

    /// The SASL mechanism, when the protocol is SASL_PLAINTEXT or
    /// SASL_SSL.
    pub fn sasl_mechanism(&self) -> Option<SaslMechanism> {
        self.sasl.as_ref().map(|sasl| sasl.mechanism)
    }

    /// The TLS configuration, when the protocol is SSL or SASL_SSL.
    pub(crate) fn tls(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref().map(|tls| &tls.config)
    }

    /// The SASL identity, when the protocol is SASL_PLAINTEXT or SASL_SSL.
    pub(crate) fn sasl(&self) -> Option<&Sasl> {
        self.sasl.as_ref()
    }
}

/// A boolean property's value as librdkafka reads it: `true`, `t`, `1`,
/// `false`, `f`, `0`, in any case.
fn librdkafka_bool(value: &str) -> Option<bool> {
    let is = |words: [&str; 3]| words.iter().any(|w| w.eq_ignore_ascii_case(value));
    if is(["true", "t", "1"]) {
        Some(true)
    } else if is(["false", "f", "0"]) {
        Some(false)
    } else {
        None
    }
}

fn parse_protocol(value: &str) -> Result<SecurityProtocol, SecurityError> {
    [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ]
    .into_iter()
    .find(|protocol| protocol.name().eq_ignore_ascii_case(value))
    .ok_or_else(|| SecurityError::UnknownProtocol {
        value: value.to_owned(),
    })
}

/// Refuses an `ssl.*` or `sasl.*` property this client does not honour,
/// saying what to use instead.
fn check_honoured(property: &str) -> Result<(), SecurityError> {
    let lower = property.to_ascii_lowercase();
    let honoured = HONOURED
        .split(", ")
        .chain(["sasl.mechanisms"])
        .any(|name| name.trim() == lower);
    if honoured || !(lower.starts_with("ssl.") || lower.starts_with("sasl.")) {
        return Ok(());
    }
    let instead = if lower.starts_with("ssl.keystore.") {
        "export the keystore to PEM files (openssl pkcs12 -in KEYSTORE -nokeys -out cert.pem; \
         openssl pkcs12 -in KEYSTORE -nocerts -out key.pem) and set ssl.certificate.location, \
         ssl.key.location and ssl.key.password"
            .to_owned()
    } else if lower.starts_with("ssl.truststore.") || lower == "ssl.ca.certificate.stores" {
        "export the trusted CA certificates to a PEM file and set ssl.ca.location".to_owned()
    } else if let Some(kind) = lower
        .strip_suffix(".pem")
        .and_then(|p| p.strip_prefix("ssl."))
    {
        format!("write the PEM text to a file and set ssl.{kind}.location")
    } else if lower.starts_with("sasl.oauthbearer.") {
        "OAUTHBEARER is not supported; use sasl.mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            .to_owned()
    } else if lower.starts_with("sasl.kerberos.") {
        "GSSAPI (Kerberos) is not supported; use sasl.mechanism PLAIN, SCRAM-SHA-256 or \
         SCRAM-SHA-512"
            .to_owned()
    } else {
        format!("remove it; the security properties it honours are {HONOURED}")
    };
    Err(SecurityError::UnsupportedProperty {
        property: property.to_owned(),
        instead,
    })
}

fn sasl_credentials<'a>(
    protocol: SecurityProtocol,
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<Sasl, SecurityError> {
    let value = match (get("sasl.mechanism"), get("sasl.mechanisms")) {
        (None, None) => {
            return Err(SecurityError::MissingMechanism {
                protocol: protocol.name(),
            });
        }
        (Some(one), Some(other)) if !one.eq_ignore_ascii_case(other) => {
            return Err(SecurityError::ConflictingMechanisms {
                mechanism: one.to_owned(),
                mechanisms: other.to_owned(),
            });
        }
        (Some(value), _) | (None, Some(value)) => value,
    };
    let mechanism = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ]
    .into_iter()
    .find(|m| m.name().eq_ignore_ascii_case(value))
    .ok_or_else(|| SecurityError::UnsupportedMechanism {
        value: value.to_owned(),
        hint: match value.to_ascii_uppercase().as_str() {
            "GSSAPI" => "; Kerberos needs a SCRAM or PLAIN user for this client",
            "OAUTHBEARER" => "; OAuth tokens need a SCRAM or PLAIN user for this client",
            _ => "",
        },
    })?;
    let username = get("sasl.username").ok_or(SecurityError::MissingCredentials {
        mechanism: mechanism.name(),
        missing: "sasl.username",
    })?;
    let password = get("sasl.password").ok_or(SecurityError::MissingCredentials {
        mechanism: mechanism.name(),
        missing: "sasl.password",
    })?;
    Ok(Sasl {
        mechanism,
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// The contents of the file `path` that `property` names.
fn read(property: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::File {
        property,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of the PEM file `path` that `property` names: at
/// least one.
fn certificates(
    property: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = read(property, path)?;
    let unparsable = |reason: String| SecurityError::Unparsable {
        property,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unparsable(format!("not a valid PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(unparsable(
            "holds no -----BEGIN CERTIFICATE----- section (a PEM file is needed; convert DER \
             with openssl x509 -inform der)"
                .to_owned(),
        ));
    }
    Ok(certificates)
}

/// The private key of the PEM file `path`, decrypted with `password` when
/// it is an encrypted PKCS#8 key.
fn private_key(
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, SecurityError> {
    const PROPERTY: &str = "ssl.key.location";
    let pem = read(PROPERTY, path)?;
    let unparsable = |reason: String| SecurityError::Unparsable {
        property: PROPERTY,
        path: path.to_owned(),
        reason,
    };
    let text = String::from_utf8_lossy(&pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(unparsable(
            "is a legacy OpenSSL encrypted key (Proc-Type: 4,ENCRYPTED), which is not supported: \
             convert it to encrypted PKCS#8 with openssl pkcs8 -topk8 -in OLD -out NEW (it asks \
             for the password) and keep ssl.key.password"
                .to_owned(),
        ));
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Err(unparsable(
                "is an encrypted key, and ssl.key.password is not set".to_owned(),
            ));
        };
        let (_, document) = pkcs8::SecretDocument::from_pem(&text)
            .map_err(|e| unparsable(format!("not a valid encrypted PKCS#8 key: {e}")))?;
        let encrypted = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
            .map_err(|e| unparsable(format!("not a valid encrypted PKCS#8 key: {e}")))?;
        let decrypted = encrypted.decrypt(password).map_err(|e| {
            unparsable(format!(
                "cannot decrypt the key with ssl.key.password (wrong password?): {e}"
            ))
        })?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            decrypted.as_bytes().to_vec(),
        )));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        unparsable(format!(
            "holds no usable private key (PKCS#8, PKCS#1 RSA or SEC1 EC, in PEM): {e}"
        ))
    })
}

/// The trust anchors: the CAs of `ca_location`, or the system's store.
fn roots(ca_location: Option<&Path>) -> Result<RootCertStore, SecurityError> {
    let mut roots = RootCertStore::empty();
    match ca_location {
        Some(path) => {
            for certificate in certificates("ssl.ca.location", path)? {
                roots
                    .add(certificate)
                    .map_err(|e| SecurityError::Unparsable {
                        property: "ssl.ca.location",
                        path: path.to_owned(),
                        reason: format!("holds a certificate that is not a valid CA: {e}"),
                    })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let reason = if native.errors.is_empty() {
                    "it is empty".to_owned()
                } else {
                    native
                        .errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                return Err(SecurityError::NoSystemRoots { reason });
            }
        }
    }
    Ok(roots)
}

fn build_tls(
    ca_location: Option<&str>,
    certificate_location: Option<&str>,
    key_location: Option<&str>,
    key_password: Option<&str>,
    verification: Verification,
) -> Result<Tls, SecurityError> {
    let ca_location = ca_location.map(PathBuf::from);
    let provider = ring_provider();
    let config_error = |what| move |source| SecurityError::TlsConfig { what, source };
    let webpki = || {
        let roots = Arc::new(roots(ca_location.as_deref())?);
        WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| SecurityError::TlsConfig {
                what: "ssl.ca.location",
                source: rustls::Error::General(e.to_string()),
            })
    };
    let relaxed = |chain| {
        Arc::new(RelaxedVerifier {
            chain,
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_error("the ring provider"))?;
    let builder = match verification {
        Verification::Full => builder.with_webpki_verifier(webpki()?),
        Verification::ChainOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(relaxed(Some(webpki()?))),
        Verification::Disabled => {
            // A CA file given is still read, so that a bad one fails now;
            // the system's store is not loaded for nothing.
            if let Some(path) = &ca_location {
                roots(Some(path))?;
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(relaxed(None))
        }
    };
    let config = match (certificate_location, key_location) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(SecurityError::IncompleteClientCertificate {
                present: "ssl.certificate.location",
                missing: "ssl.key.location",
            });
        }
        (None, Some(_)) => {
            return Err(SecurityError::IncompleteClientCertificate {
                present: "ssl.key.location",
                missing: "ssl.certificate.location",
            });
        }
        (Some(certificate), Some(key)) => {
            let chain = certificates("ssl.certificate.location", Path::new(certificate))?;
            let key = private_key(Path::new(key), key_password)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(config_error(
                    "ssl.certificate.location and ssl.key.location",
                ))?
        }
    };
    Ok(Tls {
        config: Arc::new(config),
        ca_location,
        certificate_location: certificate_location.map(PathBuf::from),
        verification,
    })
}

/// The `ring` crypto provider: chosen over `aws-lc-rs` because it builds
/// without cmake or NASM. rustls 0.23.48 deprecates it for lacking the
/// post-quantum key exchange; Kafka brokers (Java's TLS) do not offer that
/// group yet, so nothing is lost by it today.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier of `ssl.endpoint.identification.algorithm=none` (with a
/// chain verifier) and of `enable.ssl.certificate.verification=false`
/// (without one).
///
/// With `chain`, it is the WebPKI verifier, except that a certificate
/// valid for another name is accepted: WebPKI checks the name last, after
/// the chain, so a name mismatch means the chain was verified. Without,
/// any certificate is accepted. Either way the handshake's signatures are
/// checked, so the broker must hold the key of the certificate it shows.
#[derive(Debug)]
struct RelaxedVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RelaxedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
