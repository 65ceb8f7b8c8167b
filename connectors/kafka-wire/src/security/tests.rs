//! The security properties' validation, and real connections: TLS against
//! an in-process TLS server (certificates from `rcgen`) in front of the
//! fake broker, SASL against the fake broker itself.

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::connection::{Connection, ConnectionSettings};
use crate::error::ReadError;
use crate::fake_broker::{self, Behaviour, FakeSasl, Served};
use crate::{CommittedReader, ReaderConfig};

fn properties(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn refused(pairs: &[(&str, &str)]) -> String {
    match Security::from_properties(&properties(pairs)) {
        Ok(security) => panic!("{pairs:?} was accepted: {security:?}"),
        Err(error) => error.to_string(),
    }
}

fn assert_mentions(message: &str, words: &[&str]) {
    for word in words {
        assert!(message.contains(word), "'{word}' missing from: {message}");
    }
}

#[test]
fn no_properties_and_unrelated_ones_mean_plaintext() {
    let security =
        Security::from_properties(&properties(&[("linger.ms", "5"), ("client.id", "x")])).unwrap();
    assert_eq!(security.protocol(), SecurityProtocol::Plaintext);
    assert!(security.tls().is_none() && security.sasl().is_none());
    assert_eq!(Security::default().protocol(), SecurityProtocol::Plaintext);
}

#[test]
fn sasl_plaintext_reads_mechanism_and_credentials_in_any_case() {
    let security = Security::from_properties(&properties(&[
        ("security.protocol", "sasl_plaintext"),
        ("sasl.mechanisms", "scram-sha-512"),
        ("sasl.username", "alice"),
        ("sasl.password", "s3cret-pw"),
    ]))
    .unwrap();
    assert_eq!(security.protocol(), SecurityProtocol::SaslPlaintext);
    assert_eq!(security.sasl_mechanism(), Some(SaslMechanism::ScramSha512));
    let shown = format!("{security:?}");
    assert!(
        shown.contains("alice") && !shown.contains("s3cret-pw"),
        "{shown}"
    );
}

#[test]
fn every_setting_it_cannot_honour_is_refused_by_name() {
    let sasl = |mechanism: &'static str| {
        vec![
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]
    };
    assert_mentions(
        &refused(&[("security.protocol", "TLS")]),
        &["security.protocol", "'TLS'", "SASL_SSL"],
    );
    for mechanism in ["GSSAPI", "OAUTHBEARER"] {
        assert_mentions(
            &refused(&sasl(mechanism)),
            &[
                "sasl.mechanism",
                mechanism,
                "PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 only",
            ],
        );
    }
    assert_mentions(
        &refused(&[("security.protocol", "SASL_SSL")]),
        &["needs sasl.mechanism", "GSSAPI"],
    );
    assert_mentions(
        &refused(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
        ]),
        &["sasl.password is not set"],
    );
    assert_mentions(
        &refused(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
        ]),
        &["sasl.username is not set"],
    );
    for (property, instead) in [
        ("ssl.keystore.location", "ssl.certificate.location"),
        ("ssl.truststore.location", "ssl.ca.location"),
        ("ssl.ca.pem", "ssl.ca.location"),
        ("ssl.key.pem", "ssl.key.location"),
        ("sasl.oauthbearer.config", "OAUTHBEARER"),
        ("sasl.kerberos.service.name", "GSSAPI"),
        ("ssl.cipher.suites", "remove it"),
    ] {
        assert_mentions(&refused(&[(property, "x")]), &[property, instead]);
    }
    assert_mentions(
        &refused(&[("enable.ssl.certificate.verification", "maybe")]),
        &[
            "enable.ssl.certificate.verification",
            "'maybe'",
            "true",
            "false",
        ],
    );
    assert_mentions(
        &refused(&[("ssl.endpoint.identification.algorithm", "dns")]),
        &["ssl.endpoint.identification.algorithm", "https", "none"],
    );
}

