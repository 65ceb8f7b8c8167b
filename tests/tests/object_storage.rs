//! Checkpoints in object storage, end to end, on the local S3 servers
//! `scripts/s3-up` starts (a test whose server is not running fails,
//! saying how to start it): a job resumes on a "new machine" from S3 alone;
//! a zombie is fenced by its successor; and, through the fault-injecting
//! proxy, a cut task-state upload, failed metadata writes, a slow and an
//! ambiguous claim CAS, and storage so slow that a checkpoint expires. In
//! every case the committed output is exactly once.

use std::sync::Arc;
use std::time::Duration;

use exactly::prelude::*;
use exactly::storage::{Location, ObjectStorage};
use exactly_s3_tools::proxy::{Fault, FaultProxy, Match, Outcome, Rule};
use exactly_s3_tools::servers::Server;
use exactly_tests::{assert_exactly_once, run_then_stop, runtime, wordcount_like};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// Checkpoint storage at a fresh prefix of `server`, reached through
/// `endpoint` (the server's, or a fault proxy's), with a client that gives
/// up on a request after 1 s and retries 3 times within 10 s.
fn storage(server: Server, endpoint: &str, url: &str) -> ObjectStorage {
    server.check().unwrap_or_else(|missing| panic!("{missing}"));
    let client = server
        .builder_via(endpoint)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(Duration::from_secs(1)),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        })
        .build()
        .unwrap();
    ObjectStorage::with_store(Arc::new(client), Location::parse(url).unwrap())
}

fn config(storage: ObjectStorage) -> JobConfig {
    JobConfig::new()
        .checkpoint_interval(Duration::from_millis(50))
        .checkpoint_timeout(Duration::from_secs(3))
        .checkpoint_storage(storage)
        .restart_strategy(RestartStrategy::fixed_delay(5, Duration::ZERO))
        .batch_size(16)
        .worker_threads(2)
}

/// Stopped, then started again as on a new machine (a new client, no
/// local state at all), the job resumes from S3 and its output is exact.
fn resumes_on_a_new_machine(server: Server) {
    let url = server.fresh_url("resume on a new machine");
    let sink = CollectSink::new();
    let records = 3000;
    let endpoint = server.endpoint();
    run_then_stop(wordcount_like(
        config(storage(server, &endpoint, &url)),
        records,
        2,
        sink.clone(),
    ));
    let after_stop = sink.committed().len() as u64;
    assert!(after_stop > 0 && after_stop < records, "{after_stop}");
    let metrics = runtime().block_on(async {
        wordcount_like(
            config(storage(server, &endpoint, &url)),
            records,
            2,
            sink.clone(),
        )
        .spawn()
        .unwrap()
        .join()
        .await
        .unwrap()
    });
    assert!(metrics.checkpoints_completed > 0, "{metrics:?}");
    assert_exactly_once(&sink.committed(), records);
}

#[test]
fn a_job_resumes_from_moto_on_a_new_machine_exactly() {
    resumes_on_a_new_machine(Server::Moto);
}

#[test]
fn a_job_resumes_from_seaweedfs_on_a_new_machine_exactly() {
    resumes_on_a_new_machine(Server::SeaweedFs);
}

/// The fencing test: a second start of the job on the same storage (a
/// successor on another machine) takes it over; the first, still running,
/// fails its next checkpoint with `Fenced`, naming the successor, and stops
/// without restarting; the successor finishes, and the output of both is
/// exactly once. On SeaweedFS, which enforces conditional writes under
/// concurrency (`docs/s3-servers.md`), and on moto, which does for
/// objects this small.
fn a_zombie_is_fenced_by_its_successor(server: Server) {
    let url = server.fresh_url("zombie fenced");
    let endpoint = server.endpoint();
    let sink = CollectSink::new();
    let records = 20_000;
    runtime().block_on(async {
        let zombie = wordcount_like(
            config(storage(server, &endpoint, &url)),
            records,
            2,
            sink.clone(),
        )
        .spawn()
        .unwrap();
        while zombie.metrics().checkpoints_completed < 2 {
            assert!(!zombie.is_finished(), "{:?}", zombie.join().await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let successor = wordcount_like(
            config(storage(server, &endpoint, &url)),
            records,
            2,
            sink.clone(),
        )
        .spawn()
        .unwrap();
        let zombie_metrics = zombie.metrics();
        let err = zombie.join().await.unwrap_err();
        assert!(err.is_unrecoverable(), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("was claimed by job `runtime-test`")
                && message.contains("generation 2"),
            "{message}"
        );
        assert_eq!(zombie_metrics.restarts, 0, "a fenced job must not restart");
        successor.join().await.unwrap();
    });
    assert_exactly_once(&sink.committed(), records);
}

#[test]
fn a_zombie_is_fenced_by_its_successor_on_seaweedfs() {
    a_zombie_is_fenced_by_its_successor(Server::SeaweedFs);
}

#[test]
fn a_zombie_is_fenced_by_its_successor_on_moto() {
    a_zombie_is_fenced_by_its_successor(Server::Moto);
}

/// A bucket that does not exist is an error at start that says to check
/// it, not a claim conflict.
#[test]
fn a_missing_bucket_is_an_error_at_start_naming_it() {
    let server = Server::Moto;
    let missing = "s3://exactly-no-such-bucket/job";
    let client = server
        .builder_via(&server.endpoint())
        .with_bucket_name("exactly-no-such-bucket")
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap();
    server.check().unwrap_or_else(|missing| panic!("{missing}"));
    let storage = ObjectStorage::with_store(Arc::new(client), Location::parse(missing).unwrap());
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(50))
        .checkpoint_storage(storage);
    let err = wordcount_like(config, 10, 1, CollectSink::new())
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exactly-no-such-bucket") && err.contains("that the bucket exists"),
        "{err}"
    );
}

