//! A thin, blocking wrapper around one rdkafka producer: what the sink needs
//! to know about deliveries and about the producer's transactional identity.
//!
//! Owns: creating the producer (transactional or not), sending with bounded
//! waits on a full queue, and the callbacks that record delivery errors, the
//! partitions written, and the producer id and epoch from librdkafka's
//! statistics (`eos` block). Does not own when transactions begin or end:
//! that is the sink. Every method blocks; callers run on the blocking pool.
//!
//! A statistics snapshot is dated by librdkafka's own clock, the `ts` it
//! carries ([`RdClock`]), never by when its callback ran: the callback runs
//! on the producer's polling thread, possibly after a transaction began,
//! with a snapshot taken before it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;

use super::OutputRecord;
use crate::client::ClientSettings;

/// What the callbacks saw since the last [`SinkProducer::take_deliveries`].
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    pub(crate) errors: u64,
    pub(crate) first_error: Option<KafkaError>,
    /// The lowest offset delivered, per partition.
    pub(crate) first_offsets: BTreeMap<i32, i64>,
}

#[derive(Debug, Default)]
struct Seen {
    deliveries: Deliveries,
    /// `(producer id, epoch, txn_state, when taken)` from the newest
    /// statistics.
    identity: Option<(i64, i16, String, RdClock)>,
}

/// A time on librdkafka's clock (`rd_clock()`, microseconds): the clock
/// that dates its statistics (`ts`). It is `CLOCK_MONOTONIC`, except on
/// Apple systems, where librdkafka uses the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RdClock(i64);

impl RdClock {
    /// Now, on librdkafka's clock.
    #[cfg(not(target_vendor = "apple"))]
    pub(crate) fn now() -> Self {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        RdClock(now.tv_sec * 1_000_000 + now.tv_nsec / 1_000)
    }

    /// Now, on librdkafka's clock.
    #[cfg(target_vendor = "apple")]
    pub(crate) fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        RdClock(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
    }
}

/// The producer's callback context.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    seen: Arc<Mutex<Seen>>,
}

impl ClientContext for Tracker {
    fn stats(&self, statistics: Statistics) {
        if let Some(eos) = statistics.eos {
            let epoch = i16::try_from(eos.producer_epoch).unwrap_or(-1);
            let mut seen = self.seen.lock().expect("tracker poisoned");
            seen.identity = Some((
                eos.producer_id,
                epoch,
                eos.txn_state,
                RdClock(statistics.ts),
            ));
        }
    }
}

impl ProducerContext for Tracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut seen = self.seen.lock().expect("tracker poisoned");
        match result {
            Ok(message) => {
                let partition = rdkafka::Message::partition(message);
                let offset = rdkafka::Message::offset(message);
                let first = seen
                    .deliveries
                    .first_offsets
                    .entry(partition)
                    .or_insert(offset);
                *first = (*first).min(offset);
            }
            Err((error, _)) => {
                seen.deliveries.errors += 1;
                seen.deliveries
                    .first_error
                    .get_or_insert_with(|| error.clone());
            }
        }
    }
}

/// librdkafka's codes for an epoch that a newer producer with the same
/// transactional id (or the coordinator, aborting a timed-out transaction)
/// bumped: the broker's PRODUCER_FENCED and INVALID_PRODUCER_EPOCH, and the
/// local `_FENCED` that librdkafka raises for them.
fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// How often [`SinkProducer::flush`] checks whether everything was
/// delivered.
const FLUSH_CHECK: Duration = Duration::from_millis(1);

/// The producer's librdkafka properties before the settings' own, which
/// are applied last and so win.
fn defaults(
    settings: &ClientSettings,
    transactional_id: Option<(&str, Duration)>,
    idempotent: bool,
) -> Vec<(&'static str, String)> {
    // librdkafka refuses message and socket timeouts above the transaction
    // timeout.
    let bound = match transactional_id {
        Some((_, transaction_timeout)) => settings.timeout.min(transaction_timeout),
        None => settings.timeout,
    };
    let mut defaults = vec![
        ("enable.idempotence", idempotent.to_string()),
        ("message.timeout.ms", bound.as_millis().to_string()),
        ("socket.timeout.ms", bound.as_millis().to_string()),
    ];
    if let Some((id, transaction_timeout)) = transactional_id {
        defaults.push(("transactional.id", id.to_owned()));
        defaults.push((
            "transaction.timeout.ms",
            transaction_timeout.as_millis().to_string(),
        ));
        defaults.push(("statistics.interval.ms", "100".to_owned()));
    }
    defaults
}

/// One producer.
pub(crate) struct SinkProducer {
    producer: ThreadedProducer<Tracker>,
    tracker: Tracker,
    timeout: Duration,
    /// The identity of this producer's last committed transaction, and
    /// when that commit returned; cleared by anything that may give the
    /// producer a new epoch (initialising, aborting).
    committed: Mutex<Option<Committed>>,
}

