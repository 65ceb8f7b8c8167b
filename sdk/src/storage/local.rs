//! [`LocalStorage`]: checkpoints in a local directory.
//!
//! Layout: `<root>/chk-<id>/<stage>-<subtask>.state` for task states and
//! `<root>/chk-<id>/_metadata`, written last; `<root>/shared/` for the
//! segments of incremental keyed state that several checkpoints reference
//! ([`super::shared`]); `<root>/commits/<stage>-<subtask>`
//! holds the checkpoint up to which a sink subtask has committed, and in
//! which lineage (`<id>` for the default lineage, `<id> lineage=<lineage>`
//! otherwise); `<root>/lineage` records the current lineage and the
//! savepoint it started from ([`LineageRecord`], a text file whose first
//! line names its format version), when a run started with
//! `restore_from`; `<root>/restored-from`, which older builds wrote instead,
//! is still read, as the default lineage; `<root>/lock` is locked by the
//! running job and names it. Every file is written to a
//! temporary name, fsynced, renamed into place, and its directory fsynced, so
//! a crash leaves either the old state or the new one, never half a file.
//!
//! Owns: the directory layout above and its durable writes. Does not own
//! what the files hold: the frame is [`super::frame`]'s, the payloads the
//! runtime's.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::frame::{self, PayloadKind};
use super::shared::{self, SHARED_DIR};
use super::{
    CheckpointMetadata, CheckpointStorage, CompletedCheckpoint, LineageRecord, Location,
    StorageClaim, StorageError, TaskStateHandle,
};

/// The name of the file that completes a checkpoint.
pub const METADATA_FILE: &str = "_metadata";

/// The file naming the savepoint a checkpoint directory continues, as
/// builds before lineages wrote it: read as the default lineage.
const RESTORE_ORIGIN_FILE: &str = "restored-from";

/// The file recording the directory's current lineage.
const LINEAGE_FILE: &str = "lineage";

/// The first line of [`LINEAGE_FILE`]: its format and version.
const LINEAGE_HEADER: &str = "exactly lineage 1";

/// What follows a checkpoint id in a commit marker of a lineage.
const MARKER_LINEAGE: &str = " lineage=";

/// The file a running job locks, and names itself in.
const LOCK_FILE: &str = "lock";

/// How many times [`LocalStorage::discard`] retries a removal that raced
/// with a late task's write, 1 ms apart.
const DISCARD_ATTEMPTS: u32 = 200;

/// Checkpoint storage in a local directory: the embedded default.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

/// Wraps an I/O error with what was being done and to which path.
pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, then
/// fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    sync_dir(dir)
}

/// Fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

impl LocalStorage {
    /// Storage rooted at `root`; the directory is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("chk-{id:010}"))
    }

    /// Deletes the shared objects that no checkpoint of `kept` references
    /// and that are not newer than `newest` ([`shared::garbage`]).
    fn collect_shared_garbage(&self, kept: &[u64], newest: u64) -> Result<(), StorageError> {
        let dir = self.root.join(SHARED_DIR);
        let listed: Vec<String> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let kept = kept
            .iter()
            .map(|&id| Self::open_checkpoint(&self.checkpoint_dir(id)))
            .collect::<Result<Vec<_>, _>>()?;
        for name in shared::garbage(&listed, &kept.iter().collect::<Vec<_>>(), newest) {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path)(e)),
            }
        }
        Ok(())
    }

    /// Reads the complete checkpoint or savepoint in directory `path`.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotACheckpoint`] when `path` has no metadata file, and
    /// [`StorageError::Corrupt`] when the metadata does not decode.
    pub fn open_checkpoint(path: &Path) -> Result<CompletedCheckpoint, StorageError> {
        let meta_path = path.join(METADATA_FILE);
        let bytes = match fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotACheckpoint {
                    location: path.into(),
                    reason: format!("it has no {METADATA_FILE} file"),
                });
            }
            Err(e) => return Err(io("read", &meta_path)(e)),
        };
        let frame = frame::decode(&bytes, PayloadKind::Metadata, &meta_path.display())?;
        let metadata = CheckpointMetadata::decode(&frame, &meta_path.display())?;
        Ok(CompletedCheckpoint {
            location: path.into(),
            metadata,
        })
    }

    /// Ids of every `chk-*` directory, ascending.
    fn checkpoint_ids(&self) -> Result<Vec<u64>, StorageError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.root)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &self.root))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("chk-"))
                .and_then(|n| n.parse().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn is_complete(&self, id: u64) -> bool {
        self.checkpoint_dir(id).join(METADATA_FILE).exists()
    }

    /// The newest complete checkpoint that `wanted` accepts.
    fn newest_complete(
        &self,
        wanted: impl Fn(&CompletedCheckpoint) -> bool,
    ) -> Result<Option<CompletedCheckpoint>, StorageError> {
        for id in self.checkpoint_ids()?.into_iter().rev() {
            if self.is_complete(id) {
                let checkpoint = Self::open_checkpoint(&self.checkpoint_dir(id))?;
                if wanted(&checkpoint) {
                    return Ok(Some(checkpoint));
                }
            }
        }
        Ok(None)
    }
}

