//! Shared state objects: what incremental checkpoints write once and later
//! checkpoints reference, and when one may be deleted.
//!
//! Owns: the naming of shared objects ([`object_name`]), where a complete
//! checkpoint's shared objects live ([`CompletedCheckpoint::shared_location`])
//! and the garbage-collection rule ([`garbage`]). Does not own what is in
//! them (`runtime::keyed` writes keyed-state segments) or the listing and
//! deleting (each storage does its own).
//!
//! Layout, as in Flink's incremental checkpoints: a checkpoint directory or
//! prefix `P` holds `P/chk-<id>/` per checkpoint and `P/shared/` for the
//! objects that several checkpoints reference. A savepoint is
//! self-contained: it keeps copies of the objects it references in its own
//! `shared/`.
//!
//! An object's name starts with the id of the checkpoint whose barrier
//! wrote it: `c<id>-<stage>-<subtask>-<random>.seg`. A task writes an object
//! at barrier `id` and references it in every later checkpoint until a
//! compacted base replaces it, so a checkpoint newer than `id` that does not
//! reference it never will again. Hence the rule: an object is garbage when
//! no kept checkpoint references it and its id is not newer than the newest
//! complete checkpoint. Objects of a checkpoint still in flight (a newer id)
//! are never touched, which is what went wrong in FLINK-24611 (shared
//! files deleted while a pending checkpoint still used them).

use std::collections::HashSet;

use super::{CompletedCheckpoint, Location};

/// The folder, beside the `chk-<id>` folders, that holds shared objects.
pub(crate) const SHARED_DIR: &str = "shared";

/// A fresh name for an object written at the barrier of checkpoint
/// `checkpoint_id` by subtask `subtask` of stage `stage`.
pub(crate) fn object_name(checkpoint_id: u64, stage: usize, subtask: usize) -> String {
    format!(
        "c{checkpoint_id:010}-{stage}-{subtask}-{}.seg",
        super::random_hex()
    )
}

/// The checkpoint id an object's name starts with, or `None` for a name
/// this module did not make.
fn written_at(name: &str) -> Option<u64> {
    name.strip_prefix('c')?.split('-').next()?.parse().ok()
}

/// The objects among `listed` that may be deleted: not referenced by any
/// kept checkpoint, and written at a checkpoint no newer than `newest`, the
/// newest complete one. Names this module did not make are kept.
pub(crate) fn garbage<'a>(
    listed: &'a [String],
    kept: &[&CompletedCheckpoint],
    newest: u64,
) -> Vec<&'a str> {
    let referenced: HashSet<&str> = kept
        .iter()
        .flat_map(|c| &c.metadata.task_states)
        .flat_map(|h| &h.shared)
        .map(String::as_str)
        .collect();
    listed
        .iter()
        .map(String::as_str)
        .filter(|name| !referenced.contains(name))
        .filter(|name| written_at(name).is_some_and(|id| id <= newest))
        .collect()
}

impl CompletedCheckpoint {
    /// Where the shared objects this checkpoint references live: the
    /// `shared/` folder beside its `chk-<digits>` folder, or inside it for
    /// a savepoint (any other name).
    pub fn shared_location(&self) -> Location {
        let in_checkpoint_dir = |name: &str| {
            name.strip_prefix("chk-")
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        };
        match self.location.split_last() {
            Some((parent, name)) if in_checkpoint_dir(&name) => parent.join(SHARED_DIR),
            _ => self.location.join(SHARED_DIR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CheckpointMetadata, TaskStateHandle};

    fn checkpoint(location: &str, id: u64, shared: &[&str]) -> CompletedCheckpoint {
        CompletedCheckpoint {
            location: Location::parse(location).unwrap(),
            metadata: CheckpointMetadata {
                job: "j".into(),
                checkpoint_id: id,
                triggered_unix_ms: 0,
                stages: vec![],
                task_states: vec![TaskStateHandle {
                    stage: 0,
                    subtask: 0,
                    file: "0-0.state".into(),
                    bytes: 1,
                    shared: shared.iter().map(|s| s.to_string()).collect(),
                }],
                lineage: None,
            },
        }
    }

    #[test]
    fn names_carry_the_checkpoint_that_wrote_them_and_never_repeat() {
        let a = object_name(42, 1, 3);
        assert_eq!(written_at(&a), Some(42));
        assert!(a.starts_with("c0000000042-1-3-"), "{a}");
        assert_ne!(a, object_name(42, 1, 3));
        assert_eq!(written_at("notes.txt"), None);
    }

    #[test]
    fn garbage_is_unreferenced_and_not_newer_than_the_newest_complete() {
        let [base, delta, replaced, in_flight, zombie] = [
            object_name(3, 0, 0),
            object_name(5, 0, 0),
            object_name(2, 0, 0),
            object_name(7, 0, 0),
            object_name(6, 0, 1),
        ];
        let listed = vec![
            base.clone(),
            delta.clone(),
            replaced.clone(),
            in_flight.clone(),
            zombie.clone(),
            "README".to_owned(),
        ];
        let kept = checkpoint("s3://b/job/chk-0000000006", 6, &[&base, &delta]);
        let mut found = garbage(&listed, &[&kept], 6);
        found.sort_unstable();
        let mut expected = vec![replaced.as_str(), zombie.as_str()];
        expected.sort_unstable();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_savepoint_keeps_its_shared_objects_inside_itself() {
        let chk = checkpoint("/data/job/chk-0000000006", 6, &[]);
        assert_eq!(chk.shared_location().to_string(), "/data/job/shared");
        let savepoint = checkpoint("s3://b/savepoints/sp-1", 6, &[]);
        assert_eq!(
            savepoint.shared_location().to_string(),
            "s3://b/savepoints/sp-1/shared"
        );
        let named_like_one = checkpoint("/data/savepoints/chk-final", 6, &[]);
        assert_eq!(
            named_like_one.shared_location().to_string(),
            "/data/savepoints/chk-final/shared"
        );
    }
}
