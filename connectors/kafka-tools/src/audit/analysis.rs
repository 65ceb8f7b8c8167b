//! The analysis of an audited topic.
//!
//! Owns [`Analyzer`]: fed one [`PartitionLog`] at a time, it summarises
//! transactions per partition and producer id, the records visible under
//! read_committed and the last stable offset, and runs the record checks —
//! duplicate and missing sequence numbers per key ([`super::SequenceCheck`]) and
//! plain duplicate detection ([`DedupSource`]) — on fields of JSON record
//! values or on record keys. [`Analyzer::finish`] adds what the cluster
//! probe found ([`Lookups`]) and decides the exit code.
//!
//! Does not own reading the partitions or asking the cluster
//! ([`super::probe`]), nor printing ([`super::render`]). It is pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use exactly_kafka_wire::PartitionLog;

use super::checks::{RecordView, Skips, sequence_report};
use super::options::{AuditOptions, DedupSource};
use super::report::{
    AuditReport, DedupReport, EXIT_CLEAN, EXIT_FINDINGS, Findings, Location, Lookups,
    OpenTransactionReport, PartitionReport, ProducerReport, Totals, TransactionLookup,
    ValueDuplicate,
};

/// The analysis: fed one [`PartitionLog`] at a time (so a topic never has
/// to be held in memory whole), it keeps the partition summaries and what
/// the checks need, and [`Analyzer::finish`] turns them into the report.
#[derive(Debug)]
pub struct Analyzer {
    options: AuditOptions,
    partitions: Vec<PartitionReport>,
    sequences: BTreeMap<Option<String>, BTreeMap<i64, Vec<Location>>>,
    sequence_skips: Skips,
    sequence_checked: u64,
    identities: BTreeMap<String, Vec<Location>>,
    dedup_skips: Skips,
    dedup_checked: u64,
}

impl Analyzer {
    /// An analysis with the checks of `options`.
    pub fn new(options: AuditOptions) -> Self {
        Self {
            options,
            partitions: Vec::new(),
            sequences: BTreeMap::new(),
            sequence_skips: Skips::default(),
            sequence_checked: 0,
            identities: BTreeMap::new(),
            dedup_skips: Skips::default(),
            dedup_checked: 0,
        }
    }

    /// Adds one partition. Partitions should come in ascending order, so
    /// that locations list in log order.
    pub fn add_partition(&mut self, log: &PartitionLog) {
        self.partitions.push(PartitionReport {
            partition: log.partition,
            log_start_offset: log.log_start_offset,
            high_watermark: log.high_watermark,
            last_stable_offset: log.last_stable_offset,
            broker_last_stable_offset: log.broker_last_stable_offset,
            visible_records: log.records.len() as u64,
            producers: log
                .producers
                .iter()
                .map(|(&producer_id, &counts)| ProducerReport {
                    producer_id,
                    counts,
                })
                .collect(),
            open_transactions: log
                .open_transactions
                .iter()
                .map(|t| OpenTransactionReport {
                    producer_id: t.producer_id,
                    producer_epoch: t.producer_epoch,
                    first_offset: t.first_offset,
                    records: t.records,
                    first_record_timestamp_ms: None,
                    open_for_ms: None,
                    transactional_id: None,
                })
                .collect(),
            stuck_for_ms: None,
        });
        for record in &log.records {
            let at = Location {
                partition: log.partition,
                offset: record.offset,
            };
            let mut view = RecordView::new(record);
            if let Some(check) = &self.options.sequence {
                let keyed = view
                    .key(&check.key)
                    .and_then(|key| Ok((key, view.sequence(&check.field)?)));
                match keyed {
                    Ok((key, sequence)) => {
                        self.sequence_checked += 1;
                        self.sequences
                            .entry(key)
                            .or_default()
                            .entry(sequence)
                            .or_default()
                            .push(at);
                    }
                    Err(reason) => self.sequence_skips.add(reason, at),
                }
            }
            if let Some(source) = &self.options.dedup {
                match view.identity(source) {
                    Ok(identity) => {
                        self.dedup_checked += 1;
                        self.identities.entry(identity).or_default().push(at);
                    }
                    Err(reason) => self.dedup_skips.add(reason, at),
                }
            }
        }
    }

