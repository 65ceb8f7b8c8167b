//! [`ObjectStorage`]: checkpoints in S3-compatible object storage.
//!
//! Object stores have no rename and no lock, so this storage differs from
//! [`super::LocalStorage`] in how a checkpoint becomes complete and how a
//! second process is kept out. `docs/checkpointing.md` gives the reasons;
//! in short:
//!
//! - **Layout** under the location's prefix `P`:
//!   - `P/chk-<id>/<stage>-<subtask>.g<generation>-<nonce>.state`: task
//!     states, under names never reused;
//!   - `P/chk-<id>/_begun`: written when a checkpoint begins, so that a
//!     restarted job never reuses its id;
//!   - `P/chk-<id>/_metadata`: written once, with a create-only
//!     conditional PUT (`If-None-Match: *`), after every task state it
//!     names;
//!   - `P/shared/c<id>-<stage>-<subtask>-<nonce>.seg`: segments of
//!     incremental keyed state that several checkpoints reference
//!     ([`super::shared`]), written at the barrier of checkpoint `<id>`;
//!   - `P/_claim`: the claim object, the one object that is ever
//!     overwritten, and only by compare-and-swap (`If-Match` on its ETag).
//!     It records the holder and its generation, the complete checkpoints,
//!     the sink commit markers and the lineage.
//! - **Completion**: a checkpoint is complete once its metadata is written
//!   create-only *and* its id is recorded in the claim object by a CAS. The
//!   claim object, not a listing, is the source of truth.
//! - **Fencing**: [`CheckpointStorage::claim`] takes the claim over with a
//!   CAS that raises the generation. A process that lost it fails its next
//!   CAS (completion, commit marker, lineage) with
//!   [`StorageError::Fenced`], naming the newer holder; the runtime stops
//!   on it without restarting.
//!
//! The client is the `object_store` crate (Apache Arrow's; used by
//! DataFusion, delta-rs and Arroyo): it speaks S3 with conditional PUTs,
//! retries throttling, 5xx and timeouts with backoff, and takes the
//! standard AWS environment. Its calls are async; this storage's are
//! blocking (the runtime calls storage from its blocking pool), so they run
//! on a small runtime of its own and the calling thread waits.
//!
//! Owns: the object layout above and the protocol on the claim object
//! (its format is [`claim`]'s). Does not own what the objects hold (the
//! frame is [`super::frame`]'s, the payloads the runtime's).

mod claim;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use self::claim::Claim;
use super::frame::{self, PayloadKind};
use super::shared::{self, SHARED_DIR};
use super::{
    CheckpointMetadata, CheckpointStorage, CompletedCheckpoint, LineageRecord, Location,
    METADATA_FILE, StorageClaim, StorageError, TaskStateHandle, random_hex,
};

/// The claim object's name under the prefix.
const CLAIM_OBJECT: &str = "_claim";

/// The object a checkpoint's beginning writes.
const BEGUN_OBJECT: &str = "_begun";

/// How often a CAS on the claim object is tried again after finding a
/// newer version written by this same holder (its own earlier write, whose
/// answer was lost and which the client retried).
const CAS_ATTEMPTS: usize = 4;

/// The runtime the object-store client runs on, created on first use.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("exactly-object-store")
            .enable_all()
            .build()
            .expect("cannot start the object-store client's runtime (threads exhausted?)")
    })
}

/// Runs `future` on the client's runtime and waits for it: usable from any
/// thread that may block, inside a runtime's blocking pool or outside any
/// runtime.
fn block<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    io_runtime().spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .expect("the object-store client's runtime dropped a request")
}

/// The claim this process holds: its content as last written, and the
/// version a CAS must match.
#[derive(Debug)]
struct Held {
    claim: Claim,
    version: UpdateVersion,
}