#[test]
fn unreadable_and_unparsable_files_name_property_path_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let message = refused(&[("security.protocol", "SSL"), ("ssl.ca.location", missing)]);
    assert_mentions(&message, &["ssl.ca.location", missing, "No such file"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_str().unwrap();
    let message = refused(&[("security.protocol", "SSL"), ("ssl.ca.location", garbage)]);
    assert_mentions(&message, &["ssl.ca.location", garbage, "BEGIN CERTIFICATE"]);

    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    for (present, value, missing) in [
        (
            "ssl.certificate.location",
            pki.path("client.pem"),
            "ssl.key.location",
        ),
        (
            "ssl.key.location",
            pki.path("client.key"),
            "ssl.certificate.location",
        ),
    ] {
        let message = refused(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", &ca),
            (present, &value),
        ]);
        assert_mentions(&message, &[present, missing]);
    }
    let message = refused(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", &ca),
        ("ssl.certificate.location", &pki.path("client.pem")),
        ("ssl.key.location", garbage),
    ]);
    assert_mentions(
        &message,
        &["ssl.key.location", garbage, "no usable private key"],
    );
}

#[test]
fn an_encrypted_pkcs8_key_needs_its_password_and_a_legacy_one_is_refused() {
    let pki = Pki::new();
    let mtls = |key: &str, password: Option<&str>| {
        let mut pairs = vec![
            ("security.protocol", "SSL"),
            ("ssl.ca.location", pki.ca.as_str()),
            ("ssl.certificate.location", pki.client_cert.as_str()),
            ("ssl.key.location", key),
        ];
        pairs.extend(password.map(|p| ("ssl.key.password", p)));
        Security::from_properties(&properties(&pairs)).map_err(|e| e.to_string())
    };
    let encrypted = pki.path("client-encrypted.key");
    mtls(&encrypted, Some("key-pw")).unwrap();
    assert_mentions(
        &mtls(&encrypted, None).unwrap_err(),
        &["encrypted", "ssl.key.password"],
    );
    assert_mentions(
        &mtls(&encrypted, Some("wrong")).unwrap_err(),
        &["ssl.key.location", "cannot decrypt", "ssl.key.password"],
    );
    let legacy = pki.path("legacy.key");
    assert_mentions(
        &mtls(&legacy, Some("key-pw")).unwrap_err(),
        &["Proc-Type: 4,ENCRYPTED", "openssl pkcs8 -topk8"],
    );
}

/// A test CA, a broker certificate for `localhost`, a client certificate,
/// an unrelated CA, in PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    client_der: CertificateDer<'static>,
    ca_der: CertificateDer<'static>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, issuer).unwrap(), key)
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let authority = ca("exactly test CA");
        let (server, server_key) = leaf(
            &authority,
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) =
            leaf(&authority, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        let ca = write("ca.pem", &authority.pem());
        write("other-ca.pem", &self::ca("another CA").pem());
        let client_cert = write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());
        let info = pkcs8::PrivateKeyInfo::try_from(client_key.serialized_der()).unwrap();
        let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
            2048,
            b"test-salt-1234",
            &[7; 16],
        )
        .unwrap();
        let encrypted = info.encrypt_with_params(params, "key-pw").unwrap();
        write(
            "client-encrypted.key",
            &encrypted
                .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
                .unwrap(),
        );
        write(
            "legacy.key",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
             DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n\
             -----END RSA PRIVATE KEY-----\n",
        );
        Self {
            ca,
            client_cert,
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            client_der: client.der().clone(),
            ca_der: authority.der().clone(),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// A TLS server on a loopback port that forwards to `broker`, and the
    /// client certificates each handshake saw. With `require_client_cert`
    /// it demands one signed by the test CA.
    async fn tls_proxy(
        &self,
        broker: String,
        require_client_cert: bool,
    ) -> (u16, mpsc::Receiver<Option<CertificateDer<'static>>>) {
        let provider = ring_provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, certificates) = mpsc::channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, broker) = (acceptor.clone(), seen.clone(), broker.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client = tls.get_ref().1.peer_certificates().map(|c| c[0].clone());
                    let _ = seen.send(client);
                    let mut upstream = TcpStream::connect(broker).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        (port, certificates)
    }
}

fn settings(security: Security) -> ConnectionSettings {
    ConnectionSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        client_id: "exactly-security-tests".to_owned(),
        security,
    }
}

fn tls(ca: &str, extra: &[(&str, &str)]) -> Security {
    let mut pairs = vec![("security.protocol", "SSL"), ("ssl.ca.location", ca)];
    pairs.extend_from_slice(extra);
    Security::from_properties(&properties(&pairs)).unwrap()
}

