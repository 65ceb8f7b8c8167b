//! [`Location`]: where checkpoint storage, a checkpoint or a savepoint
//! lives, a local directory or an object-store URL.
//!
//! Owns: parsing what a user wrote (`JobConfig::checkpoint_dir`,
//! `restore_from`, a savepoint target) into a location, naming the files
//! inside it, and opening the storage that reads and writes there. Does
//! not own either storage's layout ([`super::LocalStorage`],
//! [`super::ObjectStorage`]).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "s3")]
use super::ObjectStorage;
use super::{CheckpointStorage, CompletedCheckpoint, LocalStorage, StorageError};

/// A local directory, or a prefix in an S3 bucket (`s3://bucket/prefix`).
///
/// ```
/// use exactly::storage::Location;
///
/// let local = Location::parse("target/checkpoints").unwrap();
/// assert_eq!(local.to_string(), "target/checkpoints");
/// let s3 = Location::parse("s3://my-bucket/jobs/wordcount/").unwrap();
/// assert_eq!(s3.join("chk-0000000001").to_string(), "s3://my-bucket/jobs/wordcount/chk-0000000001");
/// assert!(Location::parse("gs://bucket/x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// A prefix (possibly empty) in an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
}

/// The URL schemes [`Location::parse`] accepts, for error messages.
const SCHEMES: &str = "s3://bucket/prefix, file:///absolute/path, or a plain path";

impl Location {
    /// Parses a plain path, a `file://` URL or an `s3://bucket/prefix` URL.
    ///
    /// # Errors
    ///
    /// [`StorageError::Location`] for another scheme, an `s3://` URL
    /// without a bucket, or a `file://` URL whose path is not absolute.
    pub fn parse(given: impl AsRef<OsStr>) -> Result<Location, StorageError> {
        let given = given.as_ref();
        let Some(text) = given.to_str().filter(|t| t.contains("://")) else {
            return Ok(Location::Local(PathBuf::from(given)));
        };
        let invalid = |reason: String| StorageError::Location {
            given: text.to_owned(),
            reason,
        };
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "a file:// URL needs an absolute path (file:///dir), found {path:?}"
                )));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid(
                    "the URL names no bucket (s3://bucket/prefix)".into(),
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        Err(invalid(format!(
            "unsupported scheme; checkpoint locations are {SCHEMES}"
        )))
    }

    /// The location of `name` inside this one.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(path.join(name)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                },
            },
        }
    }

    /// The parent location and the last name in this one, or `None` for a
    /// root (a bucket, `/`) or an empty path.
    pub(crate) fn split_last(&self) -> Option<(Location, String)> {
        match self {
            Location::Local(path) => {
                let name = path.file_name()?.to_str()?.to_owned();
                Some((Location::Local(path.parent()?.to_path_buf()), name))
            }
            Location::S3 { bucket, prefix } => {
                let (parent, name) = prefix.rsplit_once('/').unwrap_or(("", prefix));
                (!name.is_empty()).then(|| {
                    (
                        Location::S3 {
                            bucket: bucket.clone(),
                            prefix: parent.to_owned(),
                        },
                        name.to_owned(),
                    )
                })
            }
        }
    }

    /// The directory, for a local location.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(path) => Some(path),
            Location::S3 { .. } => None,
        }
    }

    /// The same location, with a local path made absolute, so that it
    /// still names the same directory from another working directory.
    pub fn absolute(&self) -> Location {
        match self {
            Location::Local(path) => {
                Location::Local(std::path::absolute(path).unwrap_or(path.clone()))
            }
            other => other.clone(),
        }
    }

    /// Opens checkpoint storage rooted here: [`LocalStorage`] for a
    /// directory, [`ObjectStorage`] (configured from the standard AWS
    /// environment) for an `s3://` URL.
    ///
    /// # Errors
    ///
    /// [`StorageError::ObjectStoreConfig`] when the S3 client cannot be
    /// configured from the environment.
    pub fn open_storage(&self) -> Result<Arc<dyn CheckpointStorage>, StorageError> {
        Ok(match self {
            Location::Local(path) => Arc::new(LocalStorage::new(path)),
            #[cfg(feature = "s3")]
            Location::S3 { .. } => Arc::new(ObjectStorage::open(self)?),
            #[cfg(not(feature = "s3"))]
            Location::S3 { .. } => return Err(self.without_s3()),
        })
    }

    /// Reads the complete checkpoint or savepoint here, and opens the
    /// storage its task states are read through.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotACheckpoint`] when there is no complete
    /// checkpoint here, and whatever reading its metadata fails with.
    pub fn open_checkpoint(
        &self,
    ) -> Result<(CompletedCheckpoint, Arc<dyn CheckpointStorage>), StorageError> {
        match self {
            Location::Local(path) => Ok((
                LocalStorage::open_checkpoint(path)?,
                Arc::new(LocalStorage::new(path)),
            )),
            #[cfg(feature = "s3")]
            Location::S3 { .. } => {
                let storage = ObjectStorage::open(self)?;
                Ok((storage.open_checkpoint(self)?, Arc::new(storage)))
            }
            #[cfg(not(feature = "s3"))]
            Location::S3 { .. } => Err(self.without_s3()),
        }
    }

    /// The error for an `s3://` location in a build without the `s3`
    /// feature.
    #[cfg(not(feature = "s3"))]
    pub(crate) fn without_s3(&self) -> StorageError {
        StorageError::Location {
            given: self.to_string(),
            reason: "this build of exactly has no S3 support: enable the `s3` feature of the `exactly` crate \
                     (on by default)"
                .into(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => path.display().fmt(f),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::Local(path)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::Local(path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(
            Location::parse("file:///tmp/x").unwrap(),
            Location::Local("/tmp/x".into())
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap().join("k").to_string(),
            "s3://b/k"
        );
        for (bad, says) in [
            ("s3:///x", "no bucket"),
            ("file://relative", "absolute"),
            ("hdfs://nn/x", "s3://bucket/prefix"),
        ] {
            let err = Location::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(says), "{err}");
        }
    }
}
