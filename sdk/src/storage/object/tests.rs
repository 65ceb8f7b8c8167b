//! [`ObjectStorage`] on an in-memory object store (which enforces
//! conditional writes): layout, completion, fencing, retention and
//! savepoints. The same protocol against real S3 servers, and through a
//! fault-injecting proxy, is tested in `tests/tests/object_storage.rs`.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::memory::InMemory;

use super::*;
use crate::codec::Codec;
use crate::storage::StageMetadata;

fn root() -> Location {
    Location::parse("s3://bucket/jobs/j").unwrap()
}

fn storage(store: &Arc<InMemory>) -> ObjectStorage {
    ObjectStorage::with_store(Arc::clone(store) as Arc<dyn ObjectStore>, root())
}

fn framed_metadata(metadata: &CheckpointMetadata) -> Vec<u8> {
    let payload = Codec::Bincode.encode(metadata, "m").unwrap();
    frame::encode(PayloadKind::Metadata, Codec::Bincode, &payload)
}

/// Begins, writes one task state into, and completes checkpoint `id`.
fn checkpoint(
    storage: &ObjectStorage,
    id: u64,
    state: &[u8],
) -> Result<CompletedCheckpoint, StorageError> {
    checkpoint_referencing(storage, id, state, &[])
}

/// Completes checkpoint `id`, whose one task state references the shared
/// objects `shared`.
fn checkpoint_referencing(
    storage: &ObjectStorage,
    id: u64,
    state: &[u8],
    shared: &[&String],
) -> Result<CompletedCheckpoint, StorageError> {
    storage.begin_checkpoint(id)?;
    let framed = frame::encode(PayloadKind::TaskState, Codec::Bincode, state);
    let mut handle = storage.write_task_state(id, 0, 0, &framed)?;
    handle.shared = shared.iter().map(|name| name.to_string()).collect();
    let metadata = CheckpointMetadata {
        job: "j".into(),
        checkpoint_id: id,
        triggered_unix_ms: 0,
        stages: vec![StageMetadata {
            name: "s".into(),
            operators: vec!["op".into()],
            parallelism: 1,
        }],
        task_states: vec![handle],
        lineage: None,
    };
    storage.complete(&metadata, &framed_metadata(&metadata))
}

fn objects(store: &Arc<InMemory>) -> Vec<String> {
    let store = Arc::clone(store);
    let listed = block(async move {
        use futures_util::TryStreamExt;
        store.list(None).try_collect::<Vec<_>>().await
    })
    .unwrap();
    let mut names: Vec<String> = listed.iter().map(|o| o.location.to_string()).collect();
    names.sort();
    names
}

#[test]
fn a_checkpoint_completes_with_its_metadata_and_restores_through_the_storage() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    storage.claim("j").unwrap();
    assert!(storage.latest().unwrap().is_none());
    let done = checkpoint(&storage, 1, b"one").unwrap();
    assert_eq!(
        done.location.to_string(),
        "s3://bucket/jobs/j/chk-0000000001"
    );

    // Another process (a new machine) finds it through the claim object.
    let elsewhere = self::storage(&store);
    let latest = elsewhere.latest().unwrap().unwrap();
    assert_eq!(latest.id(), 1);
    let bytes = elsewhere
        .read_task_state(&latest, &latest.metadata.task_states[0])
        .unwrap();
    let decoded = frame::decode(&bytes, PayloadKind::TaskState, &"state").unwrap();
    assert_eq!(decoded.payload, b"one");
    assert_eq!(elsewhere.highest_id().unwrap(), 1);

    let names = objects(&store);
    assert!(names.contains(&"jobs/j/_claim".to_owned()), "{names:?}");
    assert!(
        names.contains(&"jobs/j/chk-0000000001/_metadata".to_owned()),
        "{names:?}"
    );
    let state = names.iter().find(|n| n.ends_with(".state")).unwrap();
    assert!(
        state.starts_with("jobs/j/chk-0000000001/0-0.g1-"),
        "{state}"
    );
}

