//! Shrinking a job after a failure (`lazarus run --shrink-on-failure`): the real-world
//! case of a lost node, where the same number of ranks cannot be started again.
//!
//! Policy (decision): after *every* rank failure the job restarts on one rank fewer, down
//! to [`Shrink::min_ranks`]; the supervisor cannot tell a lost node from a crashed process,
//! and on one machine both look the same. Before shrinking it checks that every committed
//! checkpoint the restart may restore can be redistributed on the smaller world: the
//! newest one, and every older one that passes the cheap check, since the ranks fall back
//! to those when the newer ones turn out damaged while loading (each one's manifests, plus
//! the replicated objects of every old rank, compared byte for byte; no bulk data is
//! read). If one cannot, the job restarts on the same number of ranks and says why on
//! stderr: a shrunk restart could end in a refusal on every rank, which stops the job. No
//! checkpoint yet means a fresh start, which any size can do.
//!
//! Which failures shrink is the restart loop's decision (`supervisor.rs`): under a
//! multi-host engine only the ranks of a lost host that no spare replaced are dropped (a
//! crashed process restarts on the same hosts); under the local engine every failure
//! shrinks by one rank, because on one machine a lost node cannot be told from a crashed
//! process and `--shrink-on-failure` there exists to rehearse node loss (docs/RECOVERY.md).

use lazarus_dist::Reshard;
use lazarus_format::{ObjectInfo, Rank};
use lazarus_store::{CheckpointSummary, RepoReader, StoreError};

/// How far a job may shrink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shrink {
    /// Never restart on fewer ranks than this (at least 1).
    pub min_ranks: u32,
}

/// Why the supervisor did not shrink.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoShrink {
    #[error("reading checkpoint {id}: {source}")]
    Store { id: u64, source: StoreError },
    #[error("checkpoint {id} cannot be redistributed: {source}")]
    State {
        id: u64,
        source: lazarus_dist::DistError,
    },
}

/// Checks that every committed checkpoint a restart on `ranks` ranks may restore can be
/// redistributed there: `newest` (the newest committed one, as the caller listed it;
/// `None`: a fresh start) and every older one passing the cheap check, newest first.
/// Checkpoints that fail the cheap check are skipped by the ranks too.
pub(crate) fn can_restore_on(
    reader: &RepoReader,
    newest: Option<&CheckpointSummary>,
    ranks: u32,
) -> Result<(), NoShrink> {
    let Some(newest) = newest else {
        return Ok(());
    };
    let (candidates, _damaged) =
        reader
            .newest_committed_candidates()
            .map_err(|source| NoShrink::Store {
                id: newest.id.0,
                source,
            })?;
    for c in &candidates {
        check_one(reader, c, ranks)?;
    }
    Ok(())
}

/// One checkpoint's redistribution check on `ranks` ranks.
fn check_one(reader: &RepoReader, c: &CheckpointSummary, ranks: u32) -> Result<(), NoShrink> {
    let id = c.id;
    if c.world_size == ranks {
        return Ok(());
    }
    let store = |source| NoShrink::Store { id: id.0, source };
    let manifests = reader.manifests(id).map_err(store)?;
    let infos: Vec<Vec<ObjectInfo>> = manifests
        .iter()
        .map(|m| m.objects.iter().map(|o| o.info.clone()).collect())
        .collect();
    let state = |source| NoShrink::State { id: id.0, source };
    let plan = Reshard::new(&infos, ranks).map_err(state)?;
    let mut fetch = |r: Rank, name: &str| match manifests.get(r.index()) {
        Some(m) => reader.load_object(m, name),
        None => Err(StoreError::new(
            lazarus_store::StoreErrorKind::InvalidArgument,
            None,
            format!("checkpoint {id} has no {r}"),
        )),
    };
    plan.check(&mut fetch).map_err(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_format::{CheckpointId, ObjectKind, ObjectSpec, Sharing};
    use lazarus_store::{CommitMeta, RepoOptions, Repository};

    /// A 2-rank checkpoint of one serde object per rank with `sharing`, identical bytes.
    fn commit(repo: &mut Repository, sharing: Sharing) -> CheckpointId {
        let p = repo.begin(2).unwrap();
        let w = p.part_writer();
        let receipts = (0..2)
            .map(|r| {
                let obj = ObjectSpec {
                    info: ObjectInfo {
                        name: "params".into(),
                        type_name: "P".into(),
                        kind: ObjectKind::Serde,
                        sharing: Some(sharing),
                        layout: None,
                    },
                    data: b"same on every rank".as_slice().into(),
                    hint: None,
                };
                w.write(Rank(r), &[obj]).unwrap()
            })
            .collect();
        repo.commit(p, receipts, CommitMeta::default())
            .unwrap()
            .summary
            .id
    }

    /// Regression (issue #12 debt "shrink checks only the newest checkpoint"): the newest
    /// checkpoint is redistributable but the older one the ranks fall back to when the
    /// newest is damaged is per-rank state; shrinking then could end in a refusal that
    /// stops the job, so the supervisor must not shrink, and says which checkpoint.
    #[test]
    fn shrink_checks_only_the_newest_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
        let older = commit(&mut repo, Sharing::Rank);
        let newer = commit(&mut repo, Sharing::Replicated);
        let reader = RepoReader::open(dir.path()).unwrap();
        let committed = reader.committed().unwrap();
        let newest = committed.iter().max_by_key(|c| c.id);
        assert_eq!(newest.map(|c| c.id), Some(newer));
        let e = can_restore_on(&reader, newest, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("checkpoint {} cannot be redistributed", older.0)),
            "{e}"
        );
        // The same world size restores anything; no checkpoint is a fresh start.
        assert!(can_restore_on(&reader, newest, 2).is_ok());
        assert!(can_restore_on(&reader, None, 1).is_ok());
    }
}
