//! S3 conditional writes on each local server (`scripts/s3-up`, moto, and
//! `scripts/s3-up --seaweedfs`, SeaweedFS), through object_store:
//!
//! - create-only (`PutMode::Create`, `If-None-Match: *`) of a key that
//!   exists fails and keeps the first object (both servers);
//! - compare-and-swap (`PutMode::Update`, `If-Match: <etag>`) with a stale
//!   ETag fails and keeps the object; with the current one it succeeds
//!   (both servers);
//! - `If-Match` on a missing key fails and creates nothing, and what each
//!   server answers (both servers);
//! - of concurrent create-only PUTs of one absent key, exactly one succeeds,
//!   and the object holds its body; likewise of concurrent CAS PUTs from one
//!   ETag (SeaweedFS only: moto does not enforce it, and
//!   `moto_enforces_conditions_only_against_completed_writes` says what it
//!   does enforce).
//!
//! A sequential test proves nothing about atomicity: a server that checks
//! the condition and then writes, without a lock between the two, passes
//! every sequential test. The concurrent tests start their writers
//! together at a barrier, several rounds each, with small and large bodies
//! (`EXACTLY_S3_RACE_ROUNDS`, default 16, to run more).
//!
//! Each test checks its server first and fails, with the command that
//! starts it, when the server is not running: none is skipped. Each works
//! under a fresh prefix, and deletes what it wrote. The facts these tests
//! establish, with the measurements, are in docs/s3-servers.md.

use std::sync::Arc;

use bytes::Bytes;
use exactly_s3_tools::servers::{BUCKET, Server};
use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{
    Error, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};
use tokio::sync::Barrier;

/// Parallel writers per round of a concurrent test.
const WRITERS: usize = 8;
/// Each writer's body in most rounds of a concurrent test: a checkpoint's
/// metadata or a small task state, large enough that the server spends a
/// while receiving and storing it between its check of the condition and
/// the moment the object becomes visible.
const SMALL_BODY: usize = 64 * 1024;
/// Each writer's body in the other rounds: a large task state, above the
/// 5 MiB - 1 KiB past which moto spills a body to a temporary file.
const LARGE_BODY: usize = 8 * 1024 * 1024;

/// The client for `server`, after checking that it runs; panics with the
/// command that starts it when it does not.
fn up(server: Server) -> AmazonS3 {
    server.check().unwrap_or_else(|missing| panic!("{missing}"));
    server.client()
}

/// A fresh prefix for the test, as an object_store path in [`BUCKET`].
fn fresh_prefix(server: Server, test: &str) -> Path {
    let url = server.fresh_url(test);
    let key = url
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .unwrap_or_else(|| panic!("{url} is not in s3://{BUCKET}/"));
    Path::from(key)
}

/// Deletes everything under `prefix`; best effort (a failure here is not
/// the test's).
async fn clean_up(store: &AmazonS3, prefix: &Path) {
    let locations: Vec<Path> = store
        .list(Some(prefix))
        .filter_map(|meta| async move { meta.ok().map(|meta| meta.location) })
        .collect()
        .await;
    for location in locations {
        let _ = store.delete(&location).await;
    }
}

fn options(mode: PutMode) -> PutOptions {
    PutOptions {
        mode,
        ..PutOptions::default()
    }
}

fn update(e_tag: Option<String>) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag,
        version: None,
    })
}

async fn put(store: &AmazonS3, key: &Path, body: &[u8], mode: PutMode) -> Result<PutResult, Error> {
    store
        .put_opts(
            key,
            PutPayload::from(Bytes::copy_from_slice(body)),
            options(mode),
        )
        .await
}

async fn content(store: &AmazonS3, key: &Path) -> Bytes {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("reading {key}: {e}"))
}

/// The HTTP status the server answered, from the error's message
/// (object_store keeps it there: "… status code: 412 Precondition
/// Failed: <body>"); `None` when the request got no answer.
fn status(error: &Error) -> Option<u16> {
    let message = error.to_string();
    let (_, rest) = message.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// The S3 error code in the answer's body (`<Code>…</Code>`), if any.
fn s3_code(error: &Error) -> Option<String> {
    let message = error.to_string();
    let (_, rest) = message.split_once("<Code>")?;
    let (code, _) = rest.split_once("</Code>")?;
    Some(code.to_string())
}

/// "412 PreconditionFailed", for messages and assertions.
fn answer(error: &Error) -> String {
    match (status(error), s3_code(error)) {
        (Some(status), Some(code)) => format!("{status} {code}"),
        (Some(status), None) => status.to_string(),
        _ => format!("no status: {error}"),
    }
}

/// Runs `test` on each server's tokio runtime as one `#[tokio::test]` per
/// server: `NAME::moto` and `NAME::seaweedfs`.
macro_rules! on_each_server {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn moto() {
                super::$name(Server::Moto).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn seaweedfs() {
                super::$name(Server::SeaweedFs).await
            }
        }
    )*};
}