fn served_broker(sasl: Option<FakeSasl>) -> String {
    fake_broker::start(Behaviour::Serve(Served {
        sasl,
        ..Served::new("t", fake_broker::batch(0, &["one", "two"]), 2)
    }))
}

fn assert_tls_error(result: Result<Connection, ReadError>, cause: &str) {
    match result {
        Err(error @ ReadError::Tls { .. }) => {
            let message = error.to_string();
            assert_mentions(
                &message,
                &[
                    cause,
                    "ssl.ca.location",
                    "ssl.endpoint.identification.algorithm",
                ],
            );
        }
        other => panic!("expected a TLS error ({cause}), got {other:?}"),
    }
}

#[tokio::test]
async fn tls_connects_to_a_broker_whose_ca_is_trusted_and_names_the_host() {
    let pki = Pki::new();
    let (port, seen) = pki.tls_proxy(served_broker(None), false).await;
    let security = tls(&pki.ca, &[]);
    let connection = Connection::open(&format!("localhost:{port}"), &settings(security)).await;
    assert!(connection.is_ok(), "{connection:?}");
    assert_eq!(
        seen.recv().unwrap(),
        None,
        "no client certificate was asked for"
    );
}

#[tokio::test]
async fn tls_refuses_a_broker_signed_by_an_untrusted_ca() {
    let pki = Pki::new();
    let (port, _) = pki.tls_proxy(served_broker(None), false).await;
    let security = tls(&pki.path("other-ca.pem"), &[]);
    let result = Connection::open(&format!("localhost:{port}"), &settings(security)).await;
    assert_tls_error(result, "UnknownIssuer");
}

#[tokio::test]
async fn a_host_the_certificate_does_not_name_fails_with_https_and_passes_with_none() {
    let pki = Pki::new();
    let (port, _) = pki.tls_proxy(served_broker(None), false).await;
    let address = format!("127.0.0.1:{port}");
    let https = tls(
        &pki.ca,
        &[("ssl.endpoint.identification.algorithm", "https")],
    );
    assert_tls_error(
        Connection::open(&address, &settings(https)).await,
        "not valid for name",
    );
    let none = tls(
        &pki.ca,
        &[("ssl.endpoint.identification.algorithm", "none")],
    );
    let connection = Connection::open(&address, &settings(none.clone())).await;
    assert!(connection.is_ok(), "{connection:?}");
    // `none` still verifies the chain.
    let untrusted = tls(
        &pki.path("other-ca.pem"),
        &[("ssl.endpoint.identification.algorithm", "none")],
    );
    assert_tls_error(
        Connection::open(&address, &settings(untrusted)).await,
        "UnknownIssuer",
    );
}

#[tokio::test]
async fn disabled_certificate_verification_accepts_an_untrusted_broker() {
    let pki = Pki::new();
    let (port, _) = pki.tls_proxy(served_broker(None), false).await;
    let address = format!("127.0.0.1:{port}");
    let off = [("enable.ssl.certificate.verification", "false")];
    // Untrusted CA and a name the certificate does not hold: both forgiven.
    let untrusted = tls(&pki.path("other-ca.pem"), &off);
    let connection = Connection::open(&address, &settings(untrusted)).await;
    assert!(connection.is_ok(), "{connection:?}");
    // No ssl.ca.location at all: the system's store is not needed.
    let security = Security::from_properties(&properties(&[
        ("security.protocol", "SSL"),
        ("enable.ssl.certificate.verification", "F"),
    ]))
    .unwrap();
    let connection = Connection::open(&address, &settings(security)).await;
    assert!(connection.is_ok(), "{connection:?}");
    // A bad CA file is still an error at construction.
    let message = refused(&[
        ("security.protocol", "SSL"),
        ("enable.ssl.certificate.verification", "0"),
        ("ssl.ca.location", &pki.path("missing.pem")),
    ]);
    assert_mentions(&message, &["ssl.ca.location", "missing.pem"]);
    // And "true" is the default: the untrusted broker is refused.
    let on = tls(
        &pki.path("other-ca.pem"),
        &[("enable.ssl.certificate.verification", "true")],
    );
    assert_tls_error(
        Connection::open(&address, &settings(on)).await,
        "UnknownIssuer",
    );
}

