//! What the Job API reports about a restore, a fresh start and each checkpoint.

use lazarus_format::{count, CheckpointId};
use lazarus_store::Damage;
use std::time::Duration;

/// What `restore_or_init` found: the checkpoint used and the newer ones skipped as damaged.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The checkpoint the state was restored from.
    pub checkpoint: CheckpointId,
    /// Its step; `Job::step()` starts here.
    pub step: u64,
    /// Newer committed checkpoints that failed verification, newest first.
    pub skipped: Vec<Damage>,
    /// The number of ranks that wrote the checkpoint; differs from this job's when the
    /// state was redistributed.
    pub written_by: u32,
    /// The number of ranks it was restored on.
    pub restored_on: u32,
    /// The checkpoint was written by [`Job::finish`](crate::Job::finish): the restored
    /// state is the job's final state and [`Job::is_finished`](crate::Job::is_finished)
    /// is true.
    pub finished: bool,
    /// Which level it came from (docs/LEVELS.md): `None` for the durable repository, else
    /// e.g. `"L1 node-local"`, `"L2 partner copy (rebuilt rank 2, rank 3 from other
    /// hosts)"` or `"L3 parity (host sim1 lost)"`. For a fast
    /// level, `checkpoint` is the job-wide checkpoint number.
    pub level: Option<String>,
}

impl RestoreReport {
    /// True when the checkpoint was written by another number of ranks and redistributed.
    pub fn redistributed(&self) -> bool {
        self.written_by != self.restored_on
    }
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored checkpoint {} at step {}",
            self.checkpoint.0, self.step
        )?;
        if let Some(l) = &self.level {
            write!(f, " from {l}")?;
        }
        if self.finished {
            write!(f, " (the job had finished there)")?;
        }
        if self.redistributed() {
            write!(
                f,
                " (written by {}, redistributed on {})",
                count(self.written_by, "rank"),
                self.restored_on
            )?;
        }
        for d in &self.skipped {
            write!(
                f,
                "; skipped damaged {}",
                lazarus_coord::restore::describe_damage(d)
            )?;
        }
        Ok(())
    }
}

/// `restore_or_init` restored nothing and returned the initial state.
#[derive(Clone, Debug, Default)]
pub struct FreshStart {
    /// The committed checkpoints that were skipped as damaged, newest first: empty for a
    /// repository without committed checkpoints, non-empty only under
    /// [`OnAllDamaged::StartFresh`](lazarus_coord::OnAllDamaged) (all their progress was
    /// given up).
    pub damaged: Vec<Damage>,
}

impl FreshStart {
    /// True when committed checkpoints existed but were all damaged.
    pub fn after_damage(&self) -> bool {
        !self.damaged.is_empty()
    }
}

/// What one committed checkpoint cost this rank ([`Job::last_checkpoint`](crate::Job::last_checkpoint)).
///
/// The stall is what the program paid; an asynchronous checkpoint (docs/ASYNC.md) also
/// reports its background `flush`, which the stall does not contain. The COMMIT records
/// rank 0's view (`lazarus inspect` shows it; keys in `lazarus_coord::meta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The step it holds.
    pub step: u64,
    /// How long the program stood still on this rank for it: from the checkpoint call to
    /// its return. Synchronous: state handed over, part written, every rank's vote
    /// awaited, COMMIT written on rank 0, retention. Asynchronous: the state copied into
    /// staging memory and the round begun (plus waiting for the previous flush, if it was
    /// still running). The time the policy's cost model is told.
    pub stall: Duration,
    /// Writing this rank's part: hashing, compression, chunk and manifest writes and
    /// their fsyncs (part of `stall` when synchronous, of `flush` when asynchronous).
    pub write: Duration,
    /// Asynchronous checkpoints: the background work from the end of the capture to the
    /// round's decision (write, votes, COMMIT, retention); `None` when synchronous.
    pub flush: Option<Duration>,
    /// Bytes of this rank's part (the sum of its objects' lengths).
    pub logical_bytes: u64,
    /// Bytes of chunk files this rank newly wrote (after deduplication and compression);
    /// what the checkpoint added to the repository.
    pub written_bytes: u64,
    /// Asynchronous checkpoints: bytes of state this rank copied into staging memory at
    /// the capture. An incremental capture copies only the chunks changed since the
    /// previous committed checkpoint (docs/ASYNC.md), a state over the staging budget at
    /// most the budget; 0 when synchronous.
    pub captured_bytes: u64,
}

impl CheckpointReport {
    /// The report of a committed round, as this rank saw it.
    pub(crate) fn of(
        c: &lazarus_coord::Committed,
        step: u64,
        stall: Duration,
        flush: Option<Duration>,
    ) -> Self {
        CheckpointReport {
            checkpoint: c.checkpoint,
            step,
            stall,
            write: c.write,
            flush,
            logical_bytes: c.receipt.logical_bytes,
            written_bytes: c.receipt.stored_new_bytes,
            captured_bytes: 0,
        }
    }
}

impl std::fmt::Display for CheckpointReport {
    fn fmt(&self, f_: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f_,
            "checkpoint {} at step {}: stall {:.3} s (write {:.3} s",
            self.checkpoint.0,
            self.step,
            self.stall.as_secs_f64(),
            self.write.as_secs_f64(),
        )?;
        if let Some(f) = self.flush {
            write!(f_, "; background flush {:.3} s", f.as_secs_f64())?;
        }
        write!(
            f_,
            "), {} written of {} B",
            count(self.written_bytes, "byte"),
            self.logical_bytes
        )
    }
}
