//! The claim object's content and its text format.
//!
//! ```text
//! exactly claim 1
//! generation: 4
//! holder: job `wordcount`, process 77 on host a, instance 5f0c...
//! lineage-id: 18c5e-9a0f...          (when a lineage was recorded)
//! lineage-origin: wordcount checkpoint 3 triggered at 1700000000000 ms
//! lineage-savepoint: s3://bucket/savepoints/sp-1
//! checkpoint: 41 -                   (complete checkpoints: id, lineage or -)
//! checkpoint: 42 -
//! commit: 1-0 42 -                   (sink commit markers: stage-subtask, id, lineage or -)
//! ```
//!
//! Text, so that an operator can read who holds a job's storage and what
//! it completed with any S3 client. Owns: the format. Does not own the
//! compare-and-swap protocol on it ([`super`]).

use std::collections::BTreeMap;

use crate::storage::{LineageRecord, Location, StorageError};

/// The first line of the claim object: its format and version.
const CLAIM_HEADER: &str = "exactly claim 1";

/// The claim object's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Claim {
    /// Raised by every claim; a process holds the storage while the claim
    /// object still carries its generation.
    pub(super) generation: u64,
    /// Who holds it: job, process, host and a random instance id.
    pub(super) holder: String,
    /// The current lineage, if one was recorded.
    pub(super) lineage: Option<LineageRecord>,
    /// The complete checkpoints not yet deleted, ascending, with their
    /// lineage.
    pub(super) checkpoints: Vec<(u64, Option<String>)>,
    /// Per sink subtask `(stage, subtask)`: the checkpoint up to which it
    /// committed, and in which lineage.
    pub(super) commits: BTreeMap<(usize, usize), (u64, Option<String>)>,
}

/// `-` stands for "none" in the claim object's lines.
fn optional(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

fn parse_optional(value: &str) -> Option<String> {
    (value != "-").then(|| value.to_owned())
}

impl Claim {
    /// The text form: a header line, then `key: value` lines.
    pub(super) fn encode(&self) -> String {
        let mut text = format!(
            "{CLAIM_HEADER}\ngeneration: {}\nholder: {}\n",
            self.generation, self.holder
        );
        if let Some(record) = &self.lineage {
            text.push_str(&format!(
                "lineage-id: {}\nlineage-origin: {}\n",
                optional(record.lineage.as_deref()),
                record.origin
            ));
            if let Some(savepoint) = &record.savepoint {
                text.push_str(&format!("lineage-savepoint: {savepoint}\n"));
            }
        }
        for (id, lineage) in &self.checkpoints {
            text.push_str(&format!(
                "checkpoint: {id} {}\n",
                optional(lineage.as_deref())
            ));
        }
        for ((stage, subtask), (id, lineage)) in &self.commits {
            text.push_str(&format!(
                "commit: {stage}-{subtask} {id} {}\n",
                optional(lineage.as_deref())
            ));
        }
        text
    }

    /// Parses the claim object read from `location`.
    pub(super) fn decode(text: &str, location: &Location) -> Result<Claim, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            file: location.to_string(),
            reason,
        };
        let mut lines = text.lines();
        match lines.next() {
            Some(CLAIM_HEADER) => {}
            first => {
                return Err(corrupt(format!(
                    "expected the first line {CLAIM_HEADER:?}, found {first:?} (a claim object of a newer build?)"
                )));
            }
        }
        let mut claim = Claim::default();
        let number = |value: &str| -> Result<u64, StorageError> {
            value
                .parse()
                .map_err(|_| corrupt(format!("expected a number, found {value:?}")))
        };
        for line in lines {
            let Some((key, value)) = line.split_once(": ") else {
                return Err(corrupt(format!("unexpected line {line:?}")));
            };
            let mut words = value.split(' ');
            let mut word = || words.next().unwrap_or_default();
            match key {
                "generation" => claim.generation = number(value)?,
                "holder" => claim.holder = value.to_owned(),
                "lineage-id" => {
                    claim.lineage.get_or_insert_with(empty_lineage).lineage = parse_optional(value)
                }
                "lineage-origin" => {
                    claim.lineage.get_or_insert_with(empty_lineage).origin = value.to_owned()
                }
                "lineage-savepoint" => {
                    claim.lineage.get_or_insert_with(empty_lineage).savepoint =
                        Some(Location::parse(value)?)
                }
                "checkpoint" => {
                    let id = number(word())?;
                    claim.checkpoints.push((id, parse_optional(word())));
                }
                "commit" => {
                    let subtask = word();
                    let (stage, subtask) = subtask
                        .split_once('-')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                        .ok_or_else(|| {
                            corrupt(format!("expected <stage>-<subtask>, found {subtask:?}"))
                        })?;
                    let id = number(word())?;
                    claim
                        .commits
                        .insert((stage, subtask), (id, parse_optional(word())));
                }
                _ => return Err(corrupt(format!("unexpected line {line:?}"))),
            }
        }
        Ok(claim)
    }
}

fn empty_lineage() -> LineageRecord {
    LineageRecord {
        lineage: None,
        origin: String::new(),
        savepoint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_round_trips_and_a_bad_line_is_named() {
        let claim = Claim {
            generation: 4,
            holder: "job `j`, process 1 on host h, instance 00".into(),
            lineage: Some(LineageRecord {
                lineage: Some("18c-2f".into()),
                origin: "j checkpoint 3 triggered at 9 ms".into(),
                savepoint: Some(Location::parse("s3://b/sp-1").unwrap()),
            }),
            checkpoints: vec![(41, None), (42, Some("18c-2f".into()))],
            commits: BTreeMap::from([((1, 0), (42, Some("18c-2f".into()))), ((1, 1), (41, None))]),
        };
        let at = Location::parse("s3://b/p/_claim").unwrap();
        assert_eq!(Claim::decode(&claim.encode(), &at).unwrap(), claim);
        let bad = claim.encode().replace("commit: 1-1", "commit: 1+1");
        let err = Claim::decode(&bad, &at).unwrap_err().to_string();
        assert!(
            err.contains("s3://b/p/_claim") && err.contains("1+1"),
            "{err}"
        );
        let newer = claim.encode().replace("exactly claim 1", "exactly claim 2");
        let err = Claim::decode(&newer, &at).unwrap_err().to_string();
        assert!(err.contains("newer build"), "{err}");
    }
}