#[tokio::test]
async fn mtls_presents_the_client_certificate_and_fails_without_one() {
    let pki = Pki::new();
    let (port, seen) = pki.tls_proxy(served_broker(None), true).await;
    let address = format!("localhost:{port}");
    for key in ["client.key", "client-encrypted.key"] {
        let security = tls(
            &pki.ca,
            &[
                ("ssl.certificate.location", &pki.client_cert),
                ("ssl.key.location", &pki.path(key)),
                ("ssl.key.password", "key-pw"),
            ],
        );
        let connection = Connection::open(&address, &settings(security)).await;
        assert!(connection.is_ok(), "{key}: {connection:?}");
        assert_eq!(seen.recv().unwrap(), Some(pki.client_der.clone()), "{key}");
    }
    let without = Connection::open(&address, &settings(tls(&pki.ca, &[]))).await;
    assert!(matches!(without, Err(ReadError::Tls { .. })), "{without:?}");
}

fn sasl_security(protocol: &str, mechanism: &str, password: &str, ca: Option<&str>) -> Security {
    let mut pairs = vec![
        ("security.protocol", protocol),
        ("sasl.mechanism", mechanism),
        ("sasl.username", "app,user=1"),
        ("sasl.password", password),
    ];
    pairs.extend(ca.map(|ca| ("ssl.ca.location", ca)));
    Security::from_properties(&properties(&pairs)).unwrap()
}

fn fake_sasl(mechanisms: &[&str]) -> FakeSasl {
    FakeSasl {
        mechanisms: mechanisms.iter().map(|m| (*m).to_owned()).collect(),
        username: "app,user=1".to_owned(),
        password: "right-pw".to_owned(),
    }
}

/// The committed reader opens a bootstrap and a leader connection: both
/// must authenticate, or the fake broker closes them.
async fn read_values(broker: &str, security: Security) -> Result<Vec<String>, ReadError> {
    let mut reader = CommittedReader::connect(ReaderConfig {
        security,
        ..ReaderConfig::new(broker)
    })
    .await?;
    let logs = reader.read_topic("t").await?;
    Ok(logs[0]
        .records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect())
}

#[tokio::test]
async fn sasl_plain_and_scram_sha_512_authenticate_every_connection() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let broker = served_broker(Some(fake_sasl(&[mechanism])));
        let values = read_values(
            &broker,
            sasl_security("SASL_PLAINTEXT", mechanism, "right-pw", None),
        )
        .await
        .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        assert_eq!(values, ["one", "two"], "{mechanism}");
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_authentication_error_with_the_brokers_message() {
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let broker = served_broker(Some(fake_sasl(&[mechanism])));
        let security = sasl_security("SASL_PLAINTEXT", mechanism, "wrong-pw", None);
        match Connection::open(&broker, &settings(security)).await {
            Err(error @ ReadError::Authentication { .. }) => assert_mentions(
                &error.to_string(),
                &[mechanism, &broker, "invalid credentials", "sasl.password"],
            ),
            other => panic!("{mechanism}: expected an authentication error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_mechanism_the_broker_does_not_enable_is_an_authentication_error() {
    let broker = served_broker(Some(fake_sasl(&["PLAIN"])));
    let security = sasl_security("SASL_PLAINTEXT", "SCRAM-SHA-512", "right-pw", None);
    match Connection::open(&broker, &settings(security)).await {
        Err(error @ ReadError::Authentication { .. }) => {
            assert_mentions(&error.to_string(), &["UnsupportedSaslMechanism", "PLAIN"]);
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

#[tokio::test]
async fn sasl_ssl_runs_scram_inside_tls() {
    let pki = Pki::new();
    let (port, seen) = pki
        .tls_proxy(served_broker(Some(fake_sasl(&["SCRAM-SHA-512"]))), false)
        .await;
    let security = sasl_security("SASL_SSL", "SCRAM-SHA-512", "right-pw", Some(&pki.ca));
    let connection = Connection::open(&format!("localhost:{port}"), &settings(security)).await;
    assert!(connection.is_ok(), "{connection:?}");
    assert_eq!(seen.recv().unwrap(), None);
}
