//! What to audit: the audit's options, and the `exactly-audit` command
//! line that fills them.
//!
//! Owns [`AuditOptions`] and its parts (the checks, [`FieldPath`]), and
//! [`AuditArgs`], the command line (`clap`), with [`AuditArgs::options`]
//! turning it into options and [`CliOptions`] (the options plus how to
//! print the report).
//!
//! Does not own running the audit ([`super::probe`]).

use std::fmt;
use std::time::Duration;

use clap::Parser;
use exactly_kafka_wire::ReaderConfig;
use exactly_kafka_wire::security::Security;

use crate::cluster::ClusterArgs;
use serde_json::Value;

/// The default bound on connecting and on each request, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// A field path that is not names separated by single dots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path '{0}': expected names separated by single dots")]
pub struct InvalidFieldPath(pub String);

/// A path to a field of a JSON value: object keys, or array indices for
/// arrays, separated by dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a`, `a.b` or `items.0.id`. Empty segments are an error.
    pub fn parse(path: &str) -> Result<Self, InvalidFieldPath> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(InvalidFieldPath(path.to_owned()));
        }
        Ok(Self { segments })
    }

    /// The value at this path inside `value`, if there is one.
    pub fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(value, |current, segment| match current {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// Where the key of the sequence check comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// No key: one sequence over the whole topic.
    Topic,
    /// A field of the JSON record value.
    Field(FieldPath),
    /// The record key.
    RecordKey,
}

/// Duplicate and missing sequence numbers per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceCheck {
    /// Where the key comes from.
    pub key: KeySource,
    /// The field of the JSON record value holding the sequence number.
    pub field: FieldPath,
    /// The first expected sequence number of every key; `None` starts each
    /// key at its smallest sequence number.
    pub start: Option<i64>,
}

/// Where the identity of the duplicate check comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupSource {
    /// A field of the JSON record value.
    Field(FieldPath),
    /// The record key.
    RecordKey,
}

/// What to audit and how.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// A broker of the cluster, `host:port`.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// The partitions to read; empty reads all of them.
    pub partitions: Vec<i32>,
    /// The sequence check, if asked for.
    pub sequence: Option<SequenceCheck>,
    /// The duplicate check, if asked for.
    pub dedup: Option<DedupSource>,
    /// List open transactions of transactional ids with this prefix.
    pub transactional_id_prefix: Option<String>,
    /// Whether open transactions make the exit code [`super::EXIT_FINDINGS`].
    pub fail_on_open: bool,
    /// The bound on connecting and on each request.
    pub timeout: Duration,
    /// TLS and SASL of the connections (default: neither).
    pub security: Security,
}

impl AuditOptions {
    /// Options auditing every partition of `topic` at `bootstrap`, with no
    /// record checks and the default timeout.
    pub fn new(bootstrap: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            partitions: Vec::new(),
            sequence: None,
            dedup: None,
            transactional_id_prefix: None,
            fail_on_open: false,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            security: Security::default(),
        }
    }

    pub(super) fn reader_config(&self) -> ReaderConfig {
        ReaderConfig {
            connect_timeout: self.timeout,
            request_timeout: self.timeout,
            client_id: "exactly-audit".to_owned(),
            security: self.security.clone(),
            ..ReaderConfig::new(self.bootstrap.clone())
        }
    }
}

/// What the text report and the exit code say at the end of `--help`.
const AFTER_HELP: &str = "\
PATH is a field name, or a dot path into nested objects and arrays (`order.id`,
`items.0.sku`). Records a check cannot read (null or non-JSON value, missing
field, non-integer sequence, null key) are counted and listed as unchecked; they
do not change the exit code.

Exit codes:
  0  nothing found
  1  duplicates or gaps found (or open transactions, with --fail-on-open)
  2  usage error, or the topic could not be read (unknown topic or partition,
     unreachable broker, timeout, corrupt batch); one line on stderr names it

Examples:
  exactly-audit --topic orders
  exactly-audit --topic orders --key-field user --seq-field seq
  exactly-audit --topic orders --dedup-field order.id --json
  exactly-audit --topic orders --prefix my-job- --fail-on-open";