/// Metadata without its record in the claim object (a crash between the
/// two writes, or a fenced process) is not a complete checkpoint; and a
/// checkpoint id's metadata is never overwritten.
#[test]
fn metadata_is_written_once_and_counts_only_once_recorded_in_the_claim() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    storage.claim("j").unwrap();
    checkpoint(&storage, 1, b"one").unwrap();
    let orphan = root().join("chk-0000000002").join(METADATA_FILE);
    storage
        .put(
            &orphan,
            Bytes::from_static(b"not a checkpoint"),
            PutMode::Create,
        )
        .unwrap();
    assert_eq!(storage.latest().unwrap().unwrap().id(), 1);
    assert_eq!(storage.highest_id().unwrap(), 2, "its id is never reused");

    let err = checkpoint(&storage, 2, b"two").unwrap_err();
    assert!(
        matches!(&err, StorageError::Conflict { reason, .. } if reason.contains("another process")),
        "{err}"
    );
    let (bytes, _) = storage.get(&orphan).unwrap().unwrap();
    assert_eq!(
        &bytes[..],
        b"not a checkpoint",
        "the metadata was overwritten"
    );
}

/// The fencing test: a second claim (a new process) raises the
/// generation, and the first process can then neither complete a
/// checkpoint, nor write a commit marker or a lineage; its error names the
/// newer holder and stops the job without restarts.
#[test]
fn a_process_that_lost_the_claim_cannot_complete_or_commit() {
    let store = Arc::new(InMemory::new());
    let zombie = storage(&store);
    zombie.claim("j").unwrap();
    checkpoint(&zombie, 1, b"one").unwrap();
    zombie.write_commit_marker(1, 0, None, 1).unwrap();

    let successor = storage(&store);
    successor.claim("j").unwrap();
    assert_eq!(successor.read_commit_marker(1, 0, None).unwrap(), Some(1));

    let err = checkpoint(&zombie, 2, b"two").unwrap_err();
    assert!(
        matches!(err, StorageError::Fenced { generation: 1, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&successor.instance) && message.contains("generation 2"),
        "{message}"
    );
    assert!(crate::Error::from(err).is_unrecoverable());
    for err in [
        zombie.write_commit_marker(1, 0, None, 2).unwrap_err(),
        zombie.write_lineage(&empty_lineage_record()).unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::Fenced { .. }), "{err}");
    }
    // Nothing the zombie did after losing the claim is visible.
    assert_eq!(successor.latest().unwrap().unwrap().id(), 1);
    assert_eq!(successor.read_commit_marker(1, 0, None).unwrap(), Some(1));
    assert_eq!(successor.read_lineage().unwrap(), None);
    // The successor goes on.
    checkpoint(&successor, 3, b"three").unwrap();
    assert_eq!(storage(&store).latest().unwrap().unwrap().id(), 3);
}

fn empty_lineage_record() -> LineageRecord {
    LineageRecord {
        lineage: Some("l".into()),
        origin: "o".into(),
        savepoint: None,
    }
}

/// A write before any claim is refused, naming what to do.
#[test]
fn writes_need_the_claim() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    let err = checkpoint(&storage, 1, b"one").unwrap_err().to_string();
    assert!(err.contains("CheckpointStorage::claim"), "{err}");
}

#[test]
fn retain_deletes_the_shared_objects_no_kept_checkpoint_references() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    storage.claim("j").unwrap();
    let segment = frame::encode(PayloadKind::KeyedSegment, Codec::Bincode, b"seg");
    let [a, b, c, in_flight] = [1, 2, 3, 5].map(|id| shared::object_name(id, 0, 0));
    for name in [&a, &b, &c, &in_flight] {
        storage.write_shared(name, &segment).unwrap();
    }
    checkpoint_referencing(&storage, 1, b"s", &[&a]).unwrap();
    checkpoint_referencing(&storage, 2, b"s", &[&a, &b]).unwrap();
    let kept = checkpoint_referencing(&storage, 3, b"s", &[&c]).unwrap();
    storage.begin_checkpoint(5).unwrap();
    storage.retain(1).unwrap();
    let left: Vec<String> = objects(&store)
        .into_iter()
        .filter_map(|o| Some(o.strip_prefix("jobs/j/shared/")?.to_owned()))
        .collect();
    let mut expected = vec![c.clone(), in_flight];
    expected.sort_unstable();
    assert_eq!(left, expected);
    assert_eq!(
        storage.read_shared(&kept.shared_location(), &c).unwrap(),
        segment
    );
}