on_each_server!(
    second_create_fails_and_keeps_the_first,
    cas_with_a_stale_etag_fails_and_with_the_current_one_succeeds,
    if_match_on_a_missing_key_fails_and_creates_nothing,
);

/// The concurrent tests: SeaweedFS only. moto does not enforce atomic
/// conditional writes (see [`moto_enforces_conditions_only_against_completed_writes`]).
mod concurrent_creates_have_exactly_one_winner {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seaweedfs() {
        super::concurrent_creates_have_exactly_one_winner(Server::SeaweedFs).await
    }
}

/// SeaweedFS only, as above.
mod concurrent_cas_from_one_etag_has_exactly_one_winner {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seaweedfs() {
        super::concurrent_cas_from_one_etag_has_exactly_one_winner(Server::SeaweedFs).await
    }
}

/// A second create-only PUT of a key fails with `AlreadyExists` and leaves
/// the first content. Both servers answer 412 PreconditionFailed, as AWS
/// does (object_store turns a 412, and a 409, on a create into
/// `AlreadyExists`).
async fn second_create_fails_and_keeps_the_first(server: Server) {
    let store = up(server);
    let prefix = fresh_prefix(server, "second-create");
    let key = prefix.clone().join("object");

    let first = put(&store, &key, b"first", PutMode::Create)
        .await
        .unwrap_or_else(|e| panic!("{server}: the first create-only PUT failed: {e}"));
    match put(&store, &key, b"second", PutMode::Create).await {
        Err(e @ Error::AlreadyExists { .. }) => {
            assert_eq!(
                answer(&e),
                "412 PreconditionFailed",
                "{server}: the second create-only PUT failed, but not with the answer measured: {e}"
            );
        }
        Err(e) => {
            panic!("{server}: the second create-only PUT failed, but not with AlreadyExists: {e}")
        }
        Ok(result) => panic!(
            "{server}: a second create-only PUT (If-None-Match: *) of an existing key succeeded: {result:?}"
        ),
    }
    assert_eq!(
        content(&store, &key).await,
        "first",
        "{server}: the object changed"
    );
    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.e_tag, first.e_tag, "{server}: the ETag changed");

    clean_up(&store, &prefix).await;
}

/// A CAS with a stale ETag fails with `Precondition` (412) and leaves the
/// content; a CAS with the current ETag succeeds, and the next one with
/// the ETag it returned succeeds too.
async fn cas_with_a_stale_etag_fails_and_with_the_current_one_succeeds(server: Server) {
    let store = up(server);
    let prefix = fresh_prefix(server, "cas");
    let key = prefix.clone().join("object");

    let v1 = put(&store, &key, b"v1", PutMode::Overwrite).await.unwrap();
    let v2 = put(&store, &key, b"v2", update(v1.e_tag.clone()))
        .await
        .unwrap_or_else(|e| panic!("{server}: a CAS with the current ETag failed: {e}"));
    assert_ne!(v1.e_tag, v2.e_tag, "{server}: two contents, one ETag");

    match put(&store, &key, b"v3", update(v1.e_tag.clone())).await {
        Err(e @ Error::Precondition { .. }) => assert_eq!(
            answer(&e),
            "412 PreconditionFailed",
            "{server}: the stale CAS failed, but not with the answer measured: {e}"
        ),
        Err(e) => panic!("{server}: the stale CAS failed, but not with Precondition: {e}"),
        Ok(result) => panic!(
            "{server}: a CAS (If-Match) with a stale ETag {:?} succeeded: {result:?}",
            v1.e_tag
        ),
    }
    assert_eq!(
        content(&store, &key).await,
        "v2",
        "{server}: a failed CAS changed the object"
    );

    let v4 = put(&store, &key, b"v4", update(v2.e_tag.clone()))
        .await
        .unwrap_or_else(|e| {
            panic!("{server}: a CAS with the ETag the last CAS returned failed: {e}")
        });
    assert_eq!(content(&store, &key).await, "v4");
    assert_eq!(store.head(&key).await.unwrap().e_tag, v4.e_tag);

    clean_up(&store, &prefix).await;
}

/// What each server answers to `If-Match` on a key that does not exist.
/// AWS answers 404 NoSuchKey; object_store turns both that and a 412 into
/// `Precondition`. Either way nothing may be created.
fn missing_key_answer(server: Server) -> &'static str {
    match server {
        // moto 5.2.6: like AWS.
        Server::Moto => "404 NoSuchKey",
        // SeaweedFS 4.48: the condition fails, as RFC 9110 has it for
        // If-Match on an absent resource.
        Server::SeaweedFs => "412 PreconditionFailed",
    }
}