/// Checkpoint storage in an S3-compatible object store (or any store the
/// `object_store` crate implements).
///
/// ```no_run
/// use exactly::JobConfig;
///
/// // Region, endpoint and credentials come from the standard AWS
/// // environment: AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
/// let config = JobConfig::new().checkpoint_dir("s3://my-bucket/checkpoints/wordcount");
/// ```
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    root: Location,
    /// Random, per instance: tells this process's claim apart from another
    /// process of the same job on the same host.
    instance: String,
    held: Mutex<Option<Held>>,
    /// Checkpoints begun and neither completed nor discarded.
    begun: Mutex<BTreeSet<u64>>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("root", &self.root.to_string())
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

/// Whether a location names objects in the bucket of `root`, and which.
fn key_of(root: &Location, location: &Location) -> Result<Key, StorageError> {
    match (root, location) {
        (Location::S3 { bucket, .. }, Location::S3 { bucket: b, prefix }) if b == bucket => {
            Ok(Key::from(prefix.as_str()))
        }
        _ => Err(StorageError::Location {
            given: location.to_string(),
            reason: format!("it is not in the object store of {root}"),
        }),
    }
}

impl ObjectStorage {
    /// Storage at `location` (`s3://bucket/prefix`), with the S3 client
    /// configured from the standard AWS environment: `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` for an S3-compatible
    /// server, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (or an
    /// instance role), `AWS_SESSION_TOKEN`. Requests are path-style unless
    /// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`; plain HTTP is allowed when
    /// the endpoint is an `http://` URL (a local server) or
    /// `AWS_ALLOW_HTTP=true`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Location`] when `location` is not an `s3://` URL,
    /// and [`StorageError::ObjectStoreConfig`] when the client cannot be
    /// configured.
    pub fn open(location: &Location) -> Result<ObjectStorage, StorageError> {
        let Location::S3 { bucket, .. } = location else {
            return Err(StorageError::Location {
                given: location.to_string(),
                reason: "object storage needs an s3://bucket/prefix URL".into(),
            });
        };
        let endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|name| std::env::var(name).ok());
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let store = builder
            .build()
            .map_err(|source| StorageError::ObjectStoreConfig {
                location: location.to_string(),
                source: Box::new(source),
            })?;
        Ok(Self::with_store(Arc::new(store), location.clone()))
    }

    /// Storage in `store` (a client for the bucket of `location`) under
    /// `location`'s prefix: for stores configured by hand, or for tests
    /// (`object_store::memory::InMemory`).
    pub fn with_store(store: Arc<dyn ObjectStore>, location: Location) -> ObjectStorage {
        ObjectStorage {
            store,
            root: location,
            instance: random_hex(),
            held: Mutex::new(None),
            begun: Mutex::new(BTreeSet::new()),
        }
    }

    /// Reads the complete checkpoint or savepoint at `location` (its
    /// `_metadata` object).
    ///
    /// # Errors
    ///
    /// [`StorageError::NotACheckpoint`] when it has no metadata object.
    pub fn open_checkpoint(
        &self,
        location: &Location,
    ) -> Result<CompletedCheckpoint, StorageError> {
        let file = location.join(METADATA_FILE);
        let Some((bytes, _)) = self.get(&file)? else {
            return Err(StorageError::NotACheckpoint {
                location: location.clone(),
                reason: format!("it has no {METADATA_FILE} object"),
            });
        };
        let frame = frame::decode(&bytes, PayloadKind::Metadata, &file)?;
        let metadata = CheckpointMetadata::decode(&frame, &file)?;
        Ok(CompletedCheckpoint {
            location: location.clone(),
            metadata,
        })
    }

    /// Writes a self-contained savepoint at `target`: every file of
    /// `files` (name and content), then `metadata` create-only.
    pub(crate) fn write_savepoint(
        &self,
        target: &Location,
        files: impl IntoIterator<Item = Result<(String, Vec<u8>), StorageError>>,
        metadata: &[u8],
    ) -> Result<CompletedCheckpoint, StorageError> {
        let metadata_file = target.join(METADATA_FILE);
        if self.get(&metadata_file)?.is_some() {
            return Err(StorageError::Conflict {
                location: target.to_string(),
                reason: "a savepoint already exists there; choose a new target".into(),
            });
        }
        for file in files {
            let (name, bytes) = file?;
            self.put(&target.join(&name), Bytes::from(bytes), PutMode::Overwrite)?;
        }
        self.create_once(&metadata_file, metadata)?;
        self.open_checkpoint(target)
    }

    fn checkpoint_location(&self, id: u64) -> Location {
        self.root.join(&format!("chk-{id:010}"))
    }

    /// The object at `location`, with its version, or `None`.
    fn get(&self, location: &Location) -> Result<Option<(Bytes, UpdateVersion)>, StorageError> {
        let key = key_of(&self.root, location)?;
        let store = Arc::clone(&self.store);
        let got = block(async move {
            let result = store.get(&key).await?;
            let version = UpdateVersion {
                e_tag: result.meta.e_tag.clone(),
                version: result.meta.version.clone(),
            };
            Ok::<_, object_store::Error>((result.bytes().await?, version))
        });
        match got {
            Ok(got) => Ok(Some(got)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(object_error("read", location, source)),
        }
    }

    fn put(
        &self,
        location: &Location,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<UpdateVersion, StorageError> {
        let key = key_of(&self.root, location)?;
        let store = Arc::clone(&self.store);
        block(async move {
            store
                .put_opts(&key, PutPayload::from_bytes(bytes), PutOptions::from(mode))
                .await
        })
        .map(UpdateVersion::from)
        .map_err(|source| object_error("write", location, source))
    }

    /// The names directly under `location`: its objects and its
    /// "directories".
    fn list(&self, location: &Location) -> Result<(Vec<String>, Vec<String>), StorageError> {
        let key = key_of(&self.root, location)?;
        let store = Arc::clone(&self.store);
        let listed = block(async move { store.list_with_delimiter(Some(&key)).await })
            .map_err(|source| object_error("list", location, source))?;
        let name = |key: &Key| key.filename().unwrap_or_default().to_owned();
        Ok((
            listed.objects.iter().map(|o| name(&o.location)).collect(),
            listed.common_prefixes.iter().map(name).collect(),
        ))
    }

    /// Deletes every object directly under `location`.
    fn delete_all(&self, location: &Location) -> Result<(), StorageError> {
        let (objects, _) = self.list(location)?;
        for name in objects {
            self.delete(&location.join(&name))?;
        }
        Ok(())
    }

    /// Deletes one object, if it exists.
    fn delete(&self, location: &Location) -> Result<(), StorageError> {
        let key = key_of(&self.root, location)?;
        let store = Arc::clone(&self.store);
        match block(async move { store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(object_error("delete", location, source)),
        }
    }

    /// Deletes the shared objects that no checkpoint of `kept` references
    /// and that are not newer than `newest` ([`shared::garbage`]).
    fn collect_shared_garbage(&self, kept: &[u64], newest: u64) -> Result<(), StorageError> {
        let dir = self.shared_location();
        let (listed, _) = self.list(&dir)?;
        if listed.is_empty() {
            return Ok(());
        }
        let kept = kept
            .iter()
            .map(|&id| self.open_checkpoint(&self.checkpoint_location(id)))
            .collect::<Result<Vec<_>, _>>()?;
        for name in shared::garbage(&listed, &kept.iter().collect::<Vec<_>>(), newest) {
            self.delete(&dir.join(name))?;
        }
        Ok(())
    }

    /// Ids of every `chk-*` prefix, ascending.
    fn listed_ids(&self) -> Result<Vec<u64>, StorageError> {
        let (_, dirs) = self.list(&self.root)?;
        let mut ids: Vec<u64> = dirs
            .iter()
            .filter_map(|d| d.strip_prefix("chk-")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The claim object as stored, with its version.
    fn read_claim(&self) -> Result<Option<(Claim, UpdateVersion)>, StorageError> {
        let location = self.root.join(CLAIM_OBJECT);
        let Some((bytes, version)) = self.get(&location)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| StorageError::Corrupt {
            file: location.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some((Claim::decode(text, &location)?, version)))
    }

    /// The claim as this process holds it, or else as stored.
    fn current_claim(&self) -> Result<Claim, StorageError> {
        if let Some(held) = &*self.held.lock().expect("claim lock poisoned") {
            return Ok(held.claim.clone());
        }
        Ok(self
            .read_claim()?
            .map(|(claim, _)| claim)
            .unwrap_or_default())
    }

    /// Changes the claim object with a CAS on the version this process
    /// last wrote. `change` must be idempotent: after an ambiguous write
    /// (its answer lost, the client retried) it is applied again to what
    /// this process had in fact written.
    fn update(&self, change: impl Fn(&mut Claim)) -> Result<(), StorageError> {
        let location = self.root.join(CLAIM_OBJECT);
        let mut held = self.held.lock().expect("claim lock poisoned");
        let Some(held) = held.as_mut() else {
            return Err(StorageError::NotClaimed {
                location: self.root.to_string(),
            });
        };
        for attempt in 1..=CAS_ATTEMPTS {
            let mut next = held.claim.clone();
            change(&mut next);
            let body = Bytes::from(next.encode());
            match self.put(&location, body, PutMode::Update(held.version.clone())) {
                Ok(version) => {
                    *held = Held {
                        claim: next,
                        version,
                    };
                    return Ok(());
                }
                // Refused: another holder wrote, or this process's own
                // earlier write did (its answer lost, the client retried).
                // Transient (a timeout, a reset): the write may have landed
                // or not. The stored claim tells.
                Err(e) if refused(&e) || transient(&e) => {
                    let Some((stored, version)) = self.read_claim()? else {
                        return Err(self.fenced(&held.claim, None));
                    };
                    if stored.generation != held.claim.generation {
                        return Err(self.fenced(&held.claim, Some(&stored)));
                    }
                    let landed = stored == next;
                    *held = Held {
                        claim: stored,
                        version,
                    };
                    if landed {
                        return Ok(());
                    }
                    if transient(&e) && attempt == CAS_ATTEMPTS {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(StorageError::Conflict {
            location: location.to_string(),
            reason: format!(
                "the claim object kept changing under this process for {CAS_ATTEMPTS} attempts"
            ),
        })
    }

    /// Writes `bytes` to `location` create-only, and succeeds when the
    /// object then holds exactly them: written by this call, or by an
    /// earlier attempt of it whose answer was lost (the client does not
    /// retry a conditional write that timed out; this does). Fails with
    /// [`StorageError::Conflict`] when another writer's object is there.
    fn create_once(&self, location: &Location, bytes: &[u8]) -> Result<(), StorageError> {
        for attempt in 1..=CAS_ATTEMPTS {
            match self.put(location, Bytes::copy_from_slice(bytes), PutMode::Create) {
                Ok(_) => return Ok(()),
                Err(e) if conditional_failed(&e) || transient(&e) => match self.get(location)? {
                    Some((existing, _)) if existing == bytes => return Ok(()),
                    Some(_) => {
                        return Err(StorageError::Conflict {
                            location: location.to_string(),
                            reason: "another process wrote it first".into(),
                        });
                    }
                    None if attempt == CAS_ATTEMPTS => return Err(e),
                    None => {}
                },
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn fenced(&self, ours: &Claim, stored: Option<&Claim>) -> StorageError {
        StorageError::Fenced {
            location: self.root.to_string(),
            generation: ours.generation,
            holder: match stored {
                Some(claim) => format!("{} (generation {})", claim.holder, claim.generation),
                None => "nobody: the claim object was deleted".into(),
            },
        }
    }

    /// Fails with [`StorageError::Fenced`] when another process claimed
    /// the storage since this one did.
    fn check_claim(&self) -> Result<(), StorageError> {
        let Some(ours) = self
            .held
            .lock()
            .expect("claim lock poisoned")
            .as_ref()
            .map(|held| held.claim.clone())
        else {
            return Ok(());
        };
        match self.read_claim()? {
            Some((stored, _)) if stored.generation == ours.generation => Ok(()),
            stored => Err(self.fenced(&ours, stored.as_ref().map(|(claim, _)| claim))),
        }
    }

    fn generation(&self) -> u64 {
        self.held
            .lock()
            .expect("claim lock poisoned")
            .as_ref()
            .map_or(0, |held| held.claim.generation)
    }

    /// The newest complete checkpoint that `wanted` accepts.
    fn newest_complete(
        &self,
        wanted: impl Fn(Option<&str>) -> bool,
    ) -> Result<Option<CompletedCheckpoint>, StorageError> {
        let claim = self.current_claim()?;
        let newest = claim
            .checkpoints
            .iter()
            .rev()
            .find(|(_, lineage)| wanted(lineage.as_deref()));
        newest
            .map(|(id, _)| self.open_checkpoint(&self.checkpoint_location(*id)))
            .transpose()
    }
}

/// Whether a request failed in a way that may pass on a later attempt
/// (the client's own retries exhausted, or not tried for a conditional
/// write that timed out): a timeout, a reset connection, a 5xx.
fn transient(error: &StorageError) -> bool {
    matches!(error, StorageError::Object { source, .. } if matches!(**source, object_store::Error::Generic { .. }))
}

/// Whether a conditional write's condition failed: `412`, or an existing
/// object for a create. (A `404` on a create is a missing bucket.)
fn conditional_failed(error: &StorageError) -> bool {
    matches!(error, StorageError::Object { source, .. } if matches!(
        **source,
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }
    ))
}

/// Whether a conditional write was refused: its condition failed
/// (`412`, or an existing object for a create), or the object it must
/// replace is gone.
fn refused(error: &StorageError) -> bool {
    matches!(error, StorageError::Object { source, .. } if matches!(
        **source,
        object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. }
    ))
}

fn object_error(
    action: &'static str,
    location: &Location,
    source: object_store::Error,
) -> StorageError {
    StorageError::Object {
        action,
        location: location.to_string(),
        source: Box::new(source),
    }
}

impl CheckpointStorage for ObjectStorage {
    fn begin_checkpoint(&self, checkpoint_id: u64) -> Result<(), StorageError> {
        self.begun
            .lock()
            .expect("begun lock poisoned")
            .insert(checkpoint_id);
        let begun = self.checkpoint_location(checkpoint_id).join(BEGUN_OBJECT);
        self.put(&begun, Bytes::new(), PutMode::Overwrite)
            .map(|_| ())
    }

    /// Writes under a name no other write uses (generation and a random
    /// nonce), so a zombie's or a retried write never replaces a state a
    /// complete checkpoint names. A write that finds its checkpoint
    /// discarded, before or after it, is [`StorageError::Discarded`] (and
    /// its object is deleted again).
    fn write_task_state(
        &self,
        checkpoint_id: u64,
        stage: usize,
        subtask: usize,
        framed: &[u8],
    ) -> Result<TaskStateHandle, StorageError> {
        let discarded = || StorageError::Discarded {
            checkpoint: checkpoint_id,
        };
        let still_begun = || {
            self.begun
                .lock()
                .expect("begun lock poisoned")
                .contains(&checkpoint_id)
        };
        if !still_begun() {
            return Err(discarded());
        }
        let file = format!(
            "{stage}-{subtask}.g{}-{}.state",
            self.generation(),
            random_hex()
        );
        let location = self.checkpoint_location(checkpoint_id).join(&file);
        let written = self.put(
            &location,
            Bytes::copy_from_slice(framed),
            PutMode::Overwrite,
        );
        if written.is_err() && !still_begun() {
            // Slow storage: the checkpoint expired while the client retried.
            return Err(discarded());
        }
        written?;
        if !still_begun() {
            let _ = self.delete(&location);
            return Err(discarded());
        }
        Ok(TaskStateHandle {
            stage,
            subtask,
            file,
            bytes: framed.len() as u64,
            shared: Vec::new(),
        })
    }

    /// Writes the metadata create-only, then records the checkpoint in the
    /// claim object by CAS: fails with [`StorageError::Fenced`] when
    /// another process claimed the storage meanwhile.
    fn complete(
        &self,
        metadata: &CheckpointMetadata,
        framed: &[u8],
    ) -> Result<CompletedCheckpoint, StorageError> {
        let id = metadata.checkpoint_id;
        let location = self.checkpoint_location(id);
        let file = location.join(METADATA_FILE);
        if let Err(e) = self.create_once(&file, framed) {
            if matches!(e, StorageError::Conflict { .. }) {
                // Another process completed this id: a newer holder, most
                // likely, whom the fence names.
                self.check_claim()?;
            }
            return Err(e);
        }
        let lineage = metadata.lineage.clone();
        self.update(|claim| {
            if !claim.checkpoints.iter().any(|(c, _)| *c == id) {
                claim.checkpoints.push((id, lineage.clone()));
                claim.checkpoints.sort_unstable();
            }
        })?;
        self.begun.lock().expect("begun lock poisoned").remove(&id);
        Ok(CompletedCheckpoint {
            location,
            metadata: metadata.clone(),
        })
    }

    fn discard(&self, checkpoint_id: u64) -> Result<(), StorageError> {
        self.begun
            .lock()
            .expect("begun lock poisoned")
            .remove(&checkpoint_id);
        self.delete_all(&self.checkpoint_location(checkpoint_id))
    }

    fn latest(&self) -> Result<Option<CompletedCheckpoint>, StorageError> {
        self.newest_complete(|_| true)
    }

    fn latest_in_lineage(
        &self,
        lineage: Option<&str>,
    ) -> Result<Option<CompletedCheckpoint>, StorageError> {
        self.newest_complete(|l| l == lineage)
    }

    fn highest_id(&self) -> Result<u64, StorageError> {
        let listed = self.listed_ids()?.last().copied().unwrap_or(0);
        let recorded = self
            .current_claim()?
            .checkpoints
            .last()
            .map_or(0, |(id, _)| *id);
        Ok(listed.max(recorded))
    }

    fn write_shared(&self, name: &str, framed: &[u8]) -> Result<(), StorageError> {
        let location = self.shared_location().join(name);
        self.put(
            &location,
            Bytes::copy_from_slice(framed),
            PutMode::Overwrite,
        )?;
        Ok(())
    }

    fn shared_location(&self) -> Location {
        self.root.join(SHARED_DIR)
    }

    fn read_shared(&self, shared: &Location, name: &str) -> Result<Vec<u8>, StorageError> {
        let location = shared.join(name);
        match self.get(&location)? {
            Some((bytes, _)) => Ok(bytes.to_vec()),
            None => Err(StorageError::Corrupt {
                file: location.to_string(),
                reason: "a checkpoint references this shared object, but it is missing".into(),
            }),
        }
    }

    fn read_task_state(
        &self,
        checkpoint: &CompletedCheckpoint,
        handle: &TaskStateHandle,
    ) -> Result<Vec<u8>, StorageError> {
        let location = checkpoint.location.join(&handle.file);
        match self.get(&location)? {
            Some((bytes, _)) => Ok(bytes.to_vec()),
            None => Err(StorageError::Corrupt {
                file: location.to_string(),
                reason: "the checkpoint's metadata names this task state, but it is missing".into(),
            }),
        }
    }

    /// Drops all but the newest `keep` complete checkpoints from the claim
    /// object, then deletes their objects, and those of every checkpoint
    /// older than the newest complete one that never completed (failed,
    /// expired, or a zombie's). A crash between the two leaves objects that
    /// the next call deletes; an object a complete checkpoint names is never
    /// deleted.
    fn retain(&self, keep: usize) -> Result<(), StorageError> {
        let claim = self.current_claim()?;
        let Some(&(newest, _)) = claim.checkpoints.last() else {
            return Ok(());
        };
        let kept: Vec<u64> = claim
            .checkpoints
            .iter()
            .rev()
            .take(keep.max(1))
            .map(|(id, _)| *id)
            .collect();
        if kept.len() < claim.checkpoints.len() {
            self.update(|claim| claim.checkpoints.retain(|(id, _)| kept.contains(id)))?;
        }
        for id in self.listed_ids()? {
            if id < newest && !kept.contains(&id) {
                self.delete_all(&self.checkpoint_location(id))?;
            }
        }
        self.collect_shared_garbage(&kept, newest)
    }

    fn write_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
        checkpoint_id: u64,
    ) -> Result<(), StorageError> {
        let marker = (checkpoint_id, lineage.map(str::to_owned));
        self.update(|claim| {
            claim.commits.insert((stage, subtask), marker.clone());
        })
    }

    fn read_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
    ) -> Result<Option<u64>, StorageError> {
        Ok(self
            .current_claim()?
            .commits
            .get(&(stage, subtask))
            .filter(|(_, written_in)| written_in.as_deref() == lineage)
            .map(|(id, _)| *id))
    }

    /// Takes the claim over with a CAS that raises the generation: the
    /// previous holder, if it still runs, is fenced at its next write.
    /// Object storage cannot tell a dead holder from a live one, so a start
    /// always takes over (as a Kafka producer's `initTransactions` does).
    fn claim(&self, job: &str) -> Result<StorageClaim, StorageError> {
        let location = self.root.join(CLAIM_OBJECT);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder = format!(
            "job `{job}`, process {} on host {}, instance {}",
            std::process::id(),
            match host.trim() {
                "" => "unknown",
                named => named,
            },
            self.instance
        );
        for attempt in 1..=CAS_ATTEMPTS {
            let stored = self.read_claim()?;
            let (previous, mode) = match &stored {
                Some((claim, version)) => (claim.clone(), PutMode::Update(version.clone())),
                None => (Claim::default(), PutMode::Create),
            };
            let next = Claim {
                generation: previous.generation + 1,
                holder: holder.clone(),
                ..previous.clone()
            };
            let version = match self.put(&location, Bytes::from(next.encode()), mode) {
                Ok(version) => version,
                // Another process claimed it first (then this one takes it
                // over in turn), or this one's write landed although its
                // answer was lost: the stored claim tells.
                Err(e) if conditional_failed(&e) || transient(&e) => match self.read_claim()? {
                    Some((landed, version)) if landed == next => version,
                    _ if transient(&e) && attempt == CAS_ATTEMPTS => return Err(e),
                    _ => continue,
                },
                Err(e) => return Err(e),
            };
            if !previous.holder.is_empty() {
                tracing::info!(
                    storage = %self.root,
                    "claimed checkpoint storage (generation {}) after {} (generation {}); if that process \
                     still runs, it is fenced and stops at its next checkpoint",
                    next.generation,
                    previous.holder,
                    previous.generation
                );
            }
            *self.held.lock().expect("claim lock poisoned") = Some(Held {
                claim: next,
                version,
            });
            return Ok(StorageClaim::none());
        }
        Err(StorageError::Conflict {
            location: location.to_string(),
            reason: format!(
                "other processes kept claiming this storage for {CAS_ATTEMPTS} attempts; is the same job being started in a loop?"
            ),
        })
    }

    fn write_lineage(&self, record: &LineageRecord) -> Result<(), StorageError> {
        self.update(|claim| claim.lineage = Some(record.clone()))
    }

    fn read_lineage(&self) -> Result<Option<LineageRecord>, StorageError> {
        Ok(self.current_claim()?.lineage)
    }
}
