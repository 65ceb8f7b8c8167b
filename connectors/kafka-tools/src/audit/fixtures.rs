//! Test fixtures shared by the audit's unit tests: records, partition
//! logs and options.

use std::collections::BTreeMap;

use bytes::Bytes;
use exactly_kafka_wire::{OpenTransaction, PartitionLog, TransactionCounts, VisibleRecord};

use super::analysis::Analyzer;
use super::options::{AuditOptions, cli};
use super::report::{AuditReport, Location, Lookups};

/// The audit time of the tests, ms since the epoch.
pub(crate) const NOW: i64 = 1_700_000_100_000;

pub(crate) fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> VisibleRecord {
    VisibleRecord {
        offset,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: Vec::new(),
        timestamp: 1_000,
        producer_id: -1,
        transactional: false,
    }
}

pub(crate) fn keyed(key: &str, seq: i64) -> String {
    format!(r#"{{"key":"{key}","seq":{seq}}}"#)
}

/// A partition holding `values` at offsets 0.. (all non-transactional).
pub(crate) fn log(partition: i32, values: &[&str]) -> PartitionLog {
    let records: Vec<VisibleRecord> = values
        .iter()
        .enumerate()
        .map(|(offset, v)| record(offset as i64, None, Some(v)))
        .collect();
    let end = records.len() as i64;
    PartitionLog {
        topic: "t".to_owned(),
        partition,
        log_start_offset: 0,
        high_watermark: end,
        last_stable_offset: end,
        broker_last_stable_offset: end,
        producers: BTreeMap::from([(
            -1,
            TransactionCounts {
                non_transactional_records: end as u64,
                ..TransactionCounts::default()
            },
        )]),
        records,
        open_transactions: Vec::new(),
    }
}

/// Partition 0 with a committed, an aborted and an open transaction:
/// offsets 0-1 committed by 7, 2 its marker, 3 aborted by 8, 4 its
/// marker, 5 open of 9, 6 plain.
pub(crate) fn transactional_log() -> PartitionLog {
    let mut committed = record(0, None, Some("c0"));
    committed.producer_id = 7;
    committed.transactional = true;
    let mut committed_too = committed.clone();
    committed_too.offset = 1;
    PartitionLog {
        topic: "t".to_owned(),
        partition: 0,
        log_start_offset: 0,
        high_watermark: 7,
        last_stable_offset: 5,
        broker_last_stable_offset: 5,
        records: vec![committed, committed_too, record(6, None, Some("plain"))],
        producers: BTreeMap::from([
            (
                -1,
                TransactionCounts {
                    non_transactional_records: 1,
                    ..TransactionCounts::default()
                },
            ),
            (
                7,
                TransactionCounts {
                    committed_transactions: 1,
                    committed_records: 2,
                    ..TransactionCounts::default()
                },
            ),
            (
                8,
                TransactionCounts {
                    aborted_transactions: 1,
                    aborted_records: 1,
                    ..TransactionCounts::default()
                },
            ),
            (
                9,
                TransactionCounts {
                    open_transactions: 1,
                    open_records: 1,
                    ..TransactionCounts::default()
                },
            ),
        ]),
        open_transactions: vec![OpenTransaction {
            producer_id: 9,
            producer_epoch: 3,
            first_offset: 5,
            records: 1,
        }],
    }
}

pub(crate) fn analyze(
    options: AuditOptions,
    logs: &[PartitionLog],
    lookups: Lookups,
) -> AuditReport {
    let mut analyzer = Analyzer::new(options);
    for log in logs {
        analyzer.add_partition(log);
    }
    analyzer.finish(lookups)
}

pub(crate) fn with_checks(line: &str) -> AuditOptions {
    cli(&format!("--topic t {line}")).audit
}

pub(crate) fn at(partition: i32, offset: i64) -> Location {
    Location { partition, offset }
}
