//! The audit report as text and as JSON.
//!
//! Owns [`AuditReport::to_text`] and [`AuditReport::to_json`], and how
//! durations and times read (`4m 05s`; RFC 3339 UTC timestamps, formatted
//! by `jiff`).
//!
//! Does not own what the report says ([`super::analysis`]).

use std::fmt::{self, Write as _};

use super::report::{
    AuditReport, DedupReport, EXIT_CLEAN, ListedTransaction, Location, OpenTransactionReport,
    PartitionReport, ProducerReport, SequenceReport, TransactionLookup, Unchecked,
};

impl AuditReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|error| {
            format!("{{\"error\": \"the report could not be serialized: {error}\"}}")
        })
    }

    /// The report as text, listing at most `max_listed` duplicates, gaps
    /// and the like per kind (0: all).
    pub fn to_text(&self, max_listed: usize) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out, max_listed);
        out
    }

    fn write_text(&self, out: &mut String, max_listed: usize) -> fmt::Result {
        writeln!(
            out,
            "exactly-audit: topic '{}' at {}, {} read at {}",
            self.topic,
            self.bootstrap,
            count(self.totals.partitions, "partition", "partitions"),
            timestamp_text(self.now_ms)
        )?;
        for partition in &self.partitions {
            writeln!(out)?;
            self.write_partition(out, partition)?;
        }
        writeln!(out)?;
        let t = &self.totals;
        let per_partition: Vec<String> = self
            .partitions
            .iter()
            .map(|p| format!("partition {}: {}", p.partition, p.visible_records))
            .collect();
        writeln!(
            out,
            "visible under read_committed: {} ({})",
            count(t.visible_records, "record", "records"),
            per_partition.join(", ")
        )?;
        writeln!(
            out,
            "transactions: {} committed ({}), {} aborted ({}), {} open ({}); {}",
            t.counts.committed_transactions,
            count(t.counts.committed_records, "record", "records"),
            t.counts.aborted_transactions,
            count(t.counts.aborted_records, "record", "records"),
            t.counts.open_transactions,
            count(t.counts.open_records, "record", "records"),
            count(
                t.counts.non_transactional_records,
                "non-transactional record",
                "non-transactional records"
            ),
        )?;
        if let Some(note) = &self.open_age_note {
            writeln!(out, "note: {note}")?;
        }
        self.write_transactional_ids(out, max_listed)?;
        if let Some(sequence) = &self.sequence {
            writeln!(out)?;
            write_sequence(out, sequence, max_listed)?;
        }
        if let Some(dedup) = &self.dedup {
            writeln!(out)?;
            write_dedup(out, dedup, max_listed)?;
        }
        writeln!(out)?;
        self.write_result(out)
    }

    fn write_partition(&self, out: &mut String, p: &PartitionReport) -> fmt::Result {
        writeln!(
            out,
            "partition {}: offsets {}..{}, {} visible under read_committed",
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            count(p.visible_records, "record", "records")
        )?;
        let broker = if p.broker_last_stable_offset >= 0
            && p.broker_last_stable_offset != p.last_stable_offset
        {
            format!(" (the broker reports {})", p.broker_last_stable_offset)
        } else {
            String::new()
        };
        match p.open_transactions.split_first() {
            None => writeln!(
                out,
                "  last stable offset {}{broker} = high watermark: no open transaction",
                p.last_stable_offset
            )?,
            Some((oldest, others)) => {
                writeln!(
                    out,
                    "  last stable offset {}{broker}, high watermark {}: stuck {} behind the open \
                     transaction of {}",
                    p.last_stable_offset,
                    p.high_watermark,
                    oldest.open_for_ms.map_or(
                        "(for how long is unknown)".to_owned(),
                        |ms| format!("for {}", duration_text(ms))
                    ),
                    open_text(oldest)
                )?;
                for other in others {
                    writeln!(out, "  also open: {}", open_text(other))?;
                }
            }
        }
        for producer in &p.producers {
            writeln!(out, "  {}", producer_text(producer))?;
        }
        Ok(())
    }

    fn write_transactional_ids(&self, out: &mut String, max_listed: usize) -> fmt::Result {
        match &self.transactional_ids {
            TransactionLookup::NotRequested => Ok(()),
            TransactionLookup::Unsupported { prefix, reason } => writeln!(
                out,
                "transactional ids with prefix '{prefix}': the broker does not support \
                 ListTransactions; open transactions by producer id: {}\n  why: {reason}",
                self.open_by_producer_id()
            ),
            TransactionLookup::Failed { prefix, error } => writeln!(
                out,
                "transactional ids with prefix '{prefix}': the look-up failed ({error}); open \
                 transactions by producer id: {}",
                self.open_by_producer_id()
            ),
            TransactionLookup::Listed {
                prefix,
                transactions,
                describe_note,
            } => {
                writeln!(
                    out,
                    "transactional ids with prefix '{prefix}': {}",
                    count(
                        transactions.len() as u64,
                        "open transaction",
                        "open transactions"
                    )
                )?;
                for listed in limited(transactions, max_listed) {
                    writeln!(out, "  {}", listed_text(listed))?;
                }
                write_more(out, transactions.len(), max_listed)?;
                if let Some(note) = describe_note {
                    writeln!(out, "  note: {note}")?;
                }
                Ok(())
            }
        }
    }

    /// `5 (partition 0 from offset 12, open for 3.2s), ...` or `none`.
    fn open_by_producer_id(&self) -> String {
        let open: Vec<String> = self
            .partitions
            .iter()
            .flat_map(|p| {
                p.open_transactions.iter().map(move |t| {
                    let age = t.open_for_ms.map_or(String::new(), |ms| {
                        format!(", open for {}", duration_text(ms))
                    });
                    format!(
                        "{} (partition {} from offset {}{age})",
                        t.producer_id, p.partition, t.first_offset
                    )
                })
            })
            .collect();
        if open.is_empty() {
            "none".to_owned()
        } else {
            open.join(", ")
        }
    }

    fn write_result(&self, out: &mut String) -> fmt::Result {
        let f = &self.findings;
        let open = count(f.open_transactions, "open transaction", "open transactions");
        let open = if f.fail_on_open || f.open_transactions == 0 {
            open
        } else {
            format!("{open} (not a failure without --fail-on-open)")
        };
        writeln!(
            out,
            "result: {}: {}, {}, {open}; exit code {}",
            if self.exit_code == EXIT_CLEAN {
                "OK"
            } else {
                "FAIL"
            },
            count(f.duplicates, "duplicate", "duplicates"),
            count(f.gaps, "gap", "gaps"),
            self.exit_code
        )
    }
}