    /// The open transactions found so far: partition and first offset.
    pub fn open_transactions(&self) -> Vec<Location> {
        self.partitions
            .iter()
            .flat_map(|p| {
                p.open_transactions.iter().map(|t| Location {
                    partition: p.partition,
                    offset: t.first_offset,
                })
            })
            .collect()
    }

    /// The report, with ages and transactional ids from `lookups`.
    pub fn finish(self, lookups: Lookups) -> AuditReport {
        let now_ms = lookups.now_ms;
        let transactions = self.name_listed_transactions(lookups.transactions);
        let mut partitions = self.partitions;
        for partition in &mut partitions {
            for open in &mut partition.open_transactions {
                let timestamp = lookups
                    .first_record_timestamps
                    .get(&(partition.partition, open.first_offset))
                    .copied();
                open.first_record_timestamp_ms = timestamp;
                open.open_for_ms = timestamp.map(|t| now_ms.saturating_sub(t).max(0));
                open.transactional_id = listed_id(&transactions, open.producer_id);
            }
            partition.stuck_for_ms = partition
                .open_transactions
                .first()
                .and_then(|t| t.open_for_ms);
        }
        let totals = totals(&partitions);
        let sequence = self.options.sequence.as_ref().map(|check| {
            sequence_report(
                check,
                self.sequences,
                self.sequence_checked,
                self.sequence_skips,
            )
        });
        let dedup = self.options.dedup.as_ref().map(|source| DedupReport {
            source: match source {
                DedupSource::Field(path) => format!("field '{path}'"),
                DedupSource::RecordKey => "record key".to_owned(),
            },
            records_checked: self.dedup_checked,
            distinct: self.identities.len() as u64,
            duplicates: self
                .identities
                .into_iter()
                .filter(|(_, at)| at.len() > 1)
                .map(|(value, locations)| ValueDuplicate { value, locations })
                .collect(),
            unchecked: self.dedup_skips.report(),
        });
        let in_log: BTreeSet<i64> = partitions
            .iter()
            .flat_map(|p| p.open_transactions.iter().map(|t| t.producer_id))
            .collect();
        let listed_elsewhere = match &transactions {
            TransactionLookup::Listed { transactions, .. } => transactions
                .iter()
                .filter(|t| !in_log.contains(&t.producer_id))
                .count() as u64,
            _ => 0,
        };
        let findings = Findings {
            duplicates: sequence.as_ref().map_or(0, |s| s.duplicates.len() as u64)
                + dedup.as_ref().map_or(0, |d| d.duplicates.len() as u64),
            gaps: sequence.as_ref().map_or(0, |s| s.gaps.len() as u64),
            open_transactions: totals.counts.open_transactions + listed_elsewhere,
            fail_on_open: self.options.fail_on_open,
        };
        let failed = findings.duplicates > 0
            || findings.gaps > 0
            || (findings.fail_on_open && findings.open_transactions > 0);
        AuditReport {
            topic: self.options.topic,
            bootstrap: self.options.bootstrap,
            now_ms,
            partitions,
            totals,
            open_age_note: lookups.open_age_note,
            sequence,
            dedup,
            transactional_ids: transactions,
            findings,
            exit_code: if failed { EXIT_FINDINGS } else { EXIT_CLEAN },
        }
    }

    /// Fills in, for each listed transaction, where the logs read hold an
    /// open transaction of its producer id.
    fn name_listed_transactions(&self, lookup: TransactionLookup) -> TransactionLookup {
        match lookup {
            TransactionLookup::Listed {
                prefix,
                mut transactions,
                describe_note,
            } => {
                for listed in &mut transactions {
                    listed.open_in_log = self
                        .partitions
                        .iter()
                        .flat_map(|p| {
                            p.open_transactions
                                .iter()
                                .filter(|t| t.producer_id == listed.producer_id)
                                .map(|t| Location {
                                    partition: p.partition,
                                    offset: t.first_offset,
                                })
                        })
                        .collect();
                }
                TransactionLookup::Listed {
                    prefix,
                    transactions,
                    describe_note,
                }
            }
            other => other,
        }
    }
}