async fn if_match_on_a_missing_key_fails_and_creates_nothing(server: Server) {
    let store = up(server);
    let prefix = fresh_prefix(server, "if-match-missing");
    let key = prefix.clone().join("never-written");

    let etag = Some("\"0123456789abcdef0123456789abcdef\"".to_string());
    match put(&store, &key, b"ghost", update(etag)).await {
        Err(e @ Error::Precondition { .. }) => assert_eq!(
            answer(&e),
            missing_key_answer(server),
            "{server}: If-Match on a missing key failed, but not with the answer measured: {e}"
        ),
        Err(e) => {
            panic!("{server}: If-Match on a missing key failed, but not with Precondition: {e}")
        }
        Ok(result) => panic!("{server}: If-Match on a missing key succeeded: {result:?}"),
    }
    match store.head(&key).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{server}: a failed If-Match PUT left something at {key}: {other:?}"),
    }
}

/// The body size of each round of a concurrent test:
/// `EXACTLY_S3_RACE_ROUNDS` (default 16) rounds of [`SMALL_BODY`], then a
/// quarter as many (at least one) of [`LARGE_BODY`].
fn round_sizes() -> Vec<usize> {
    let small = match std::env::var("EXACTLY_S3_RACE_ROUNDS") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("EXACTLY_S3_RACE_ROUNDS must be a number, got {value:?}")),
        Err(_) => 16,
    };
    let large = (small / 4).max(1);
    let mut sizes = vec![SMALL_BODY; small];
    sizes.extend(std::iter::repeat_n(LARGE_BODY, large));
    sizes
}

/// Writer `writer`'s body in round `round`: `size` bytes, distinct from
/// every other writer's.
fn body(round: usize, writer: usize, size: usize) -> Bytes {
    let head = format!("round {round} writer {writer}\n");
    let mut bytes = head.into_bytes();
    let fill = b'a' + (writer % 26) as u8;
    bytes.resize(size, fill);
    Bytes::from(bytes)
}

/// One writer's result in a round.
#[derive(Debug)]
enum Outcome {
    Won(PutResult),
    Lost(String),
    /// An error that is not a failed condition: a transport error, a 5xx.
    Failed(String),
}

