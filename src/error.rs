//! The one error type of the Job API.
//!
//! Policy: each variant says which step failed and wraps the store, state, files or
//! network error that names the file, field or rank; [`JobError::is_retryable`] says
//! whether running again can help.

use lazarus_coord::RoundError;
use lazarus_coord::REPO_ENV;
use lazarus_dist::DistError;
use lazarus_files::FilesError;
use lazarus_format::{count, CheckpointId};
use lazarus_net::NetError;
use lazarus_state::StateError;
use lazarus_store::{Damage, StoreError};
use std::path::PathBuf;

/// Errors of the Job API. Each says which step failed and wraps the store or state error
/// that names the file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Neither `JobBuilder::repo` nor `LAZARUS_REPO` named a repository.
    #[error("no checkpoint repository: call JobBuilder::repo(..) or set {REPO_ENV}")]
    NoRepo,
    /// A builder value is out of range.
    #[error("invalid job configuration: {0}")]
    Config(String),
    /// The repository could not be opened, read or written.
    #[error("checkpoint repository {path}: {source}")]
    Store {
        /// repository root
        path: PathBuf,
        /// the store's error (kind, file, message)
        source: StoreError,
    },
    /// The state could not be saved (e.g. a serde value failed to encode).
    #[error("saving state at step {step}: {source}")]
    Save {
        /// the step being saved
        step: u64,
        /// the error naming the field
        source: StateError,
    },
    /// The newest intact checkpoint does not fit the program's state type (schema
    /// mismatch) or a restore hook failed. Not retried with older checkpoints: they were
    /// written by the same program and would fail the same way.
    #[error("restoring checkpoint {checkpoint} (step {step}): {source}")]
    Restore {
        /// the checkpoint that was tried
        checkpoint: CheckpointId,
        /// its step
        step: u64,
        /// the error naming the field
        source: StateError,
    },
    /// The checkpoint round at `step` did not commit (a rank failed to write, died or
    /// missed the deadline); the checkpoint is never used and its leftovers are collected.
    #[error("checkpoint at step {step}: {source}")]
    Round {
        /// the step being saved
        step: u64,
        /// the round's error, naming the rank
        source: RoundError,
    },
    /// An asynchronous checkpoint, captured at `step`, did not commit: its background
    /// flush failed (a rank could not write its part, died, or missed the deadline). The
    /// previous committed checkpoint stays the restart point. Reported by the first Job
    /// call after the failure is known (docs/ASYNC.md).
    #[error("checkpoint {checkpoint} (step {step}), written in the background, did not commit: {source}")]
    Flush {
        /// the checkpoint that did not commit
        checkpoint: CheckpointId,
        /// the step it captured
        step: u64,
        /// the round's error, naming the rank
        source: RoundError,
    },
    /// An asynchronous checkpoint of a Job with fast levels, captured at `step` and
    /// written to the fast levels only (no durable copy was due), did not complete: its
    /// background level round failed (the error names the rank, host or file). Restores
    /// use an earlier checkpoint; reported by the first Job call after the failure is
    /// known (docs/LEVELS.md).
    #[error("checkpoint {checkpoint} (step {step}), written to the fast levels in the background, did not complete: {source}")]
    LevelFlush {
        /// the job-wide number of the checkpoint
        checkpoint: CheckpointId,
        /// the step it captured
        step: u64,
        /// the level's error
        source: lazarus_levels::LevelError,
    },
    /// The background thread writing `checkpoint` died (a panic) and took the checkpoint
    /// runtime with it: this Job cannot checkpoint any more; restart the program.
    #[error("the background writer of checkpoint {checkpoint} died: this job can no longer checkpoint; restart it")]
    FlushLost {
        /// the checkpoint being written
        checkpoint: CheckpointId,
    },
    /// A fast checkpoint level (node-local, partner copy; docs/LEVELS.md) failed at
    /// `step`; the error names the rank, host or file.
    #[error("checkpoint at step {step}: {source}")]
    Level {
        /// the step being saved
        step: u64,
        /// the level's error
        source: lazarus_levels::LevelError,
    },
    /// Talking to the other ranks failed (usually: one died).
    #[error("job communication: {0}")]
    Net(#[from] NetError),
    /// Rank 0 failed while preparing the restore; its own error says why.
    #[error("rank 0 could not prepare the restore: {0}")]
    Rank0(String),
    /// The checkpoint was written by another number of ranks and part of the state is
    /// per-rank (not a distributed array, and not identical on every rank), so it cannot
    /// be redistributed. `source` names the field.
    #[error("checkpoint {checkpoint} was written by {} and cannot be restored on {current} by redistribution: {source}; restart with {}", count(*saved, "rank"), count(*saved, "rank"))]
    NotRedistributable {
        /// the checkpoint
        checkpoint: CheckpointId,
        /// its world size
        saved: u32,
        /// this job's world size
        current: u32,
        /// why, naming the field and the ranks
        source: DistError,
    },
    /// The managed files (`JobBuilder::files`) could not be recorded or restored: changed
    /// outside the job, a full disk while journaling, another world size. Names the file.
    #[error("managed files: {0}")]
    Files(#[from] FilesError),
    /// The repository holds committed checkpoints and every one is damaged (or, with
    /// fast levels, a checkpoint known complete on every rank is lost: no surviving
    /// copy can rebuild it, docs/LEVELS.md "Lost progress"); under
    /// [`OnAllDamaged::Refuse`](crate::OnAllDamaged::Refuse) (the default) the job does not start from scratch, which
    /// would silently give up all their progress. `damaged` names each one.
    #[error("{}", lazarus_coord::all_damaged_message(path, damaged))]
    AllDamaged {
        /// repository root
        path: PathBuf,
        /// the damaged checkpoints, newest first
        damaged: Vec<Damage>,
    },
    /// Another rank could not restore the checkpoint every rank agreed on (or could not
    /// start fresh), so no rank goes on (the job never runs on a mix of checkpoints). Its
    /// own error is reported on that rank.
    #[error("rank {rank} could not {}: {message}", match checkpoint {
        Some(c) => format!("restore checkpoint {}", c.0),
        None => "start fresh".to_string(),
    })]
    Peer {
        /// the rank that failed
        rank: u32,
        /// the checkpoint being restored; `None` on a fresh start
        checkpoint: Option<CheckpointId>,
        /// its error
        message: String,
    },
    /// The initialiser given to [`Job::restore_or_try_init`](crate::Job::restore_or_try_init) or
    /// [`Job::restore_or_init_with`](crate::Job::restore_or_init_with) failed on this rank (every rank then fails; the
    /// others report [`JobError::Peer`]).
    #[error("initialising the state on rank {rank}: {source}")]
    Init {
        /// this rank
        rank: u32,
        /// the initialiser's error
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl JobError {
    /// True when running the same program again later can succeed without changing it or
    /// repairing the repository (a held lock, a full disk, a transient I/O error), or, for
    /// a failed checkpoint round, when the job may go on and try the next one.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Store { source, .. } => source.is_retryable(),
            JobError::Round { source, .. } | JobError::Flush { source, .. } => {
                source.is_retryable()
            }
            JobError::Level { source, .. } | JobError::LevelFlush { source, .. } => {
                source.is_retryable()
            }
            JobError::Files(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// True for a restore error of this rank's own that no restart can fix: the
    /// checkpoint cannot be restored on this number of ranks, does not fit the state type,
    /// every checkpoint is damaged (under [`OnAllDamaged::Refuse`](crate::OnAllDamaged::Refuse)), or the repository
    /// cannot be used at all. Errors relayed from other ranks are not (they report their
    /// own). A supervisor is told (marker `refused`) and stops instead of restarting.
    pub(crate) fn is_restore_refusal(&self) -> bool {
        match self {
            JobError::NotRedistributable { .. }
            | JobError::Restore { .. }
            | JobError::AllDamaged { .. } => true,
            JobError::Store { source, .. } => !source.is_retryable(),
            _ => false,
        }
    }
}
