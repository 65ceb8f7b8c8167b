//! [`FileSink`]: a transactional file sink, after Flink's `FileSink`.
//!
//! Layout under the output directory `dir`:
//!
//! ```text
//! dir/part-<subtask>-<checkpoint>-<run>             committed, visible
//! dir/.staging/part-...-<run>.inprogress            being written
//! dir/.staging/part-...-<run>.pending               pre-committed (fsynced)
//! ```
//!
//! A transaction is one part file. Pre-commit flushes and fsyncs it and
//! renames it to `.pending`; commit renames it into `dir` (atomic on one
//! file system) and fsyncs the directory. A commit that finds the visible
//! file already there has nothing to do, so commits are idempotent; one that
//! finds neither file reports the loss.
//!
//! Owns: the sink, its transaction handle, and the files above. Does not
//! own the lifecycle its calls follow ([`crate::sink`]) or checkpoint
//! storage ([`crate::storage`]), whose durable-write helpers it reuses.

use std::fmt::{self, Display, Write as _};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{SinkContext, TwoPhaseCommitSink};
use crate::error::BoxError;
use crate::storage::{StorageError, io, sync_dir};

const STAGING: &str = ".staging";

/// Formats one record as one line (without the newline).
type Format<T> = Arc<dyn Fn(&T, &mut String) + Send + Sync>;

/// Writes records as lines of text, exactly once, into part files that
/// become visible when their checkpoint completes.
pub struct FileSink<T> {
    dir: PathBuf,
    format: Format<T>,
    subtask: usize,
    run: String,
    writer: Option<(String, BufWriter<File>)>,
    line: String,
}

/// A [`FileSink`] transaction: one part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTransaction {
    /// The part file's name, without directory or suffix.
    pub name: String,
    /// Records written; an empty transaction produces no file.
    pub records: u64,
}

impl<T> fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.dir)
            .field("subtask", &self.subtask)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for FileSink<T> {
    fn clone(&self) -> Self {
        FileSink {
            dir: self.dir.clone(),
            format: Arc::clone(&self.format),
            subtask: self.subtask,
            run: self.run.clone(),
            writer: None,
            line: String::new(),
        }
    }
}

impl<T: Display> FileSink<T> {
    /// A sink writing each record's `Display` form as a line into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_format(dir, |record: &T, line: &mut String| {
            let _ = write!(line, "{record}");
        })
    }
}

impl<T> FileSink<T> {
    /// A sink writing each record as the line `format` produces.
    pub fn with_format(
        dir: impl Into<PathBuf>,
        format: impl Fn(&T, &mut String) + Send + Sync + 'static,
    ) -> Self {
        FileSink {
            dir: dir.into(),
            format: Arc::new(format),
            subtask: 0,
            run: String::new(),
            writer: None,
            line: String::new(),
        }
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn staging(&self) -> PathBuf {
        self.dir.join(STAGING)
    }

    fn in_progress(&self, name: &str) -> PathBuf {
        self.staging().join(format!("{name}.inprogress"))
    }

    fn pending(&self, name: &str) -> PathBuf {
        self.staging().join(format!("{name}.pending"))
    }

    fn visible(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Deletes staging files that no restored checkpoint can refer to: those
    /// of subtasks this one takes over, begun after the restored checkpoint
    /// (or all of them on a fresh start).
    fn remove_leftovers(&self, ctx: &SinkContext) -> Result<(), StorageError> {
        let staging = self.staging();
        let entries = match fs::read_dir(&staging) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("list", &staging)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", &staging))?;
            let file = entry.file_name();
            let Some((subtask, checkpoint)) = file.to_str().and_then(parse_part_name) else {
                continue;
            };
            let ours = subtask % ctx.subtask.parallelism == ctx.subtask.index;
            let unreferenced = ctx
                .restored_checkpoint
                .is_none_or(|restored| checkpoint > restored);
            if ours && unreferenced {
                let path = entry.path();
                fs::remove_file(&path).map_err(io("delete leftover", &path))?;
            }
        }
        Ok(())
    }

    fn discard(&mut self, transaction: &FileTransaction) -> Result<(), StorageError> {
        if self
            .writer
            .as_ref()
            .is_some_and(|(name, _)| *name == transaction.name)
        {
            self.writer = None;
        }
        for path in [
            self.in_progress(&transaction.name),
            self.pending(&transaction.name),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path)(e)),
            }
        }
        if transaction.records > 0 && self.visible(&transaction.name).exists() {
            tracing::warn!(
                part = %transaction.name,
                "aborting a transaction that was already committed: the restored checkpoint is older than the output, so its records will appear twice"
            );
        }
        Ok(())
    }
}