/// Starts [`WRITERS`] PUTs of `key` in `mode` at once (released together by
/// a barrier), writer `w` with `body(round, w, size)`, and waits for them
/// all.
async fn race(
    store: &Arc<AmazonS3>,
    key: &Path,
    round: usize,
    size: usize,
    mode: PutMode,
) -> Vec<Outcome> {
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, key, barrier, mode) =
                (store.clone(), key.clone(), barrier.clone(), mode.clone());
            tokio::spawn(async move {
                let payload = PutPayload::from(body(round, writer, size));
                barrier.wait().await;
                match store.put_opts(&key, payload, options(mode)).await {
                    Ok(result) => Outcome::Won(result),
                    Err(e @ (Error::AlreadyExists { .. } | Error::Precondition { .. })) => {
                        Outcome::Lost(answer(&e))
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(WRITERS);
    for writer in writers {
        outcomes.push(writer.await.expect("a writer panicked"));
    }
    outcomes
}

/// Checks one round: exactly one winner, every other writer lost on its
/// condition, and the object holds the winner's body with the winner's
/// ETag. Returns what went wrong, if anything.
async fn judge(
    store: &AmazonS3,
    key: &Path,
    round: usize,
    size: usize,
    outcomes: &[Outcome],
) -> Option<String> {
    let winners: Vec<usize> = (0..WRITERS)
        .filter(|&w| matches!(outcomes[w], Outcome::Won(_)))
        .collect();
    let failed: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(w, outcome)| match outcome {
            Outcome::Failed(e) => Some(format!("writer {w}: {e}")),
            _ => None,
        })
        .collect();
    let stored = content(store, key).await;
    let holder = (0..WRITERS).find(|&w| stored == body(round, w, size));
    let stored_tag = store.head(key).await.ok().and_then(|meta| meta.e_tag);
    let mut wrong = Vec::new();
    if winners.len() != 1 {
        wrong.push(format!("{} writers succeeded: {winners:?}", winners.len()));
    }
    if !failed.is_empty() {
        wrong.push(format!("errors other than a failed condition: {failed:?}"));
    }
    if let [winner] = winners[..] {
        if holder != Some(winner) {
            wrong.push(format!(
                "writer {winner} won but the object holds writer {holder:?}'s body"
            ));
        }
        if let Outcome::Won(result) = &outcomes[winner]
            && result.e_tag != stored_tag
        {
            wrong.push(format!(
                "the winner's ETag {:?} is not the object's {stored_tag:?}",
                result.e_tag
            ));
        }
    }
    (!wrong.is_empty()).then(|| format!("round {round} ({size}-byte bodies): {}", wrong.join("; ")))
}

/// The answers the losers got, counted: "412 PreconditionFailed × 7".
fn losers(outcomes: &[Vec<Outcome>]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for outcome in outcomes.iter().flatten() {
        if let Outcome::Lost(answer) = outcome {
            *counts.entry(answer).or_default() += 1;
        }
    }
    counts
        .iter()
        .map(|(answer, n)| format!("{answer} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the rounds of a concurrent test: each on a fresh key, made by
/// `base` (nothing, or a first object whose ETag the writers update), and
/// fails with every round that went wrong.
async fn race_rounds(server: Server, what: &str, base: Option<&[u8]>) {
    let store = Arc::new(up(server));
    let prefix = fresh_prefix(server, what);
    let sizes = round_sizes();
    let mut all = Vec::with_capacity(sizes.len());
    let mut wrong = Vec::new();
    for (round, &size) in sizes.iter().enumerate() {
        let key = prefix.clone().join(format!("round-{round}"));
        let mode = match base {
            None => PutMode::Create,
            Some(base) => {
                let first = put(&store, &key, base, PutMode::Overwrite)
                    .await
                    .unwrap_or_else(|e| panic!("{server}: writing the base object: {e}"));
                update(first.e_tag)
            }
        };
        let outcomes = race(&store, &key, round, size, mode).await;
        wrong.extend(judge(&store, &key, round, size, &outcomes).await);
        all.push(outcomes);
    }
    clean_up(&store, &prefix).await;
    assert!(
        wrong.is_empty(),
        "{server}: {what}, {WRITERS} writers at once, wrong in {} of {} rounds:\n{}\n(losers' answers: {})",
        wrong.len(),
        sizes.len(),
        wrong.join("\n"),
        losers(&all)
    );
    eprintln!(
        "{server}: {what}: {} rounds of {WRITERS} writers, one winner each; losers' answers: {}",
        sizes.len(),
        losers(&all)
    );
}

/// Of [`WRITERS`] create-only PUTs of one absent key started together,
/// exactly one succeeds, every round.
async fn concurrent_creates_have_exactly_one_winner(server: Server) {
    race_rounds(server, "concurrent-creates", None).await
}

/// Of [`WRITERS`] CAS PUTs from one ETag started together, exactly one
/// succeeds, every round.
async fn concurrent_cas_from_one_etag_has_exactly_one_winner(server: Server) {
    race_rounds(server, "concurrent-cas", Some(b"base")).await
}

// moto does not enforce atomic conditional writes: see docs/checkpointing.md
// (and the measurements in docs/s3-servers.md). moto 5.2.6's PutObject
// (moto/s3/responses.py) checks If-None-Match / If-Match against the stored
// key, then stores the new one, with no lock between the check and the
// store. Of eight concurrent create-only PUTs of one key, or CAS PUTs from
// one ETag, two to four succeeded in 13 % (create) and 18 % (CAS) of 200
// rounds with 8 MiB bodies (above 5 MiB - 1 KiB moto writes a body to a
// temporary file inside that window, releasing Python's GIL), and two PUTs
// landed once in 260 rounds with 4 MiB bodies and once in 200 with 1 MiB
// (seen as a 500, "I/O operation on closed file", for a PUT that landed).
// This test asserts what moto does enforce: the conditions against writes
// that completed before the conditional one started, bodies of both sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_enforces_conditions_only_against_completed_writes() {
    let server = Server::Moto;
    let store = up(server);
    let prefix = fresh_prefix(server, "sequential-only");
    for (n, size) in [SMALL_BODY, LARGE_BODY].into_iter().enumerate() {
        let created = prefix.clone().join(format!("created-{n}"));
        let first = body(0, 0, size);
        put(&store, &created, &first, PutMode::Create)
            .await
            .unwrap();
        let second = put(&store, &created, &body(0, 1, size), PutMode::Create).await;
        assert!(
            matches!(second, Err(Error::AlreadyExists { .. })),
            "{server}: a create-only PUT after a completed one, {size}-byte bodies: {second:?}"
        );
        assert_eq!(content(&store, &created).await, first);

        let swapped = prefix.clone().join(format!("swapped-{n}"));
        let v1 = put(&store, &swapped, &body(1, 0, size), PutMode::Overwrite)
            .await
            .unwrap();
        let v2 = body(1, 1, size);
        put(&store, &swapped, &v2, update(v1.e_tag.clone()))
            .await
            .unwrap();
        let stale = put(&store, &swapped, &body(1, 2, size), update(v1.e_tag)).await;
        assert!(
            matches!(stale, Err(Error::Precondition { .. })),
            "{server}: a CAS with the ETag a completed CAS replaced, {size}-byte bodies: {stale:?}"
        );
        assert_eq!(content(&store, &swapped).await, v2);
    }
    clean_up(&store, &prefix).await;
}