#[test]
fn retain_deletes_old_and_failed_checkpoints_but_never_a_kept_ones_objects() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    storage.claim("j").unwrap();
    for id in 1..=3 {
        checkpoint(&storage, id, b"s").unwrap();
    }
    // Checkpoint 4 failed (its task state stays behind), 5 completes, 6 is
    // in progress.
    storage.begin_checkpoint(4).unwrap();
    storage
        .write_task_state(
            4,
            0,
            0,
            &frame::encode(PayloadKind::TaskState, Codec::Bincode, b"x"),
        )
        .unwrap();
    checkpoint(&storage, 5, b"s").unwrap();
    storage.begin_checkpoint(6).unwrap();
    storage.retain(2).unwrap();
    let ids: Vec<u64> = storage.listed_ids().unwrap();
    assert_eq!(ids, vec![3, 5, 6]);
    let claimed: Vec<u64> = storage
        .current_claim()
        .unwrap()
        .checkpoints
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(claimed, vec![3, 5]);
    for kept in [3, 5] {
        let checkpoint = storage
            .open_checkpoint(&root().join(&format!("chk-{kept:010}")))
            .unwrap();
        storage
            .read_task_state(&checkpoint, &checkpoint.metadata.task_states[0])
            .unwrap();
    }
}

/// A task state written after its checkpoint was discarded is refused, and
/// leaves no object behind.
#[test]
fn a_late_task_state_of_a_discarded_checkpoint_is_refused() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    storage.claim("j").unwrap();
    storage.begin_checkpoint(3).unwrap();
    storage.discard(3).unwrap();
    let framed = frame::encode(PayloadKind::TaskState, Codec::Bincode, b"late");
    let err = storage.write_task_state(3, 0, 0, &framed).unwrap_err();
    assert!(
        matches!(err, StorageError::Discarded { checkpoint: 3 }),
        "{err:?}"
    );
    assert!(
        objects(&store)
            .iter()
            .all(|n| !n.contains("chk-0000000003"))
    );
}

/// A savepoint goes from object storage to a local directory and back,
/// and never over an existing one.
#[test]
fn savepoints_cross_between_object_storage_and_local_directories() {
    let store = Arc::new(InMemory::new());
    let storage = storage(&store);
    storage.claim("j").unwrap();
    let done = checkpoint(&storage, 7, b"state").unwrap();
    let metadata = storage
        .get(&done.location.join(METADATA_FILE))
        .unwrap()
        .unwrap()
        .0;

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("sp");
    let exported =
        super::super::savepoint::export(&storage, &done, &metadata, &local.as_path().into())
            .unwrap();
    let (reopened, reader) = exported.location.open_checkpoint().unwrap();
    assert_eq!(reopened.id(), 7);
    let bytes = reader
        .read_task_state(&reopened, &reopened.metadata.task_states[0])
        .unwrap();
    assert!(bytes.ends_with(b"state"));

    // Back into the object store, beside the checkpoints.
    let target = root().join("savepoints/sp-1");
    let back = storage
        .write_savepoint(
            &target,
            reopened.metadata.task_states.iter().map(|h| {
                reader
                    .read_task_state(&reopened, h)
                    .map(|bytes| (h.file.clone(), bytes))
            }),
            &metadata,
        )
        .unwrap();
    assert_eq!(back.id(), 7);
    let bytes = storage
        .read_task_state(&back, &back.metadata.task_states[0])
        .unwrap();
    assert!(bytes.ends_with(b"state"));
    let again = storage
        .write_savepoint(&target, [], &metadata)
        .unwrap_err()
        .to_string();
    assert!(again.contains("already exists"), "{again}");
}