/// The `exactly-audit` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "exactly-audit",
    version,
    about = "Checks a Kafka topic written by an exactly-once pipeline.",
    long_about = "Checks a Kafka topic written by an exactly-once pipeline.\n\n\
        Reads every partition raw (READ_UNCOMMITTED, control batches included) and \
        applies Kafka's read_committed rule itself, then reports committed, aborted and \
        open transactions per partition and producer id, the records visible under \
        read_committed, the last stable offset and how long it has been stuck behind an \
        open transaction, and, when asked, duplicates and gaps.",
    after_help = AFTER_HELP
)]
pub struct AuditArgs {
    /// The topic to audit.
    #[arg(long, value_name = "TOPIC", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub topic: String,
    /// A broker of the cluster [default: $EXACTLY_KAFKA_BOOTSTRAP, else 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,
    /// Audit partition N only; repeatable [default: all partitions].
    #[arg(long = "partition", value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub partitions: Vec<i32>,
    /// TLS and SASL: Kafka client properties, as the jobs take them.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Bound on connecting and on each request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// The sequence number: a field of the JSON record value, an integer or a
    /// string holding one.
    #[arg(long, value_name = "PATH", value_parser = FieldPath::parse, help_heading = "Sequence check (duplicate and missing sequence numbers per key)")]
    pub seq_field: Option<FieldPath>,
    /// The key: a field of the JSON record value (no key option: one
    /// sequence over the whole topic).
    #[arg(long, value_name = "PATH", value_parser = FieldPath::parse, requires = "seq_field", conflicts_with = "key_from_record_key", help_heading = "Sequence check (duplicate and missing sequence numbers per key)")]
    pub key_field: Option<FieldPath>,
    /// The key: the record key (UTF-8, else 0x-hex).
    #[arg(
        long,
        requires = "seq_field",
        help_heading = "Sequence check (duplicate and missing sequence numbers per key)"
    )]
    pub key_from_record_key: bool,
    /// Sequences are expected from N [default: each key's smallest].
    #[arg(
        long,
        value_name = "N",
        requires = "seq_field",
        allow_negative_numbers = true,
        help_heading = "Sequence check (duplicate and missing sequence numbers per key)"
    )]
    pub seq_start: Option<i64>,

    /// The identity: a field of the JSON record value.
    #[arg(long, value_name = "PATH", value_parser = FieldPath::parse, conflicts_with = "dedup_record_key", help_heading = "Duplicate check (the same identity in more than one record)")]
    pub dedup_field: Option<FieldPath>,
    /// The identity: the record key.
    #[arg(
        long,
        help_heading = "Duplicate check (the same identity in more than one record)"
    )]
    pub dedup_record_key: bool,

    /// List the open transactions of transactional ids starting with P
    /// (ListTransactions/DescribeTransactions, Kafka 3.0+; brokers without
    /// them get open transactions by producer id).
    #[arg(long, value_name = "P", help_heading = "Transactions")]
    pub prefix: Option<String>,
    /// Exit 1 also when a transaction is open.
    #[arg(long, help_heading = "Transactions")]
    pub fail_on_open: bool,

    /// Machine-readable JSON on stdout instead of text.
    #[arg(long, help_heading = "Output")]
    pub json: bool,
    /// List at most N duplicates, gaps, ... per kind in the text report; 0
    /// lists all (JSON lists all).
    #[arg(long, value_name = "N", default_value_t = 20, help_heading = "Output")]
    pub max_listed: usize,
}

/// The audit options plus how to print the report.
#[derive(Debug, Clone)]
pub struct CliOptions {
    /// What to audit.
    pub audit: AuditOptions,
    /// JSON instead of text.
    pub json: bool,
    /// How many items per kind the text report lists; 0 for all.
    pub max_listed: usize,
}

impl AuditArgs {
    /// The options these arguments ask for; `default_bootstrap` when
    /// `--bootstrap` is absent. Partitions are sorted and deduplicated.
    ///
    /// # Errors
    ///
    /// What is wrong with the client properties: a file that cannot be
    /// read, or a security setting the reader cannot honour.
    pub fn options(self, default_bootstrap: String) -> Result<CliOptions, String> {
        let security = self
            .cluster
            .settings()
            .map_err(|e| e.to_string())?
            .security()
            .map_err(|e| e.to_string())?;
        let key = match (self.key_field, self.key_from_record_key) {
            (Some(path), _) => KeySource::Field(path),
            (None, true) => KeySource::RecordKey,
            (None, false) => KeySource::Topic,
        };
        let sequence = self.seq_field.map(|field| SequenceCheck {
            key,
            field,
            start: self.seq_start,
        });
        let dedup = match (self.dedup_field, self.dedup_record_key) {
            (Some(path), _) => Some(DedupSource::Field(path)),
            (None, true) => Some(DedupSource::RecordKey),
            (None, false) => None,
        };
        let mut partitions = self.partitions;
        partitions.sort_unstable();
        partitions.dedup();
        Ok(CliOptions {
            audit: AuditOptions {
                bootstrap: self.bootstrap.unwrap_or(default_bootstrap),
                topic: self.topic,
                partitions,
                sequence,
                dedup,
                transactional_id_prefix: self.prefix,
                fail_on_open: self.fail_on_open,
                timeout: Duration::from_millis(self.timeout_ms),
                security,
            },
            json: self.json,
            max_listed: self.max_listed,
        })
    }
}