impl CheckpointStorage for LocalStorage {
    fn begin_checkpoint(&self, checkpoint_id: u64) -> Result<(), StorageError> {
        let dir = self.checkpoint_dir(checkpoint_id);
        fs::create_dir_all(&dir).map_err(io("create", &dir))
    }

    /// Writes into the directory `begin_checkpoint` created, and never
    /// creates it: a directory removed by an expiry stays removed, and the
    /// late write fails with [`StorageError::Discarded`].
    fn write_task_state(
        &self,
        checkpoint_id: u64,
        stage: usize,
        subtask: usize,
        framed: &[u8],
    ) -> Result<TaskStateHandle, StorageError> {
        let dir = self.checkpoint_dir(checkpoint_id);
        let file = format!("{stage}-{subtask}.state");
        let discarded = StorageError::Discarded {
            checkpoint: checkpoint_id,
        };
        if !dir.is_dir() {
            return Err(discarded);
        }
        // Only a discard deletes files of a checkpoint in progress: a file
        // that vanished under the write (the directory may still be
        // half-removed) means the checkpoint was discarded.
        write_atomically(&dir.join(&file), framed).map_err(|e| match e {
            StorageError::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                discarded
            }
            e if dir.is_dir() => e,
            _ => discarded,
        })?;
        Ok(TaskStateHandle {
            stage,
            subtask,
            file,
            bytes: framed.len() as u64,
            shared: Vec::new(),
        })
    }

    fn write_shared(&self, name: &str, framed: &[u8]) -> Result<(), StorageError> {
        let dir = self.root.join(SHARED_DIR);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            sync_dir(&self.root)?;
        }
        write_atomically(&dir.join(name), framed)
    }

    fn shared_location(&self) -> Location {
        Location::Local(self.root.join(SHARED_DIR))
    }

    fn read_shared(&self, shared: &Location, name: &str) -> Result<Vec<u8>, StorageError> {
        let Some(dir) = shared.as_local() else {
            return Err(StorageError::Location {
                given: shared.to_string(),
                reason: "a local directory's storage reads only local checkpoints".into(),
            });
        };
        let path = dir.join(name);
        fs::read(&path).map_err(io("read", &path))
    }

    fn complete(
        &self,
        metadata: &CheckpointMetadata,
        framed: &[u8],
    ) -> Result<CompletedCheckpoint, StorageError> {
        let dir = self.checkpoint_dir(metadata.checkpoint_id);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        write_atomically(&dir.join(METADATA_FILE), framed)?;
        sync_dir(&self.root)?;
        Ok(CompletedCheckpoint {
            location: dir.into(),
            metadata: metadata.clone(),
        })
    }

    /// Removes the checkpoint's directory. A late task may be writing its
    /// snapshot into it at that moment: its file can appear after the
    /// directory was listed, and the removal then fails with "directory
    /// not empty". The removal is retried (each write happens once, so the
    /// race ends quickly); the late write fails and is dropped as
    /// [`StorageError::Discarded`].
    fn discard(&self, checkpoint_id: u64) -> Result<(), StorageError> {
        let dir = self.checkpoint_dir(checkpoint_id);
        let mut attempts = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                        && attempts < DISCARD_ATTEMPTS =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(io("delete", &dir)(e)),
            }
        }
    }

    fn latest(&self) -> Result<Option<CompletedCheckpoint>, StorageError> {
        self.newest_complete(|_| true)
    }

    fn latest_in_lineage(
        &self,
        lineage: Option<&str>,
    ) -> Result<Option<CompletedCheckpoint>, StorageError> {
        self.newest_complete(|c| c.metadata.lineage.as_deref() == lineage)
    }

    fn highest_id(&self) -> Result<u64, StorageError> {
        Ok(self.checkpoint_ids()?.last().copied().unwrap_or(0))
    }

    fn read_task_state(
        &self,
        checkpoint: &CompletedCheckpoint,
        handle: &TaskStateHandle,
    ) -> Result<Vec<u8>, StorageError> {
        let Some(dir) = checkpoint.location.as_local() else {
            return Err(StorageError::Location {
                given: checkpoint.location.to_string(),
                reason: "a local directory's storage reads only local checkpoints".into(),
            });
        };
        let path = dir.join(&handle.file);
        fs::read(&path).map_err(io("read", &path))
    }

    fn retain(&self, keep: usize) -> Result<(), StorageError> {
        let ids = self.checkpoint_ids()?;
        let complete: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&id| self.is_complete(id))
            .collect();
        let Some(&newest) = complete.last() else {
            return Ok(());
        };
        let keep_from = complete.len().saturating_sub(keep.max(1));
        let kept = &complete[keep_from..];
        for id in ids {
            let abandoned = id < newest && !kept.contains(&id);
            if abandoned {
                self.discard(id)?;
            }
        }
        self.collect_shared_garbage(kept, newest)
    }

    fn write_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
        checkpoint_id: u64,
    ) -> Result<(), StorageError> {
        let dir = self.root.join("commits");
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let text = match lineage {
            Some(lineage) => format!("{checkpoint_id}{MARKER_LINEAGE}{lineage}\n"),
            None => format!("{checkpoint_id}\n"),
        };
        write_atomically(&dir.join(format!("{stage}-{subtask}")), text.as_bytes())
    }

    fn read_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
    ) -> Result<Option<u64>, StorageError> {
        let path = self.root.join("commits").join(format!("{stage}-{subtask}"));
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let line = text.trim_end_matches('\n');
        let (id, written_in) = match line.split_once(MARKER_LINEAGE) {
            Some((id, lineage)) => (id, Some(lineage)),
            None => (line, None),
        };
        let id: u64 = id.parse().map_err(|_| StorageError::Corrupt {
            file: path.display().to_string(),
            reason: format!("expected a checkpoint id, optionally followed by{MARKER_LINEAGE}<id>, found {text:?}"),
        })?;
        Ok((written_in == lineage).then_some(id))
    }

    /// Locks `<root>/lock` (an advisory `flock`, released when the process
    /// dies, even by SIGKILL) and writes the claimer into it.
    fn claim(&self, job: &str) -> Result<StorageClaim, StorageError> {
        fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.root.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(StorageError::InUse {
                    path: self.root.clone(),
                    holder: match holder.trim() {
                        "" => "a job that has not written its name yet".to_owned(),
                        named => named.to_owned(),
                    },
                });
            }
            Err(fs::TryLockError::Error(source)) => return Err(io("lock", &path)(source)),
        }
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let claimer = format!(
            "job `{job}`, process {} on host {}",
            std::process::id(),
            match host.trim() {
                "" => "unknown",
                named => named,
            }
        );
        file.set_len(0).map_err(io("write", &path))?;
        file.write_all(claimer.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("write", &path))?;
        Ok(StorageClaim::new(file))
    }

    /// Writes `<root>/lineage`: its format line, then `id`, `origin` and
    /// `savepoint` lines (`key: value`).
    fn write_lineage(&self, record: &LineageRecord) -> Result<(), StorageError> {
        fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let mut text = format!("{LINEAGE_HEADER}\n");
        if let Some(id) = &record.lineage {
            text.push_str(&format!("id: {id}\n"));
        }
        text.push_str(&format!("origin: {}\n", record.origin));
        if let Some(savepoint) = &record.savepoint {
            text.push_str(&format!("savepoint: {savepoint}\n"));
        }
        write_atomically(&self.root.join(LINEAGE_FILE), text.as_bytes())
    }

    /// Reads `<root>/lineage`, or else the `<root>/restored-from` of an
    /// older build (the default lineage).
    fn read_lineage(&self) -> Result<Option<LineageRecord>, StorageError> {
        let path = self.root.join(LINEAGE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => return parse_lineage(&text, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &path)(e)),
        }
        let path = self.root.join(RESTORE_ORIGIN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(LineageRecord {
                lineage: None,
                origin: text.trim_end().to_owned(),
                savepoint: None,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }
}

impl LocalStorage {
    /// Writes a self-contained savepoint into directory `target`, which
    /// must not exist yet: every file of `files` (name and content), then
    /// `metadata`, into a temporary directory renamed into place.
    pub(crate) fn write_savepoint(
        target: &Path,
        files: impl IntoIterator<Item = Result<(String, Vec<u8>), StorageError>>,
        metadata: &[u8],
    ) -> Result<CompletedCheckpoint, StorageError> {
        if target.exists() {
            return Err(StorageError::Io {
                action: "create savepoint",
                path: target.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the directory already exists",
                ),
            });
        }
        let tmp = target.with_extension("inprogress");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        let write = |name: &str, bytes: &[u8]| -> Result<(), StorageError> {
            let to = tmp.join(name);
            if let Some(dir) = to.parent().filter(|d| *d != tmp) {
                fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            let mut out = File::create(&to).map_err(io("create", &to))?;
            out.write_all(bytes).map_err(io("write", &to))?;
            out.sync_all().map_err(io("fsync", &to))
        };
        for file in files {
            let (name, bytes) = file?;
            write(&name, &bytes)?;
        }
        write(METADATA_FILE, metadata)?;
        if tmp.join(SHARED_DIR).is_dir() {
            sync_dir(&tmp.join(SHARED_DIR))?;
        }
        sync_dir(&tmp)?;
        fs::rename(&tmp, target).map_err(io("rename into place", target))?;
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Self::open_checkpoint(target)
    }
}

/// Parses the text of a lineage file read from `path`.
fn parse_lineage(text: &str, path: &Path) -> Result<LineageRecord, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        file: path.display().to_string(),
        reason,
    };
    let mut lines = text.lines();
    match lines.next() {
        Some(LINEAGE_HEADER) => {}
        first => {
            return Err(corrupt(format!(
                "expected the first line {LINEAGE_HEADER:?}, found {first:?} (a lineage file of a newer build?)"
            )));
        }
    }
    let mut record = LineageRecord {
        lineage: None,
        origin: String::new(),
        savepoint: None,
    };
    let mut origin = None;
    for line in lines {
        match line.split_once(": ") {
            Some(("id", id)) => record.lineage = Some(id.to_owned()),
            Some(("origin", value)) => origin = Some(value.to_owned()),
            Some(("savepoint", value)) => record.savepoint = Some(Location::parse(value)?),
            _ => return Err(corrupt(format!("unexpected line {line:?}"))),
        }
    }
    record.origin = origin.ok_or_else(|| corrupt("it names no origin".into()))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::storage::StageMetadata;

    fn metadata(id: u64, handles: Vec<TaskStateHandle>) -> CheckpointMetadata {
        CheckpointMetadata {
            job: "test".into(),
            checkpoint_id: id,
            triggered_unix_ms: 0,
            stages: vec![StageMetadata {
                name: "s".into(),
                operators: vec!["op".into()],
                parallelism: 1,
            }],
            task_states: handles,
            lineage: None,
        }
    }

    fn complete(storage: &LocalStorage, id: u64, state: &[u8]) -> CompletedCheckpoint {
        complete_in(storage, id, state, None)
    }

    /// Completes checkpoint `id` of lineage `lineage`.
    fn complete_in(
        storage: &LocalStorage,
        id: u64,
        state: &[u8],
        lineage: Option<&str>,
    ) -> CompletedCheckpoint {
        let framed = frame::encode(PayloadKind::TaskState, Codec::Bincode, state);
        storage.begin_checkpoint(id).unwrap();
        let handle = storage.write_task_state(id, 0, 0, &framed).unwrap();
        let meta = CheckpointMetadata {
            lineage: lineage.map(str::to_owned),
            ..metadata(id, vec![handle])
        };
        let bytes = frame::encode(
            PayloadKind::Metadata,
            Codec::Bincode,
            &Codec::Bincode.encode(&meta, "m").unwrap(),
        );
        storage.complete(&meta, &bytes).unwrap()
    }

    #[test]
    fn retain_deletes_the_shared_objects_no_kept_checkpoint_references() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let segment = frame::encode(PayloadKind::KeyedSegment, Codec::Bincode, b"seg");
        let [a, b, c, in_flight] = [1, 2, 3, 5].map(|id| shared::object_name(id, 0, 0));
        for name in [&a, &b, &c, &in_flight] {
            storage.write_shared(name, &segment).unwrap();
        }
        for (id, references) in [(1, vec![&a]), (2, vec![&a, &b]), (3, vec![&c])] {
            let framed = frame::encode(PayloadKind::TaskState, Codec::Bincode, b"s");
            storage.begin_checkpoint(id).unwrap();
            let mut handle = storage.write_task_state(id, 0, 0, &framed).unwrap();
            handle.shared = references.into_iter().cloned().collect();
            let meta = metadata(id, vec![handle]);
            let bytes = frame::encode(
                PayloadKind::Metadata,
                Codec::Bincode,
                &Codec::Bincode.encode(&meta, "m").unwrap(),
            );
            storage.complete(&meta, &bytes).unwrap();
        }
        storage.begin_checkpoint(5).unwrap();
        storage.retain(1).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path().join(SHARED_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort_unstable();
        assert_eq!(left, vec![c.clone(), in_flight]);
        let kept = storage.latest().unwrap().unwrap();
        assert_eq!(
            storage.read_shared(&kept.shared_location(), &c).unwrap(),
            segment
        );
    }

    #[test]
    fn metadata_written_last_decides_completeness() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        assert!(storage.latest().unwrap().is_none());
        complete(&storage, 1, b"one");
        // Checkpoint 2 has a task state but no metadata: not complete.
        storage.begin_checkpoint(2).unwrap();
        storage
            .write_task_state(
                2,
                0,
                0,
                &frame::encode(PayloadKind::TaskState, Codec::Bincode, b"two"),
            )
            .unwrap();
        let latest = storage.latest().unwrap().unwrap();
        assert_eq!(latest.id(), 1);
        assert_eq!(storage.highest_id().unwrap(), 2);
        let bytes = storage
            .read_task_state(&latest, &latest.metadata.task_states[0])
            .unwrap();
        let payload = frame::decode(&bytes, PayloadKind::TaskState, &"x")
            .unwrap()
            .payload;
        assert_eq!(payload, b"one");
    }

    #[test]
    fn a_late_task_state_of_a_discarded_checkpoint_is_refused_as_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        storage.begin_checkpoint(3).unwrap();
        storage.discard(3).unwrap();
        let framed = frame::encode(PayloadKind::TaskState, Codec::Bincode, b"late");
        let err = storage.write_task_state(3, 0, 0, &framed).unwrap_err();
        assert!(
            matches!(err, StorageError::Discarded { checkpoint: 3 }),
            "{err:?}"
        );
        assert!(
            !storage.checkpoint_dir(3).exists(),
            "a late write must not bring a discarded checkpoint back"
        );
    }

    #[test]
    fn retain_keeps_the_newest_and_the_in_progress_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        for id in 1..=5 {
            complete(&storage, id, b"s");
        }
        storage.begin_checkpoint(6).unwrap();
        storage
            .write_task_state(
                6,
                0,
                0,
                &frame::encode(PayloadKind::TaskState, Codec::Bincode, b"x"),
            )
            .unwrap();
        storage.retain(2).unwrap();
        assert_eq!(storage.checkpoint_ids().unwrap(), vec![4, 5, 6]);
        assert_eq!(storage.latest().unwrap().unwrap().id(), 5);
    }

    #[test]
    fn corrupt_metadata_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let done = complete(&storage, 3, b"s");
        let meta = done.location.as_local().unwrap().join(METADATA_FILE);
        let mut bytes = fs::read(&meta).unwrap();
        bytes.truncate(bytes.len() - 3);
        fs::write(&meta, bytes).unwrap();
        let err = storage.latest().unwrap_err().to_string();
        assert!(err.contains("chk-0000000003/_metadata"), "{err}");
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn commit_markers_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        assert_eq!(storage.read_commit_marker(1, 0, None).unwrap(), None);
        storage.write_commit_marker(1, 0, None, 7).unwrap();
        storage.write_commit_marker(1, 0, None, 9).unwrap();
        assert_eq!(storage.read_commit_marker(1, 0, None).unwrap(), Some(9));
        assert_eq!(storage.read_commit_marker(1, 1, None).unwrap(), None);
        fs::write(dir.path().join("commits/1-0"), "nine").unwrap();
        let err = storage
            .read_commit_marker(1, 0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("commits/1-0") && err.contains("nine"), "{err}");
    }

    /// A marker counts only in the lineage that wrote it; a marker without
    /// a lineage (as older builds wrote them) is of the default lineage.
    #[test]
    fn commit_markers_of_another_lineage_count_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        storage.write_commit_marker(0, 0, None, 20).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("commits/0-0")).unwrap(),
            "20\n"
        );
        assert_eq!(storage.read_commit_marker(0, 0, Some("b")).unwrap(), None);
        storage.write_commit_marker(0, 0, Some("b"), 5).unwrap();
        assert_eq!(
            storage.read_commit_marker(0, 0, Some("b")).unwrap(),
            Some(5)
        );
        assert_eq!(storage.read_commit_marker(0, 0, Some("c")).unwrap(), None);
        assert_eq!(storage.read_commit_marker(0, 0, None).unwrap(), None);
    }

    /// The lineage record round-trips; without one, an older build's
    /// `restored-from` reads as the default lineage; checkpoints are found
    /// by lineage.
    #[test]
    fn lineages_are_recorded_and_checkpoints_found_by_lineage() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        assert_eq!(storage.read_lineage().unwrap(), None);
        fs::write(
            dir.path().join(RESTORE_ORIGIN_FILE),
            "job checkpoint 3 triggered at 9 ms\n",
        )
        .unwrap();
        let legacy = storage.read_lineage().unwrap().unwrap();
        assert_eq!(
            (legacy.lineage, legacy.origin.as_str()),
            (None, "job checkpoint 3 triggered at 9 ms")
        );
        let record = LineageRecord {
            lineage: Some("18c-2f".into()),
            origin: "job checkpoint 3 triggered at 9 ms".into(),
            savepoint: Some(dir.path().join("sp").into()),
        };
        storage.write_lineage(&record).unwrap();
        assert_eq!(storage.read_lineage().unwrap(), Some(record));

        complete(&storage, 1, b"old");
        complete_in(&storage, 2, b"new", Some("18c-2f"));
        complete(&storage, 3, b"old");
        assert_eq!(storage.latest_in_lineage(None).unwrap().unwrap().id(), 3);
        assert_eq!(
            storage
                .latest_in_lineage(Some("18c-2f"))
                .unwrap()
                .unwrap()
                .id(),
            2
        );
        assert!(storage.latest_in_lineage(Some("other")).unwrap().is_none());

        fs::write(dir.path().join(LINEAGE_FILE), "exactly lineage 7\n").unwrap();
        let err = storage.read_lineage().unwrap_err().to_string();
        assert!(
            err.contains("lineage") && err.contains("newer build"),
            "{err}"
        );
    }

    /// Metadata of format version 2 (no lineage) reads as the default
    /// lineage.
    #[test]
    fn version_2_metadata_is_of_the_default_lineage() {
        let dir = tempfile::tempdir().unwrap();
        let chk = dir.path().join("chk-0000000004");
        fs::create_dir_all(&chk).unwrap();
        let old = crate::storage::MetadataV2::from(&CheckpointMetadata {
            lineage: Some("dropped".into()),
            ..metadata(4, Vec::new())
        });
        let payload = Codec::Bincode.encode(&old, "m").unwrap();
        let framed = frame::encode_version(2, PayloadKind::Metadata, Codec::Bincode, &payload);
        fs::write(chk.join(METADATA_FILE), framed).unwrap();
        let storage = LocalStorage::new(dir.path());
        let read = storage.latest_in_lineage(None).unwrap().unwrap();
        assert_eq!((read.id(), read.metadata.lineage), (4, None));
    }

    #[test]
    fn savepoints_are_self_contained_copies() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path().join("checkpoints"));
        let done = complete(&storage, 7, b"state");
        let target = dir.path().join("savepoints/sp-1");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let metadata = fs::read(done.location.as_local().unwrap().join(METADATA_FILE)).unwrap();
        let export = |checkpoint| {
            crate::storage::savepoint::export(
                &storage,
                checkpoint,
                &metadata,
                &target.as_path().into(),
            )
        };
        let savepoint = export(&done).unwrap();
        storage.discard(7).unwrap();
        let reopened = LocalStorage::open_checkpoint(&target).unwrap();
        assert_eq!(reopened.id(), 7);
        let bytes = storage
            .read_task_state(&savepoint, &savepoint.metadata.task_states[0])
            .unwrap();
        assert!(bytes.ends_with(b"state"));
        assert!(export(&savepoint).is_err(), "overwrote a savepoint");
        let missing = LocalStorage::open_checkpoint(dir.path())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no _metadata"), "{missing}");
    }
}