/// A transaction commit that returned, with the identity it was made with.
#[derive(Debug, Clone, Copy)]
struct Committed {
    identity: (i64, i16),
    at: RdClock,
}

impl std::fmt::Debug for SinkProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkProducer").finish_non_exhaustive()
    }
}

impl SinkProducer {
    /// A producer; transactional when `transactional_id` is set, with
    /// statistics every 100 ms so that its producer id and epoch are known.
    pub(crate) fn create(
        settings: &ClientSettings,
        transactional_id: Option<(&str, Duration)>,
        idempotent: bool,
    ) -> Result<Self, KafkaError> {
        let tracker = Tracker::default();
        let producer = settings
            .config(&defaults(settings, transactional_id, idempotent))
            .create_with_context(tracker.clone())?;
        Ok(SinkProducer {
            producer,
            tracker,
            timeout: settings.timeout,
            committed: Mutex::new(None),
        })
    }

    /// Whether `error`, which this producer returned, means it was fenced:
    /// directly, or as the generic `_FATAL` that every call returns once
    /// the producer is in the fatal state fencing put it in.
    pub(crate) fn is_fenced(&self, error: &KafkaError) -> bool {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| is_fenced_code(code)),
            Some(code) => is_fenced_code(code),
            None => false,
        }
    }

    fn set_committed(&self, committed: Option<Committed>) {
        *self.committed.lock().expect("commit record poisoned") = committed;
    }

    pub(crate) fn init_transactions(&self) -> Result<(), KafkaError> {
        self.set_committed(None);
        self.producer.init_transactions(self.timeout)
    }

    pub(crate) fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Commits the open transaction, which ran as `identity` when known.
    pub(crate) fn commit_transaction(
        &self,
        identity: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        self.set_committed(None);
        self.producer.commit_transaction(self.timeout)?;
        self.set_committed(identity.map(|identity| Committed {
            identity,
            at: RdClock::now(),
        }));
        Ok(())
    }

    pub(crate) fn abort_transaction(&self) -> Result<(), KafkaError> {
        self.set_committed(None);
        self.producer.abort_transaction(self.timeout)
    }

    /// Enqueues `record`, waiting (bounded by the timeout) while the local
    /// queue is full.
    pub(crate) fn send(&self, topic: &str, record: &OutputRecord) -> Result<(), KafkaError> {
        // Read the clock only once the queue is full: not per record.
        let mut deadline = None;
        while !self.try_send(topic, record)? {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
            if Instant::now() >= deadline {
                return Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Enqueues `record` if librdkafka's local queue has room; `false`
    /// when it is full. Never waits.
    pub(crate) fn try_send(&self, topic: &str, record: &OutputRecord) -> Result<bool, KafkaError> {
        let mut base = BaseRecord::to(topic).payload(&record.value);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        if !record.headers.is_empty() {
            let headers = record.headers.iter().fold(OwnedHeaders::new(), |all, h| {
                all.insert(Header {
                    key: &h.key,
                    value: h.value.as_deref(),
                })
            });
            base = base.headers(headers);
        }
        match self.producer.send(base) {
            Ok(()) => Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
            Err((error, _)) => Err(error),
        }
    }

    /// Waits until every enqueued record is delivered or failed, bounded by
    /// the timeout.
    ///
    /// rdkafka's `flush(timeout)` waits for delivery reports by polling the
    /// producer's queue in slices of up to 100 ms, but this producer's own
    /// polling thread takes those reports, so each slice ran out in full:
    /// every pre-commit with records in flight took 100 ms or more. Here a
    /// zero-timeout flush (which also tells librdkafka to send lingering
    /// batches now) is repeated every millisecond instead.
    pub(crate) fn flush(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(FLUSH_CHECK);
                }
                done => return done,
            }
        }
    }

    /// What was delivered since the last call.
    pub(crate) fn take_deliveries(&self) -> Deliveries {
        std::mem::take(
            &mut self
                .tracker
                .seen
                .lock()
                .expect("tracker poisoned")
                .deliveries,
        )
    }

    /// The producer id and epoch of the transaction begun at `began`, from
    /// statistics (every 100 ms); waits up to the timeout for them.
    pub(crate) fn identity(&self, began: RdClock) -> Option<(i64, i16)> {
        let committed = *self.committed.lock().expect("commit record poisoned");
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(identity) = self.tracker.identity(began, committed) {
                return Some(identity);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Tracker {
    /// The identity of the transaction begun at `began`, if the newest
    /// statistics snapshot proves it.
    fn identity(&self, began: RdClock, committed: Option<Committed>) -> Option<(i64, i16)> {
        let seen = self.seen.lock().expect("tracker poisoned");
        current_identity(seen.identity.as_ref()?, began, committed)
    }
}

/// The identity of the transaction begun at `began`, if the statistics
/// snapshot `seen` proves it:
/// - a snapshot taken in that transaction shows it;
/// - so does one taken after the producer's previous commit that shows the
///   identity that commit was made with. Nothing that gives a producer a
///   new epoch (initialising, aborting, or a commit under the transaction
///   protocol of KIP-890, which bumps the epoch) happened since, so the
///   open transaction has that identity too. This spares a wait for the
///   next snapshot at every checkpoint.
fn current_identity(
    (id, epoch, state, at): &(i64, i16, String, RdClock),
    began: RdClock,
    committed: Option<Committed>,
) -> Option<(i64, i16)> {
    if *id < 0 {
        return None;
    }
    let in_transaction = *at >= began && state == "InTransaction";
    // The state rules out a snapshot that librdkafka made during the
    // commit and reported after it returned.
    let unchanged = committed.is_some_and(|c| *at >= c.at && c.identity == (*id, *epoch))
        && (state == "Ready" || state == "InTransaction");
    (in_transaction || unchanged).then_some((*id, *epoch))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::ClientContext;
    use rdkafka::producer::ThreadedProducer;
    use rdkafka::statistics::{ExactlyOnceSemantics, Statistics};

    use super::{Committed, RdClock, Tracker, current_identity};

    /// A statistics snapshot taken at `ts` (librdkafka's clock).
    fn snapshot(ts: RdClock, epoch: i64, state: &str) -> Statistics {
        Statistics {
            ts: ts.0,
            eos: Some(ExactlyOnceSemantics {
                txn_state: state.to_owned(),
                producer_id: 7,
                producer_epoch: epoch,
                ..ExactlyOnceSemantics::default()
            }),
            ..Statistics::default()
        }
    }

    /// Review finding 8 of issue 19: the callback runs on the producer's
    /// polling thread, so a snapshot taken in the previous transaction can
    /// arrive after this one began. Dated by its arrival, it passed for
    /// this transaction's identity although the epoch has moved since.
    #[test]
    fn a_snapshot_taken_before_the_transaction_began_is_not_its_identity_even_if_it_arrives_after()
    {
        let tracker = Tracker::default();
        let taken_before = RdClock::now();
        let began = RdClock(taken_before.0 + 1);
        tracker.stats(snapshot(taken_before, 3, "InTransaction"));
        assert_eq!(tracker.identity(began, None), None, "a stale snapshot");
        tracker.stats(snapshot(RdClock(began.0 + 1), 4, "InTransaction"));
        assert_eq!(tracker.identity(began, None), Some((7, 4)));
    }

    #[test]
    fn a_transactions_identity_comes_from_it_or_from_after_an_unchanged_commit() {
        let at = |ms: i64| RdClock(1_000_000 + ms * 1_000);
        let seen = |epoch: i16, state: &str, ms: i64| (7, epoch, state.to_owned(), at(ms));
        let committed = Some(Committed {
            identity: (7, 3),
            at: at(100),
        });
        let began = at(200);
        // Taken in the transaction: proof without a commit record.
        assert_eq!(
            current_identity(&seen(3, "InTransaction", 250), began, None),
            Some((7, 3))
        );
        // Taken after the previous commit, same identity: proof.
        assert_eq!(
            current_identity(&seen(3, "Ready", 150), began, committed),
            Some((7, 3))
        );
        // Before the transaction, and no commit to vouch for it.
        assert_eq!(current_identity(&seen(3, "Ready", 150), began, None), None);
        // After the commit, but the epoch moved (KIP-890 bumps it per commit).
        assert_eq!(
            current_identity(&seen(4, "Ready", 150), began, committed),
            None
        );
        // Made during the commit, reported after it.
        assert_eq!(
            current_identity(&seen(3, "CommitNotAcked", 150), began, committed),
            None
        );
        // Before the commit returned.
        assert_eq!(
            current_identity(&seen(3, "CommittingTransaction", 90), began, committed),
            None
        );
        // No producer id yet.
        assert_eq!(
            current_identity(&(-1, -1, "InTransaction".to_owned(), at(250)), began, None),
            None
        );
    }

    #[test]
    fn librdkafkas_clock_is_the_one_that_dates_its_statistics() {
        let tracker = Tracker::default();
        let before = RdClock::now();
        let _producer: ThreadedProducer<Tracker> = rdkafka::ClientConfig::new()
            .set("enable.idempotence", "true")
            .set("statistics.interval.ms", "10")
            .create_with_context(tracker.clone())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken = loop {
            let seen = tracker.seen.lock().unwrap().identity.clone();
            if let Some((_, _, _, taken)) = seen {
                break taken;
            }
            assert!(Instant::now() < deadline, "no statistics within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        };
        let after = RdClock::now();
        assert!(
            before <= taken && taken <= after,
            "a snapshot dated {taken:?} arrived between {before:?} and {after:?}"
        );
    }
}