/// `(subtask, checkpoint)` of a part file name.
fn parse_part_name(file: &str) -> Option<(usize, u64)> {
    let mut parts = file.strip_prefix("part-")?.split('-');
    let subtask = parts.next()?.parse().ok()?;
    let checkpoint = parts.next()?.parse().ok()?;
    Some((subtask, checkpoint))
}

impl<T: Send + 'static> TwoPhaseCommitSink for FileSink<T> {
    type Item = T;
    type Transaction = FileTransaction;

    fn name(&self) -> String {
        format!("file({})", self.dir.display())
    }

    fn open(&mut self, ctx: &SinkContext) -> Result<(), BoxError> {
        self.subtask = ctx.subtask.index;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.run = format!("{nanos:x}{}", ctx.subtask.attempt);
        let staging = self.staging();
        fs::create_dir_all(&staging).map_err(io("create", &staging))?;
        self.remove_leftovers(ctx)?;
        Ok(())
    }

    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<FileTransaction, BoxError> {
        Ok(FileTransaction {
            name: format!("part-{:04}-{checkpoint_id:010}-{}", self.subtask, self.run),
            records: 0,
        })
    }

    fn write(&mut self, transaction: &mut FileTransaction, batch: Vec<T>) -> Result<(), BoxError> {
        if self
            .writer
            .as_ref()
            .is_none_or(|(name, _)| *name != transaction.name)
        {
            let path = self.in_progress(&transaction.name);
            let file = File::create(&path).map_err(io("create", &path))?;
            self.writer = Some((
                transaction.name.clone(),
                BufWriter::with_capacity(256 * 1024, file),
            ));
        }
        let (_, writer) = self.writer.as_mut().expect("opened above");
        for record in &batch {
            self.line.clear();
            (self.format)(record, &mut self.line);
            self.line.push('\n');
            writer
                .write_all(self.line.as_bytes())
                .map_err(io("write", &self.dir.join(STAGING).join(&transaction.name)))?;
        }
        transaction.records += batch.len() as u64;
        Ok(())
    }

    fn pre_commit(&mut self, transaction: &mut FileTransaction) -> Result<(), BoxError> {
        if transaction.records == 0 {
            return Ok(());
        }
        let in_progress = self.in_progress(&transaction.name);
        let Some((name, writer)) = self.writer.take() else {
            return Err(format!(
                "pre-commit of {}: the part file is not open",
                in_progress.display()
            )
            .into());
        };
        debug_assert_eq!(name, transaction.name);
        let file = writer
            .into_inner()
            .map_err(|e| io("flush", &in_progress)(e.into_error()))?;
        file.sync_all().map_err(io("fsync", &in_progress))?;
        drop(file);
        let pending = self.pending(&transaction.name);
        fs::rename(&in_progress, &pending).map_err(io("rename to pending", &in_progress))?;
        sync_dir(&self.staging())?;
        Ok(())
    }

    fn commit(&mut self, transaction: FileTransaction) -> Result<(), BoxError> {
        if transaction.records == 0 {
            return Ok(());
        }
        let pending = self.pending(&transaction.name);
        let visible = self.visible(&transaction.name);
        if let Err(e) = fs::rename(&pending, &visible) {
            if visible.exists() {
                return Ok(());
            }
            return Err(format!(
                "cannot commit part file {} ({} records): {e}; neither it nor {} exists, so these records are lost",
                pending.display(),
                transaction.records,
                visible.display()
            )
            .into());
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    fn abort(&mut self, transaction: FileTransaction) -> Result<(), BoxError> {
        self.discard(&transaction)?;
        Ok(())
    }
}