fn write_sequence(out: &mut String, s: &SequenceReport, max_listed: usize) -> fmt::Result {
    let start = s.start.map_or("from each key's smallest".to_owned(), |n| {
        format!("from {n}")
    });
    writeln!(
        out,
        "sequence check: key {}, sequence field '{}', expected contiguous {start} \
         (locations are partition/offset)",
        s.key, s.field
    )?;
    writeln!(
        out,
        "  {} checked, {}",
        count(s.records_checked, "record", "records"),
        count(s.keys, "key", "keys")
    )?;
    for d in limited(&s.duplicates, max_listed) {
        writeln!(
            out,
            "  duplicate: {}sequence {} {} times, at {}",
            key_prefix(d.key.as_deref()),
            d.sequence,
            d.locations.len(),
            join(&d.locations)
        )?;
    }
    write_more(out, s.duplicates.len(), max_listed)?;
    for g in limited(&s.gaps, max_listed) {
        let range = if g.first_missing == g.last_missing {
            format!("sequence {} missing", g.first_missing)
        } else {
            format!(
                "sequences {}..={} missing ({})",
                g.first_missing, g.last_missing, g.missing
            )
        };
        let after = g.after.map_or(String::new(), |a| {
            format!("after sequence {} at {}, ", a.sequence, a.location)
        });
        writeln!(
            out,
            "  gap: {}{range}: {after}before sequence {} at {}",
            key_prefix(g.key.as_deref()),
            g.before.sequence,
            g.before.location
        )?;
    }
    write_more(out, s.gaps.len(), max_listed)?;
    write_unchecked(out, &s.unchecked)
}

