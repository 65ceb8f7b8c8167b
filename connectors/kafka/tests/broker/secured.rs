//! Against the secured broker of `scripts/kafka-up --secure`: SASL_SSL
//! with SCRAM-SHA-512 users, an mTLS listener, and ACLs that allow the
//! application user only topics, groups and transactional ids under
//! `exactly-`. The tests read the identities' client properties from
//! `target/kafka/secure/<identity>.properties` (or the directory
//! `EXACTLY_KAFKA_SECURE_DIR` names) and fail, never skip, when the broker
//! is not running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use exactly::prelude::*;
use exactly_kafka::client::{ClientError, ClientSettings, MissingTopics, ensure_topics};
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, KafkaTransaction, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};
use exactly_kafka_tools::oracle;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::{pre_committed, sink_context, unique_topic};

/// The client properties of `identity` on the secured broker.
fn identity(identity: &str) -> ClientSettings {
    let dir = std::env::var_os("EXACTLY_KAFKA_SECURE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kafka/secure"),
        PathBuf::from,
    );
    let file = dir.join(format!("{identity}.properties"));
    assert!(
        file.exists(),
        "{} is missing: start the secured broker with scripts/kafka-up --secure",
        file.display()
    );
    ClientSettings::new("unset")
        .properties_file(&file)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn app() -> ClientSettings {
    identity("app-sasl")
}

/// Creates `topic` as `settings`' principal.
fn create(settings: &ClientSettings, topic: &str, partitions: i32) {
    ensure_topics(
        settings,
        &[topic.to_owned()],
        MissingTopics::Create { partitions },
    )
    .unwrap_or_else(|e| panic!("creating {topic}: {e}"));
}