/// Runs the job to its end with its storage behind a fault proxy that
/// applies `rule`; returns its counters. The output must be exactly once,
/// and the rule must have been applied all its `times`.
fn survives(name: &str, rule: Rule) -> exactly::MetricsSnapshot {
    let server = Server::Moto;
    server.check().unwrap_or_else(|missing| panic!("{missing}"));
    let proxy = FaultProxy::start(&server.endpoint()).unwrap();
    let faults = rule.times;
    proxy.inject(rule);
    let sink = CollectSink::new();
    let records = 4000;
    let url = server.fresh_url(name);
    let metrics = runtime().block_on(async {
        wordcount_like(
            config(storage(server, &proxy.endpoint(), &url)),
            records,
            2,
            sink.clone(),
        )
        .spawn()
        .unwrap()
        .join()
        .await
        .unwrap()
    });
    assert!(
        proxy.wait_for_faults(faults, Duration::from_secs(5)),
        "only {:?} of {faults} faults applied",
        proxy
            .log()
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Faulted(_)))
            .count()
    );
    assert_exactly_once(&sink.committed(), records);
    assert!(metrics.checkpoints_completed > 0, "{metrics:?}");
    metrics
}

/// A task state's upload cut mid-body is retried by the client: nothing
/// is lost, nothing repeated.
#[test]
fn a_cut_task_state_upload_is_retried() {
    survives(
        "cut task state",
        Rule::new(
            Match::put().path_contains(".state"),
            Fault::CutBody { after: 10 },
        )
        .times(2),
    );
}

/// A metadata write answered 503 once is retried; answered 500 more often
/// than the client and the storage retry (4 attempts of up to 4 requests),
/// the checkpoint fails, the job restarts from its last complete
/// checkpoint, and the output is still exact.
#[test]
fn failed_metadata_writes_are_retried_or_fail_the_checkpoint() {
    survives(
        "metadata 503 once",
        Rule::new(Match::put().path_contains("_metadata"), Fault::Status(503)),
    );
    let metrics = survives(
        "metadata 500 beyond retries",
        Rule::new(Match::put().path_contains("_metadata"), Fault::Status(500)).times(16),
    );
    assert!(metrics.restarts >= 1, "{metrics:?}");
}

/// The claim CAS answered after the client's timeout: the client retries,
/// and the storage recognises its own earlier write instead of taking it
/// for a newer holder's.
#[test]
fn a_timeout_on_the_claim_cas_is_not_a_lost_claim() {
    let metrics = survives(
        "slow claim CAS",
        Rule::new(
            Match::put().header("If-Match"),
            Fault::Delay(Duration::from_millis(1500)),
        )
        .times(2),
    );
    assert_eq!(metrics.restarts, 0, "{metrics:?}");
}

/// A claim CAS that landed but was answered 500: the retry finds the
/// condition failed (412), and the storage reads the claim back and sees
/// its own write.
#[test]
fn an_ambiguous_claim_cas_is_recognised_as_this_process_write() {
    let metrics = survives(
        "ambiguous claim CAS",
        Rule::new(
            Match::put().header("If-Match"),
            Fault::StatusAfterForward(500),
        )
        .times(3),
    );
    assert_eq!(metrics.restarts, 0, "{metrics:?}");
}

/// Task-state uploads slower than the checkpoint timeout (every attempt of
/// a checkpoint's three uploads outlasts the client's timeout): the
/// checkpoint expires like any other, the job goes on, and the output is
/// exact.
#[test]
fn storage_slower_than_the_checkpoint_timeout_expires_the_checkpoint() {
    let metrics = survives(
        "slow storage",
        Rule::new(
            Match::put().path_contains(".state"),
            Fault::Delay(Duration::from_millis(1200)),
        )
        .times(12),
    );
    assert!(metrics.checkpoints_expired >= 1, "{metrics:?}");
}
