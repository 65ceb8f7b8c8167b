//! `exactly-kafka-tools`: the tools around exactly-once Kafka deployments.
//!
//! | module | owns |
//! |---|---|
//! | [`audit`] | the `exactly-audit` report: transactions, visibility, duplicates, gaps, stuck last stable offsets; its command line |
//! | [`cluster`] | the tools' `--property` and `--properties-file` flags, and handing the properties to a child process |
//! | [`logging`] | the subscriber both binaries install: `tracing` events to stderr, filtered by `RUST_LOG` |
//! | `testing` | (feature `test-support`) helpers for tests against a real broker: its address, unique topics, rdkafka clients |
//! | [`oracle`] | the two independent read_committed oracles (the raw committed reader and an rdkafka consumer) compared record by record, and the check that nothing is left open on a topic |
//!
//! Binaries: `exactly-audit` (check a topic of an exactly-once deployment)
//! and `exactly-crash-harness` (kill the exactly-once pipeline at every
//! phase of the checkpoint protocol and check its output).
//!
//! Does not own the connector (`exactly-kafka`) or the raw protocol client
//! (`exactly-kafka-wire`); it uses both. Nothing below it imports it, except
//! as a dev-dependency for the oracles in tests. The crash harness is a
//! binary only: its pipeline, child process and checks are in
//! `src/bin/exactly-crash-harness/`.

pub mod audit;
pub mod cluster;
pub mod logging;
pub mod oracle;
#[cfg(feature = "test-support")]
pub mod testing;