fn listed_id(lookup: &TransactionLookup, producer_id: i64) -> Option<String> {
    match lookup {
        TransactionLookup::Listed { transactions, .. } => transactions
            .iter()
            .find(|t| t.producer_id == producer_id)
            .map(|t| t.transactional_id.clone()),
        _ => None,
    }
}

fn totals(partitions: &[PartitionReport]) -> Totals {
    let mut totals = Totals {
        partitions: partitions.len() as u64,
        ..Totals::default()
    };
    for partition in partitions {
        totals.visible_records += partition.visible_records;
        for p in &partition.producers {
            totals.counts.add(&p.counts);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use exactly_kafka_wire::TransactionCounts;

    use super::*;
    use crate::audit::checks::key_text;
    use crate::audit::fixtures::*;
    use crate::audit::report::{Gap, ListedTransaction, SequenceAt, SequenceDuplicate, Unchecked};

    #[test]
    fn duplicates_and_gaps_are_named_by_key_sequence_and_location() {
        let p0 = [
            keyed("a", 0),
            keyed("a", 1),
            keyed("b", 0),
            keyed("a", 1),
            keyed("b", 3),
        ];
        let p1 = [keyed("a", 2), keyed("b", 4), keyed("a", 5), keyed("b", 4)];
        let report = analyze(
            with_checks("--key-field key --seq-field seq"),
            &[
                log(0, &p0.each_ref().map(String::as_str)),
                log(1, &p1.each_ref().map(String::as_str)),
            ],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().expect("a sequence report");
        assert_eq!((sequence.records_checked, sequence.keys), (9, 2));
        assert_eq!(
            sequence.duplicates,
            [
                SequenceDuplicate {
                    key: Some("a".to_owned()),
                    sequence: 1,
                    locations: vec![at(0, 1), at(0, 3)],
                },
                SequenceDuplicate {
                    key: Some("b".to_owned()),
                    sequence: 4,
                    locations: vec![at(1, 1), at(1, 3)],
                },
            ]
        );
        assert_eq!(
            sequence.gaps,
            [
                Gap {
                    key: Some("a".to_owned()),
                    first_missing: 3,
                    last_missing: 4,
                    missing: 2,
                    after: Some(SequenceAt {
                        sequence: 2,
                        location: at(1, 0),
                    }),
                    before: SequenceAt {
                        sequence: 5,
                        location: at(1, 2),
                    },
                },
                Gap {
                    key: Some("b".to_owned()),
                    first_missing: 1,
                    last_missing: 2,
                    missing: 2,
                    after: Some(SequenceAt {
                        sequence: 0,
                        location: at(0, 2),
                    }),
                    before: SequenceAt {
                        sequence: 3,
                        location: at(0, 4),
                    },
                },
            ]
        );
        assert!(sequence.unchecked.is_empty());
        assert_eq!((report.findings.duplicates, report.findings.gaps), (2, 2));
        assert_eq!(report.exit_code, EXIT_FINDINGS);

        let text = report.to_text(0);
        for line in [
            r#"  duplicate: key "a" sequence 1 2 times, at 0/1, 0/3"#,
            r#"  gap: key "a" sequences 3..=4 missing (2): after sequence 2 at 1/0, before sequence 5 at 1/2"#,
            "  9 records checked, 2 keys",
            "result: FAIL: 2 duplicates, 2 gaps, 0 open transactions; exit code 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn sequence_start_finds_a_gap_before_the_first_sequence_number() {
        let values = [keyed("a", 2), keyed("a", 3), keyed("b", 0)];
        let report = analyze(
            with_checks("--key-field key --seq-field seq --seq-start 0"),
            &[log(0, &values.each_ref().map(String::as_str))],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(
            sequence.gaps,
            [Gap {
                key: Some("a".to_owned()),
                first_missing: 0,
                last_missing: 1,
                missing: 2,
                after: None,
                before: SequenceAt {
                    sequence: 2,
                    location: at(0, 0),
                },
            }]
        );
        assert!(
            report
                .to_text(20)
                .contains(r#"gap: key "a" sequences 0..=1 missing (2): before sequence 2 at 0/0"#)
        );
    }

    #[test]
    fn without_a_key_option_the_whole_topic_is_one_sequence() {
        let report = analyze(
            with_checks("--seq-field n"),
            &[
                log(0, &[r#"{"n":0}"#, r#"{"n":"1"}"#]),
                log(1, &[r#"{"n":3}"#]),
            ],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(sequence.key, "none");
        assert_eq!(sequence.keys, 1);
        assert_eq!(sequence.gaps.len(), 1);
        assert_eq!(
            (sequence.gaps[0].key.clone(), sequence.gaps[0].first_missing),
            (None, 2)
        );
        assert!(report.to_text(20).contains(
            "  gap: sequence 2 missing: after sequence 1 at 0/1, before sequence 3 at 1/0"
        ));
    }

    #[test]
    fn record_keys_serve_as_keys_utf8_or_hex() {
        let mut records = log(0, &[r#"{"s":0}"#, r#"{"s":0}"#, r#"{"s":0}"#, r#"{"s":1}"#]);
        records.records[0].key = Some(Bytes::from_static(b"user-1"));
        records.records[1].key = Some(Bytes::from_static(&[0xff, 0x00]));
        records.records[2].key = Some(Bytes::from_static(b"user-1"));
        let report = analyze(
            with_checks("--key-from-record-key --seq-field s"),
            &[records],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(sequence.key, "record key");
        assert_eq!(sequence.records_checked, 3);
        assert_eq!(sequence.duplicates.len(), 1);
        assert_eq!(sequence.duplicates[0].key.as_deref(), Some("user-1"));
        assert_eq!(
            sequence.unchecked,
            [Unchecked {
                reason: "null record key".to_owned(),
                records: 1,
                first: at(0, 3),
            }]
        );
        assert_eq!(key_text(&[0xff, 0x00]), "0xff00");
    }

    #[test]
    fn unreadable_records_are_counted_by_reason_and_do_not_fail_the_audit() {
        let mut records = log(
            0,
            &[
                r#"{"key":"a","seq":0}"#,
                "not json",
                r#"{"key":"a"}"#,
                r#"{"key":"a","seq":1.5}"#,
                r#"{"key":"a","seq":"x"}"#,
                r#"{"seq":1}"#,
                "",
                "also not json",
            ],
        );
        records.records[6].value = None;
        let report = analyze(
            with_checks("--key-field key --seq-field seq"),
            &[records],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(sequence.records_checked, 1);
        let reasons: Vec<(&str, u64, Location)> = sequence
            .unchecked
            .iter()
            .map(|u| (u.reason.as_str(), u.records, u.first))
            .collect();
        assert_eq!(
            reasons,
            [
                ("field 'seq' is not an integer", 2, at(0, 3)),
                ("no field 'key'", 1, at(0, 5)),
                ("no field 'seq'", 1, at(0, 2)),
                ("null value", 1, at(0, 6)),
                ("value is not JSON", 2, at(0, 1)),
            ]
        );
        assert_eq!(report.exit_code, EXIT_CLEAN);
        assert!(
            report
                .to_text(20)
                .contains("  unchecked: 2 records: value is not JSON (first at 0/1)")
        );
    }

    #[test]
    fn plain_duplicate_detection_of_a_field_or_the_record_key() {
        let values = [
            r#"{"id":"x","n":1}"#,
            r#"{"id":7}"#,
            r#"{"id":"x"}"#,
            r#"{"id":"7"}"#,
            r#"{"id":{"deep":true}}"#,
            r#"{"other":1}"#,
        ];
        let report = analyze(
            with_checks("--dedup-field id"),
            &[log(0, &values), log(1, &[r#"{"id":"x"}"#])],
            Lookups::none(NOW),
        );
        let dedup = report.dedup.as_ref().expect("a dedup report");
        assert_eq!(dedup.source, "field 'id'");
        assert_eq!((dedup.records_checked, dedup.distinct), (6, 3));
        assert_eq!(
            dedup.duplicates,
            [
                ValueDuplicate {
                    value: "7".to_owned(),
                    locations: vec![at(0, 1), at(0, 3)],
                },
                ValueDuplicate {
                    value: "x".to_owned(),
                    locations: vec![at(0, 0), at(0, 2), at(1, 0)],
                },
            ]
        );
        assert_eq!(dedup.unchecked.len(), 1);
        assert_eq!(report.exit_code, EXIT_FINDINGS);
        assert!(
            report
                .to_text(1)
                .contains(r#"  duplicate: "7" 2 times, at 0/1, 0/3"#)
        );
        assert!(
            report
                .to_text(1)
                .contains("  ... and 1 more (--max-listed 0 lists all)")
        );

        let mut keyed = log(0, &["a", "b"]);
        keyed.records[0].key = Some(Bytes::from_static(b"k"));
        keyed.records[1].key = Some(Bytes::from_static(b"k"));
        let by_key = analyze(
            with_checks("--dedup-record-key"),
            &[keyed],
            Lookups::none(NOW),
        );
        assert_eq!(by_key.dedup.as_ref().unwrap().duplicates[0].value, "k");
        assert_eq!(by_key.findings.duplicates, 1);
    }

    #[test]
    fn a_clean_topic_exits_0_and_open_transactions_fail_only_when_asked() {
        let values = [keyed("a", 0), keyed("a", 1)];
        let clean = analyze(
            with_checks("--key-field key --seq-field seq"),
            &[log(0, &values.each_ref().map(String::as_str))],
            Lookups::none(NOW),
        );
        assert_eq!(clean.exit_code, EXIT_CLEAN);
        assert!(
            clean
                .to_text(20)
                .contains("result: OK: 0 duplicates, 0 gaps, 0 open transactions; exit code 0")
        );

        let open = analyze(with_checks(""), &[transactional_log()], Lookups::none(NOW));
        assert_eq!(open.findings.open_transactions, 1);
        assert_eq!(open.exit_code, EXIT_CLEAN);
        assert!(
            open.to_text(20)
                .contains("1 open transaction (not a failure without --fail-on-open); exit code 0")
        );
        let failing = analyze(
            with_checks("--fail-on-open"),
            &[transactional_log()],
            Lookups::none(NOW),
        );
        assert_eq!(failing.exit_code, EXIT_FINDINGS);
    }

    #[test]
    fn transactions_are_reported_per_partition_and_producer_with_the_stuck_lso() {
        let lookups = Lookups {
            first_record_timestamps: BTreeMap::from([((0, 5), NOW - 65_000)]),
            ..Lookups::none(NOW)
        };
        let report = analyze(
            with_checks(""),
            &[transactional_log(), log(1, &["x"])],
            lookups,
        );
        let p0 = &report.partitions[0];
        assert_eq!(p0.visible_records, 3);
        assert_eq!(p0.producers.len(), 4);
        assert_eq!(p0.open_transactions[0].open_for_ms, Some(65_000));
        assert_eq!(
            p0.open_transactions[0].first_record_timestamp_ms,
            Some(NOW - 65_000)
        );
        assert_eq!(p0.stuck_for_ms, Some(65_000));
        assert_eq!(report.partitions[1].stuck_for_ms, None);
        assert_eq!(
            report.totals,
            Totals {
                partitions: 2,
                visible_records: 4,
                counts: TransactionCounts {
                    committed_transactions: 1,
                    committed_records: 2,
                    aborted_transactions: 1,
                    aborted_records: 1,
                    open_transactions: 1,
                    open_records: 1,
                    non_transactional_records: 2,
                },
            }
        );
        let text = report.to_text(20);
        for line in [
            "partition 0: offsets 0..7, 3 records visible under read_committed",
            "  last stable offset 5, high watermark 7: stuck for 1m 05s behind the open transaction \
             of producer id 9, epoch 3: 1 record from offset 5, first record at 2023-11-14T22:13:55.000Z",
            "  no producer id: 1 non-transactional record",
            "  producer id 7: 1 committed (2 records)",
            "  producer id 8: 1 aborted (1 record)",
            "  producer id 9: 1 open (1 record)",
            "  last stable offset 1 = high watermark: no open transaction",
            "visible under read_committed: 4 records (partition 0: 3, partition 1: 1)",
            "transactions: 1 committed (2 records), 1 aborted (1 record), 1 open (1 record); 2 non-transactional records",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn an_unknown_age_and_a_differing_broker_lso_are_said() {
        let mut log = transactional_log();
        log.broker_last_stable_offset = 7;
        let report = analyze(
            with_checks(""),
            &[log],
            Lookups {
                open_age_note: Some("first record timestamps unreadable: 0/5: gone".to_owned()),
                ..Lookups::none(NOW)
            },
        );
        let text = report.to_text(20);
        assert!(text.contains(
            "last stable offset 5 (the broker reports 7), high watermark 7: stuck (for how long is unknown)"
        ), "{text}");
        assert!(text.contains("note: first record timestamps unreadable: 0/5: gone"));
    }

    #[test]
    fn without_list_transactions_open_transactions_are_listed_by_producer_id() {
        let report = analyze(
            with_checks("--prefix app-"),
            &[transactional_log()],
            Lookups {
                transactions: TransactionLookup::Unsupported {
                    prefix: "app-".to_owned(),
                    reason: "the broker at b:1 does not list ListTransactions in its API versions"
                        .to_owned(),
                },
                first_record_timestamps: BTreeMap::from([((0, 5), NOW - 2_500)]),
                ..Lookups::none(NOW)
            },
        );
        let text = report.to_text(20);
        assert!(
            text.contains(
                "transactional ids with prefix 'app-': the broker does not support \
                 ListTransactions; open transactions by producer id: 9 (partition 0 from \
                 offset 5, open for 2.5s)"
            ),
            "{text}"
        );
        assert_eq!(report.exit_code, EXIT_CLEAN);
    }

    fn listed(id: &str, producer_id: i64) -> ListedTransaction {
        ListedTransaction::new(
            id.to_owned(),
            producer_id,
            "Ongoing".to_owned(),
            "b:1".to_owned(),
        )
    }

    #[test]
    fn listed_transactions_name_the_open_ones_in_the_log_and_count_the_others() {
        let report = analyze(
            with_checks("--prefix app- --fail-on-open"),
            &[transactional_log()],
            Lookups {
                transactions: TransactionLookup::Listed {
                    prefix: "app-".to_owned(),
                    transactions: vec![listed("app-1", 9), listed("app-2", 12)],
                    describe_note: None,
                },
                ..Lookups::none(NOW)
            },
        );
        assert_eq!(
            report.partitions[0].open_transactions[0]
                .transactional_id
                .as_deref(),
            Some("app-1")
        );
        let TransactionLookup::Listed { transactions, .. } = &report.transactional_ids else {
            panic!("{:?}", report.transactional_ids);
        };
        assert_eq!(transactions[0].open_in_log, [at(0, 5)]);
        assert!(transactions[1].open_in_log.is_empty());
        assert_eq!(report.findings.open_transactions, 2);
        assert_eq!(report.exit_code, EXIT_FINDINGS);
        let text = report.to_text(20);
        assert!(text.contains("transactional ids with prefix 'app-': 2 open transactions"));
        assert!(text.contains("  'app-1': producer id 9, Ongoing, open in this topic at 0/5"));
        assert!(text.contains("producer id 9 (transactional id 'app-1'), epoch 3"));
    }
}