fn write_dedup(out: &mut String, d: &DedupReport, max_listed: usize) -> fmt::Result {
    writeln!(
        out,
        "duplicate check: identity from {} (locations are partition/offset)",
        d.source
    )?;
    writeln!(
        out,
        "  {} checked, {} distinct",
        count(d.records_checked, "record", "records"),
        d.distinct
    )?;
    for dup in limited(&d.duplicates, max_listed) {
        writeln!(
            out,
            "  duplicate: {} {} times, at {}",
            quoted(&dup.value),
            dup.locations.len(),
            join(&dup.locations)
        )?;
    }
    write_more(out, d.duplicates.len(), max_listed)?;
    write_unchecked(out, &d.unchecked)
}

fn write_unchecked(out: &mut String, unchecked: &[Unchecked]) -> fmt::Result {
    for u in unchecked {
        writeln!(
            out,
            "  unchecked: {}: {} (first at {})",
            count(u.records, "record", "records"),
            u.reason,
            u.first
        )?;
    }
    Ok(())
}

fn limited<T>(items: &[T], max_listed: usize) -> &[T] {
    if max_listed == 0 {
        items
    } else {
        &items[..items.len().min(max_listed)]
    }
}

fn write_more(out: &mut String, total: usize, max_listed: usize) -> fmt::Result {
    if max_listed > 0 && total > max_listed {
        writeln!(
            out,
            "  ... and {} more (--max-listed 0 lists all)",
            total - max_listed
        )?;
    }
    Ok(())
}

fn key_prefix(key: Option<&str>) -> String {
    key.map_or(String::new(), |k| format!("key {} ", quoted(k)))
}

/// A string in JSON quotes, so that spaces and empty strings show.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("'{text}'"))
}

