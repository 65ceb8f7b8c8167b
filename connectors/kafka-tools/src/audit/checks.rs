//! The record checks of the audit: reading a record's key, sequence number
//! or identity (from a field of its JSON value or from its record key), the
//! records a check could not read, and the sequence check's verdict.
//!
//! Owns [`RecordView`] (a record value parsed as JSON at most once for all
//! checks), [`Skips`] and [`sequence_report`] (duplicate and missing
//! sequence numbers per key). Does not own which records are checked
//! ([`super::analysis`]); its behaviour is tested there, through the
//! analysis.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use exactly_kafka_wire::VisibleRecord;
use serde_json::Value;

use super::options::{DedupSource, FieldPath, KeySource, SequenceCheck};
use super::report::{Gap, Location, SequenceAt, SequenceDuplicate, SequenceReport, Unchecked};

/// A record a check could not read, and why.
pub(super) type Skip = String;

/// Records that could not be checked, by reason.
#[derive(Debug, Default)]
pub(super) struct Skips(BTreeMap<Skip, (u64, Location)>);

impl Skips {
    pub(super) fn add(&mut self, reason: Skip, at: Location) {
        self.0.entry(reason).or_insert((0, at)).0 += 1;
    }

    pub(super) fn report(self) -> Vec<Unchecked> {
        self.0
            .into_iter()
            .map(|(reason, (records, first))| Unchecked {
                reason,
                records,
                first,
            })
            .collect()
    }
}

/// A record value parsed as JSON at most once, for all checks.
pub(super) struct RecordView<'a> {
    record: &'a VisibleRecord,
    json: Option<Result<Value, Skip>>,
}

impl<'a> RecordView<'a> {
    pub(super) fn new(record: &'a VisibleRecord) -> Self {
        Self { record, json: None }
    }

    fn field(&mut self, path: &FieldPath) -> Result<&Value, Skip> {
        let record = self.record;
        let json = self.json.get_or_insert_with(|| match &record.value {
            None => Err("null value".to_owned()),
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|_| "value is not JSON".to_owned())
            }
        });
        let value = json.as_ref().map_err(Clone::clone)?;
        path.get(value).ok_or_else(|| format!("no field '{path}'"))
    }

    fn record_key(&self) -> Result<String, Skip> {
        self.record
            .key
            .as_deref()
            .map(key_text)
            .ok_or_else(|| "null record key".to_owned())
    }

    pub(super) fn key(&mut self, source: &KeySource) -> Result<Option<String>, Skip> {
        match source {
            KeySource::Topic => Ok(None),
            KeySource::Field(path) => self.field(path).map(|v| Some(json_text(v))),
            KeySource::RecordKey => self.record_key().map(Some),
        }
    }

    pub(super) fn sequence(&mut self, path: &FieldPath) -> Result<i64, Skip> {
        let value = self.field(path)?;
        match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("field '{path}' is not an integer"))
    }

    pub(super) fn identity(&mut self, source: &DedupSource) -> Result<String, Skip> {
        match source {
            DedupSource::Field(path) => self.field(path).map(json_text),
            DedupSource::RecordKey => self.record_key(),
        }
    }
}

/// A JSON value as a key: strings as they are, anything else as compact
/// JSON.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A record key as text: UTF-8 as it is, anything else as `0x` hex.
pub(super) fn key_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().fold("0x".to_owned(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        }),
    }
}

pub(super) fn sequence_report(
    check: &SequenceCheck,
    sequences: BTreeMap<Option<String>, BTreeMap<i64, Vec<Location>>>,
    records_checked: u64,
    skips: Skips,
) -> SequenceReport {
    let mut duplicates = Vec::new();
    let mut gaps = Vec::new();
    let keys = sequences.len() as u64;
    for (key, seen) in sequences {
        let Some(&smallest) = seen.keys().next() else {
            continue;
        };
        let mut expected = check.start.map_or(smallest, |start| start.min(smallest));
        let mut previous: Option<SequenceAt> = None;
        for (sequence, locations) in seen {
            let here = SequenceAt {
                sequence,
                location: locations[0],
            };
            if sequence > expected {
                gaps.push(Gap {
                    key: key.clone(),
                    first_missing: expected,
                    last_missing: sequence - 1,
                    missing: (i128::from(sequence) - i128::from(expected)) as u64,
                    after: previous,
                    before: here,
                });
            }
            if locations.len() > 1 {
                duplicates.push(SequenceDuplicate {
                    key: key.clone(),
                    sequence,
                    locations,
                });
            }
            expected = sequence.saturating_add(1);
            previous = Some(here);
        }
    }
    SequenceReport {
        key: match &check.key {
            KeySource::Topic => "none".to_owned(),
            KeySource::Field(path) => format!("field '{path}'"),
            KeySource::RecordKey => "record key".to_owned(),
        },
        field: check.field.to_string(),
        start: check.start,
        records_checked,
        keys,
        duplicates,
        gaps,
        unchecked: skips.report(),
    }
}