/// Writes `values` to `topic` as `settings`' principal, and waits for them.
fn produce(settings: &ClientSettings, topic: &str, values: &[String]) {
    let producer: BaseProducer = settings.rdkafka_config().create().unwrap();
    for value in values {
        producer
            .send(BaseRecord::<(), _>::to(topic).payload(value))
            .unwrap_or_else(|(e, _)| panic!("sending to {topic}: {e}"));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Every value visible in `topic`, sorted, once both oracles agree (read
/// as `settings`' principal) and no transaction is open.
fn visible(settings: &ClientSettings, topic: &str) -> Vec<String> {
    oracle::settled(settings, topic).unwrap_or_else(|e| panic!("{e}"));
    let mut values: Vec<String> = oracle::read_committed(settings, topic)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .flat_map(|p| p.records)
        .map(|r| String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap())
        .collect();
    values.sort();
    values
}

fn exactly_once(settings: &ClientSettings, topic: &str, prefix: &str) -> KafkaSink<String> {
    KafkaSink::builder(settings.clone(), topic, |v: String| OutputRecord::value(v))
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(prefix)
        .build()
        .unwrap()
}

#[exactly::operator]
fn upper(record: KafkaRecord<String>) -> String {
    record.value.to_uppercase()
}

#[test]
fn a_job_reads_and_writes_exactly_once_over_sasl_ssl_as_a_restricted_user() {
    let app = app();
    let (input, output) = (unique_topic("secured-in"), unique_topic("secured-out"));
    create(&app, &input, 2);
    create(&app, &output, 2);
    let values: Vec<String> = (0..500).map(|i| format!("v{i:03}")).collect();
    produce(&app, &input, &values);
    let dir = tempfile::tempdir().unwrap();
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(200))
        .checkpoint_timeout(Duration::from_secs(60))
        .checkpoint_dir(dir.path())
        .restart_strategy(RestartStrategy::none())
        .parallelism(2);
    let job = Job::new("secured", config);
    job.source(
        KafkaSource::builder(app.clone())
            .topic(&input)
            .deserializer(Utf8)
            .bounded()
            .build()
            .unwrap(),
    )
    .operator(upper)
    .sink(exactly_once(&app, &output, &unique_topic("secured")));
    job.run().unwrap();
    let mut expected: Vec<String> = values.iter().map(|v| v.to_uppercase()).collect();
    expected.sort();
    assert_eq!(visible(&app, &output), expected);
}

/// The job dies after its checkpoint completed and before the commit
/// (`after-checkpoint-complete`): the restarted sink commits the
/// pre-committed transaction over the raw protocol client, through TLS
/// and SCRAM (or a client certificate), from the handle the checkpoint
/// recorded.
#[test]
fn recovery_commits_a_dead_sinks_transaction_over_sasl_ssl_and_mtls() {
    for who in ["app-sasl", "app-mtls"] {
        let settings = identity(who);
        let topic = unique_topic("secured-recovery");
        create(&settings, &topic, 1);
        let prefix = unique_topic("secured-recovery");
        let recorded: KafkaTransaction = pre_committed(
            &mut exactly_once(&settings, &topic, &prefix),
            vec!["a".into(), "b".into(), "c".into()],
        );
        let mut restarted = exactly_once(&settings, &topic, &prefix);
        restarted.open(&sink_context(Some(1))).unwrap();
        restarted
            .recover_and_commit(recorded)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(visible(&settings, &topic), ["a", "b", "c"], "{who}");
    }
}

/// A transaction left open under the prefix by a subtask that no longer
/// runs is found with ListTransactions (which the ACLs must allow) and
/// aborted at start.
#[test]
fn lingering_transactions_are_aborted_at_start_on_the_secured_broker() {
    let app = app();
    let topic = unique_topic("secured-lingering");
    create(&app, &topic, 1);
    let prefix = unique_topic("secured-lingering");
    let lingering: BaseProducer = app
        .rdkafka_config()
        .set("transactional.id", format!("{prefix}-3-0"))
        .create()
        .unwrap();
    lingering
        .init_transactions(Duration::from_secs(30))
        .unwrap();
    lingering.begin_transaction().unwrap();
    lingering
        .send(BaseRecord::<(), _>::to(&topic).payload("left open"))
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    lingering.flush(Duration::from_secs(30)).unwrap();
    let open = || -> usize {
        oracle::read_committed(&app, &topic)
            .unwrap()
            .iter()
            .map(|p| p.open_transactions.len())
            .sum()
    };
    assert_eq!(open(), 1);
    let mut sink = exactly_once(&app, &topic, &prefix);
    sink.open(&sink_context(None)).unwrap();
    sink.begin_transaction(1).unwrap();
    assert_eq!(open(), 0, "the lingering transaction is still open");
}

/// Checks `topic` at start as `settings`' principal, as a source or sink
/// does, and returns the error, failing the test if it took longer than
/// 20 s (a hang or a retry loop).
fn start_error(settings: &ClientSettings, topic: &str) -> ClientError {
    let started = Instant::now();
    let result = ensure_topics(settings, &[topic.to_owned()], MissingTopics::Fail);
    let took = started.elapsed();
    let Err(error) = result else {
        panic!("the start succeeded");
    };
    assert!(
        took < Duration::from_secs(20),
        "the error took {took:?}: {error}"
    );
    error
}

/// `error` with its sources, as a log line shows it.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn a_wrong_password_is_an_error_at_start_naming_the_sasl_settings() {
    let topic = unique_topic("secured-password");
    create(&app(), &topic, 1);
    let wrong = app().property("sasl.password", "not-the-password");
    let error = chain(&start_error(&wrong, &topic));
    assert!(
        error.contains("SASL SCRAM-SHA-512 authentication") && error.contains("sasl.password"),
        "{error}"
    );
}

#[test]
fn an_untrusted_broker_certificate_is_an_error_at_start_naming_ssl_ca_location() {
    let topic = unique_topic("secured-untrusted");
    create(&app(), &topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    let key = dir.path().join("other-ca.key");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not-the-test-ca", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let untrusted = app().property("ssl.ca.location", ca.to_str().unwrap());
    let error = chain(&start_error(&untrusted, &topic));
    assert!(
        error.contains("TLS handshake") && error.contains("ssl.ca.location"),
        "{error}"
    );
}

#[test]
fn a_mechanism_the_raw_client_cannot_speak_is_refused_when_the_sink_is_built() {
    let kerberos = app().property("sasl.mechanism", "GSSAPI");
    let error = KafkaSink::builder(kerberos, "exactly-any", |v: String| OutputRecord::value(v))
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix("exactly-any")
        .build()
        .expect_err("GSSAPI cannot be honoured")
        .to_string();
    assert!(
        error.contains("sasl.mechanism") && error.contains("GSSAPI"),
        "{error}"
    );
}

#[test]
fn a_principal_denied_a_topic_gets_an_error_naming_it_at_start() {
    let other = identity("other-sasl");
    let topic = unique_topic("secured-denied");
    create(&app(), &topic, 1);
    let error = start_error(&other, &topic).to_string();
    assert!(
        error.contains(&format!("may not Describe topic `{topic}`"))
            && error.contains("sasl.username=exactly-other"),
        "{error}"
    );
    assert!(matches!(
        ensure_topics(&other, &[topic], MissingTopics::Fail),
        Err(ClientError::TopicNotAuthorized { .. })
    ));
}
