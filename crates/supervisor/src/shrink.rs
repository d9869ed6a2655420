//! Shrinking a job after a failure (`lazarus run --shrink-on-failure`): the real-world
//! case of a lost node, where the same number of ranks cannot be started again.
//!
//! Policy (decision): after *every* rank failure the job restarts on one rank fewer, down
//! to [`Shrink::min_ranks`]; the supervisor cannot tell a lost node from a crashed process,
//! and on one machine both look the same. Before shrinking it checks that the newest
//! committed checkpoint can be redistributed on the smaller world (its manifests, plus the
//! replicated objects of every old rank, compared byte for byte; no bulk data is read). If
//! it cannot, the job restarts on the same number of ranks and says why on stderr: a
//! shrunk restart would only fail with the same refusal in every rank. No checkpoint yet
//! means a fresh start, which any size can do.

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

/// Checks that `newest`, the newest committed checkpoint (if any, as the caller already
/// listed it), restores on `ranks` ranks.
pub(crate) fn can_restore_on(
    reader: &RepoReader,
    newest: Option<&CheckpointSummary>,
    ranks: u32,
) -> Result<(), NoShrink> {
    let Some(newest) = newest else {
        return Ok(());
    };
    let id = newest.id;
    if newest.world_size == ranks {
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