/// A usage error as the one line `exactly-audit` prints for it: clap's
/// message without its usage and tip sections, on one line, pointing to
/// `--help`.
pub fn usage_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let message = text.split("\n\n").next().unwrap_or_default();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    format!(
        "usage error: {} (see --help)",
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Parses `line` (without the program name) as `exactly-audit`'s
/// arguments, with `default:9092` as the default bootstrap.
#[cfg(test)]
pub(crate) fn args(line: &str) -> Result<CliOptions, clap::Error> {
    AuditArgs::try_parse_from(std::iter::once("exactly-audit").chain(line.split_whitespace()))
        .map(|args| args.options("default:9092".to_owned()).unwrap())
}

/// The options of a valid command line.
#[cfg(test)]
pub(crate) fn cli(line: &str) -> CliOptions {
    args(line).unwrap_or_else(|error| panic!("{line}: {error}"))
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn usage_error(line: &str) -> clap::Error {
        match args(line) {
            Err(error) => error,
            Ok(other) => panic!("{line} must be a usage error, got {other:?}"),
        }
    }

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).expect("a valid path")
    }

    #[test]
    fn the_command_line_has_defaults_and_takes_values_in_both_forms() {
        let plain = cli("--topic orders");
        assert_eq!(plain.audit.bootstrap, "default:9092");
        assert_eq!(plain.audit.topic, "orders");
        assert!(plain.audit.partitions.is_empty());
        assert_eq!(plain.audit.timeout, Duration::from_secs(10));
        assert!(plain.audit.sequence.is_none() && plain.audit.dedup.is_none());
        assert!(!plain.json && !plain.audit.fail_on_open);
        assert_eq!(plain.max_listed, 20);

        let full = cli(
            "--topic=orders --bootstrap b:1 --partition 2 --partition=0 --partition 2 \
             --timeout-ms 250 --key-field user.id --seq-field=seq --seq-start 1 \
             --dedup-record-key --prefix app- --fail-on-open --json --max-listed 0",
        );
        let audit = &full.audit;
        assert_eq!(audit.bootstrap, "b:1");
        assert_eq!(audit.partitions, [0, 2]);
        assert_eq!(audit.timeout, Duration::from_millis(250));
        assert_eq!(
            audit.sequence,
            Some(SequenceCheck {
                key: KeySource::Field(path("user.id")),
                field: path("seq"),
                start: Some(1),
            })
        );
        assert_eq!(audit.dedup, Some(DedupSource::RecordKey));
        assert_eq!(audit.transactional_id_prefix.as_deref(), Some("app-"));
        assert!(audit.fail_on_open && full.json);
        assert_eq!(full.max_listed, 0);

        let record_key = cli("--topic t --key-from-record-key --seq-field s --dedup-field id");
        assert_eq!(
            record_key.audit.sequence.map(|s| s.key),
            Some(KeySource::RecordKey)
        );
        assert_eq!(record_key.audit.dedup, Some(DedupSource::Field(path("id"))));
        assert!(matches!(args("--json --help"), Err(e) if e.kind() == ErrorKind::DisplayHelp));
    }

    #[test]
    fn command_line_mistakes_are_usage_errors_naming_the_mistake() {
        let cases = [
            ("", "--topic <TOPIC>"),
            ("--topic", "a value is required for '--topic <TOPIC>'"),
            (
                "--topic t --partition x",
                "invalid value 'x' for '--partition <N>'",
            ),
            ("--topic t --partition -1", "unexpected argument '-1'"),
            (
                "--topic t --timeout-ms 0",
                "invalid value '0' for '--timeout-ms <MS>'",
            ),
            ("--topic t --verbose", "unexpected argument '--verbose'"),
            ("--topic t stray", "unexpected argument 'stray'"),
            (
                "--topic t --json=yes",
                "unexpected value 'yes' for '--json'",
            ),
            ("--topic t --seq-field a..b", "invalid field path 'a..b'"),
            ("--topic t --key-field k", "--seq-field <PATH>"),
            ("--topic t --seq-start 3", "--seq-field <PATH>"),
            (
                "--topic t --seq-field s --key-field k --key-from-record-key",
                "cannot be used with",
            ),
            (
                "--topic t --dedup-field d --dedup-record-key",
                "cannot be used with",
            ),
        ];
        for (line, expected) in cases {
            let error = usage_error(line);
            let text = usage_line(&error);
            assert_eq!(error.exit_code(), 2, "{line}: {text}");
            assert!(text.contains(expected), "{line}: {text}");
            assert!(
                text.ends_with("(see --help)") && !text.contains('\n'),
                "{text}"
            );
        }
    }

    #[test]
    fn field_paths_walk_objects_and_arrays() {
        let value: Value =
            serde_json::from_str(r#"{"a":{"b":[{"c":1},{"c":"two"}]},"d.e":3}"#).unwrap();
        assert_eq!(path("a.b.1.c").get(&value), Some(&Value::from("two")));
        assert_eq!(
            path("a.b.0").get(&value),
            Some(&serde_json::json!({"c": 1}))
        );
        assert_eq!(path("a.x").get(&value), None);
        assert_eq!(path("a.b.9").get(&value), None);
        assert_eq!(path("a.b.c").get(&value), None);
        assert_eq!(path("d").get(&value), None);
        assert_eq!(path("a.b.1.c").to_string(), "a.b.1.c");
        assert!(FieldPath::parse("").is_err() && FieldPath::parse("a.").is_err());
    }
}
