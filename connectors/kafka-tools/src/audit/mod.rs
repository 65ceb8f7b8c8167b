//! The audit of an exactly-once topic: the library behind the
//! `exactly-audit` binary (see `docs/audit.md`).
//!
//! | module | owns |
//! |---|---|
//! | [`options`] | what to audit ([`AuditOptions`], the checks), and the command line ([`AuditArgs`]) |
//! | [`analysis`] | [`Analyzer`]: partition logs in, report out; no I/O |
//! | `checks` | the record checks: keys, sequence numbers and identities read from records, the sequence check's verdict |
//! | [`report`] | [`AuditReport`] and its parts, the exit codes |
//! | [`render`] | the report as text and as JSON |
//! | [`probe`] | [`audit`]: reading the partitions and the look-ups beyond the committed reader |
//!
//! Imports run one way: `probe` → `analysis` → `checks` → `report`, `options`;
//! `render` → `report`.
//!
//! Does not own reading partitions or the read_committed rule
//! (`exactly-kafka-wire`).

pub mod analysis;
mod checks;
#[cfg(test)]
mod fixtures;
pub mod options;
pub mod probe;
pub mod render;
pub mod report;

pub use analysis::Analyzer;
pub use options::{
    AuditArgs, AuditOptions, CliOptions, DedupSource, FieldPath, InvalidFieldPath, KeySource,
    SequenceCheck, usage_line,
};
pub use probe::{audit, now_ms};
pub use report::{
    AuditReport, DedupReport, EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, Findings, Gap,
    ListedTransaction, Location, Lookups, OpenTransactionReport, PartitionReport, ProducerReport,
    SequenceAt, SequenceDuplicate, SequenceReport, Totals, TransactionLookup, Unchecked,
    ValueDuplicate,
};
