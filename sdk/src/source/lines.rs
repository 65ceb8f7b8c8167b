//! [`LineFileSource`]: a line-oriented file source that checkpoints its byte
//! offset.
//!
//! Owns: the source and its position (a byte offset per file split). Does
//! not own the source contract ([`crate::source::Source`]) or when
//! positions are snapshotted (the runtime's source task).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Source, SourcePoll};
use crate::context::SubtaskContext;
use crate::error::BoxError;

/// Reads a UTF-8 text file line by line (without the line terminator).
///
/// The file is read by subtask 0; other subtasks of the stage finish at once.
/// The checkpointed position is the byte offset of the next unread line, so a
/// restore resumes at exactly that line. Reads are small buffered reads of a
/// local file and run inline on the executor.
#[derive(Debug)]
pub struct LineFileSource {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    offset: u64,
    line: String,
}

impl Clone for LineFileSource {
    fn clone(&self) -> Self {
        LineFileSource::new(&self.path)
    }
}

/// The checkpointed position of a [`LineFileSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinePosition {
    /// Byte offset of the next unread line, or `None` for subtasks that do
    /// not read the file.
    pub offset: Option<u64>,
}

impl LineFileSource {
    /// A source over the lines of the file at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        LineFileSource {
            path: path.as_ref().to_path_buf(),
            reader: None,
            offset: 0,
            line: String::new(),
        }
    }
}

impl Source for LineFileSource {
    type Item = String;
    type Position = LinePosition;

    fn name(&self) -> String {
        let file = self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        format!("lines({file})")
    }

    async fn open(
        &mut self,
        ctx: &SubtaskContext,
        restored: Vec<LinePosition>,
    ) -> Result<(), BoxError> {
        if ctx.index != 0 {
            return Ok(());
        }
        let offset = restored.iter().find_map(|p| p.offset).unwrap_or(0);
        let mut file = File::open(&self.path)
            .map_err(|e| format!("cannot open input file {}: {e}", self.path.display()))?;
        let len = file.metadata()?.len();
        if offset > len {
            return Err(format!(
                "checkpointed offset {offset} is past the end of {} ({len} bytes); the file was changed or truncated",
                self.path.display()
            )
            .into());
        }
        file.seek(SeekFrom::Start(offset))?;
        self.reader = Some(BufReader::with_capacity(256 * 1024, file));
        self.offset = offset;
        Ok(())
    }

    async fn poll_batch(
        &mut self,
        out: &mut Vec<String>,
        max: usize,
    ) -> Result<SourcePoll, BoxError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(SourcePoll::Finished);
        };
        for _ in 0..max {
            self.line.clear();
            let read = reader.read_line(&mut self.line).map_err(|e| {
                format!(
                    "cannot read {} at byte offset {}: {e}",
                    self.path.display(),
                    self.offset
                )
            })?;
            if read == 0 {
                return Ok(if out.is_empty() {
                    SourcePoll::Finished
                } else {
                    SourcePoll::Data
                });
            }
            self.offset += read as u64;
            let line = self.line.strip_suffix('\n').unwrap_or(&self.line);
            out.push(line.strip_suffix('\r').unwrap_or(line).to_owned());
        }
        Ok(SourcePoll::Data)
    }

    fn position(&self) -> LinePosition {
        LinePosition {
            offset: self.reader.as_ref().map(|_| self.offset),
        }
    }
}