fn join(locations: &[Location]) -> String {
    locations
        .iter()
        .map(Location::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn open_text(t: &OpenTransactionReport) -> String {
    let id = t
        .transactional_id
        .as_ref()
        .map_or(String::new(), |id| format!(" (transactional id '{id}')"));
    let first = t.first_record_timestamp_ms.map_or(String::new(), |ms| {
        format!(", first record at {}", timestamp_text(ms))
    });
    format!(
        "producer id {}{id}, epoch {}: {} from offset {}{first}",
        t.producer_id,
        t.producer_epoch,
        count(t.records, "record", "records"),
        t.first_offset
    )
}

fn producer_text(p: &ProducerReport) -> String {
    let mut parts = Vec::new();
    let mut transactions = |n: u64, records: u64, kind: &str| {
        if n > 0 {
            parts.push(format!(
                "{n} {kind} ({})",
                count(records, "record", "records")
            ));
        }
    };
    transactions(
        p.counts.committed_transactions,
        p.counts.committed_records,
        "committed",
    );
    transactions(
        p.counts.aborted_transactions,
        p.counts.aborted_records,
        "aborted",
    );
    transactions(p.counts.open_transactions, p.counts.open_records, "open");
    if p.counts.non_transactional_records > 0 {
        parts.push(count(
            p.counts.non_transactional_records,
            "non-transactional record",
            "non-transactional records",
        ));
    }
    let who = if p.producer_id < 0 {
        "no producer id".to_owned()
    } else {
        format!("producer id {}", p.producer_id)
    };
    format!("{who}: {}", parts.join(", "))
}

fn listed_text(t: &ListedTransaction) -> String {
    let mut text = format!(
        "'{}': producer id {}, {}",
        t.transactional_id, t.producer_id, t.state
    );
    if let Some(epoch) = t.producer_epoch {
        let _ = write!(text, ", epoch {epoch}");
    }
    if let (Some(start), Some(age)) = (t.start_time_ms, t.open_for_ms) {
        let _ = write!(
            text,
            ", started {} ({} ago)",
            timestamp_text(start),
            duration_text(age)
        );
    }
    if let Some(timeout) = t.timeout_ms {
        let _ = write!(text, ", timeout {}", duration_text(i64::from(timeout)));
    }
    if !t.partitions_in_topic.is_empty() {
        let partitions: Vec<String> = t.partitions_in_topic.iter().map(i32::to_string).collect();
        let _ = write!(
            text,
            ", partitions of this topic: {}",
            partitions.join(", ")
        );
    }
    if !t.open_in_log.is_empty() {
        let _ = write!(text, ", open in this topic at {}", join(&t.open_in_log));
    }
    text
}

/// A duration in milliseconds as `450ms`, `12.3s`, `4m 05s`, `2h 03m 04s`
/// or `3d 04h 05m`.
fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    let seconds = ms / 1000;
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if ms < 1000 {
        format!("{ms}ms")
    } else if seconds < 60 {
        format!("{}.{}s", seconds, (ms % 1000) / 100)
    } else if hours == 0 {
        format!("{minutes}m {:02}s", seconds % 60)
    } else if days == 0 {
        format!("{hours}h {:02}m {:02}s", minutes % 60, seconds % 60)
    } else {
        format!("{days}d {:02}h {:02}m", hours % 24, minutes % 60)
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp with
/// milliseconds (`2023-11-14T22:15:00.000Z`); out of `jiff`'s range (years
/// -9999 to 9999), the raw milliseconds.
fn timestamp_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| format!("{ms} ms since the epoch"),
        |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::audit::fixtures::*;
    use crate::audit::report::Lookups;

    #[test]
    fn the_json_report_holds_everything() {
        let values = [keyed("a", 0), keyed("a", 0), keyed("a", 2)];
        let report = analyze(
            with_checks("--key-field key --seq-field seq --prefix p"),
            &[
                log(0, &values.each_ref().map(String::as_str)),
                transactional_log(),
            ],
            Lookups {
                transactions: TransactionLookup::Failed {
                    prefix: "p".to_owned(),
                    error: "refused".to_owned(),
                },
                ..Lookups::none(NOW)
            },
        );
        let json: Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
        assert_eq!(json["topic"], "t");
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["totals"]["visible_records"], 6);
        assert_eq!(json["partitions"][1]["last_stable_offset"], 5);
        assert_eq!(
            json["partitions"][1]["open_transactions"][0]["producer_id"],
            9
        );
        assert_eq!(
            json["partitions"][1]["producers"][1]["committed_records"],
            2
        );
        assert_eq!(
            json["sequence"]["duplicates"][0]["locations"][1]["offset"],
            1
        );
        assert_eq!(json["sequence"]["gaps"][0]["first_missing"], 1);
        assert_eq!(
            json["sequence"]["gaps"][0]["before"]["location"]["offset"],
            2
        );
        assert_eq!(json["transactional_ids"]["status"], "failed");
        assert_eq!(json["findings"]["duplicates"], 1);
        assert_eq!(json["dedup"], Value::Null);
    }

    #[test]
    fn durations_and_timestamps_read_well() {
        assert_eq!(duration_text(-5), "0ms");
        assert_eq!(duration_text(450), "450ms");
        assert_eq!(duration_text(12_345), "12.3s");
        assert_eq!(duration_text(245_000), "4m 05s");
        assert_eq!(duration_text(7_384_000), "2h 03m 04s");
        assert_eq!(duration_text(273_900_000), "3d 04h 05m");
        assert_eq!(timestamp_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp_text(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            timestamp_text(1_700_000_100_000),
            "2023-11-14T22:15:00.000Z"
        );
        assert_eq!(timestamp_text(-1), "1969-12-31T23:59:59.999Z");
    }
}
