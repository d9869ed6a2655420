//! Asynchronous checkpoints of the Job API (issue #16, docs/ASYNC.md): the state is
//! *captured* (its bytes copied into staging buffers) on the program's thread, and a
//! background worker writes the part, votes and (rank 0) commits while the program goes
//! on.
//!
//! The worker is `lazarus_coord::Flusher` (shared with the unaligned `AsyncSession`): at
//! most one flush in flight per Job (a new capture first waits for the previous flush, so
//! staging memory is one copy of the state, rounds commit in the order they were captured,
//! and nothing queues up); the runtime (communicator, repository, round state) moves to
//! the worker with the flush and comes back with its outcome; a flush's outcome is kept
//! until the Job reports it (the next checkpoint call, `finish`, [`crate::Job::flush`])
//! or, at the end, logged by Drop.
//!
//! With fast levels (docs/LEVELS.md) the flush also owns the rank's `NodeLevels` and runs
//! the level round before the rest of the durable round ([`rounds`]).
//!
//! The capture itself (staging budget, split into pieces, sparse copies) is shared with
//! the unaligned runtime: `lazarus_coord::capture`.

use lazarus_coord::{AlignedRuntime, Committed, RoundError, StartedRound};
use lazarus_format::{CheckpointId, ObjectSpec};
use lazarus_levels::{Due, L1Capture, LevelError, LevelReceipt, NodeLevels};
use lazarus_store::CommitMeta;
use std::time::{Duration, Instant};

/// The fast levels' share of a flush (docs/LEVELS.md): the rank's levels, moved out of
/// the Job for the flush, the checkpoint's job-wide number and the levels due.
pub(crate) struct LevelTask {
    pub levels: NodeLevels,
    pub seq: u64,
    pub due: Due,
    /// This rank's L1 part.
    pub l1: L1Part,
}

/// This rank's L1 part of a level round.
pub(crate) enum L1Part {
    /// Written by the round from the staged objects (a whole staged copy, or a
    /// synchronous round).
    Whole,
    /// Begun at the capture (an incremental capture or one over the staging budget).
    Captured(Box<L1Capture>),
    /// Its tails could not be written at the capture: the round fails on this rank
    /// (taking part in every message of it, so no rank waits), and the durable round
    /// of the same checkpoint goes on.
    Failed(LevelError),
}

/// One flush handed to the worker (or, if the worker is gone, back to the Job).
pub(crate) struct Task {
    pub runtime: AlignedRuntime,
    /// The durable round, begun at the capture; `None` when L4 is not due.
    pub begun: Option<StartedRound>,
    /// The level round, when a fast level is due.
    pub levels: Option<LevelTask>,
    pub objects: Vec<ObjectSpec<'static>>,
    pub meta: CommitMeta,
    pub keep: usize,
}

/// What the worker hands back.
pub(crate) struct Done {
    pub runtime: AlignedRuntime,
    /// The durable round's outcome; `None` when L4 was not due.
    pub result: Option<Result<Committed, RoundError>>,
    /// The levels, back from the flush.
    pub levels: Option<NodeLevels>,
    /// The level round's outcome; `None` when no fast level was due.
    pub level: Option<Result<LevelReceipt, LevelError>>,
    /// The staging buffers, for the next capture.
    pub pool: Vec<Vec<u8>>,
    /// From the start of the background work to the round's decision (and retention).
    pub flush: Duration,
}

/// The outcomes of one checkpoint's rounds: the level round's (`None`: no fast level
/// due) and the durable round's (`None`: L4 not due).
pub(crate) type Outcomes = (
    Option<Result<LevelReceipt, LevelError>>,
    Option<Result<Committed, RoundError>>,
);

/// The rounds of one checkpoint after its capture, in the one order every rank follows,
/// synchronous or not: the level round (L1, L2, L3, outcome; its own messages only,
/// never a `Comm` collective), then the rest of the durable round `begun` at the call
/// (a durable round that failed to begin is reported as such, after the level round).
pub(crate) fn rounds(
    runtime: &mut AlignedRuntime,
    levels: Option<(&mut NodeLevels, u64, Due, L1Part)>,
    begun: Option<Result<StartedRound, RoundError>>,
    objects: &[ObjectSpec<'_>],
    meta: &CommitMeta,
) -> Outcomes {
    let fast = levels.is_some();
    let level = levels.map(|(l, seq, due, part)| match part {
        L1Part::Whole => l.checkpoint_captured(seq, None, objects, meta, due),
        L1Part::Captured(c) => l.checkpoint_captured(seq, Some(*c), objects, meta, due),
        L1Part::Failed(e) => {
            if let Err(round) = l.fail(seq, &e.to_string(), due) {
                tracing::debug!("level round after a failed capture: {round}");
            }
            Err(e)
        }
    });
    let result = begun.map(|b| {
        b.and_then(|b| {
            if fast {
                // A change hint follows the write that confirms it last; with a level
                // round in the same checkpoint that must be the L1 write, which every
                // checkpoint with levels makes, so the next capture is incremental
                // against L1 (L4 is rare: its part is hashed in full, as it would be
                // against a base many checkpoints old).
                let plain: Vec<ObjectSpec<'_>> = objects
                    .iter()
                    .map(|o| ObjectSpec {
                        info: o.info.clone(),
                        data: std::borrow::Cow::Borrowed(&o.data),
                        hint: None,
                    })
                    .collect();
                runtime.complete_round(b, Ok(&plain), meta)
            } else {
                runtime.complete_round(b, Ok(objects), meta)
            }
        })
    });
    (level, result)
}

/// Runs one flush: the level round if due, the rest of the durable round if due, then
/// retention on rank 0. On the worker, or on the program's thread when the worker is
/// gone.
pub(crate) fn run(t: Task) -> Done {
    let started = Instant::now();
    let Task {
        mut runtime,
        begun,
        levels,
        objects,
        meta,
        keep,
    } = t;
    let (mut levels, seq_due) = match levels {
        Some(l) => (Some(l.levels), Some((l.seq, l.due, l.l1))),
        None => (None, None),
    };
    let level_args = match (levels.as_mut(), seq_due) {
        (Some(l), Some((seq, due, part))) => Some((l, seq, due, part)),
        _ => None,
    };
    let (level, result) = rounds(&mut runtime, level_args, begun.map(Ok), &objects, &meta);
    if let Some(Ok(done)) = &result {
        retain(&mut runtime, keep, done.checkpoint);
    }
    Done {
        runtime,
        result,
        levels,
        level,
        pool: objects.into_iter().map(|o| o.data.into_owned()).collect(),
        flush: started.elapsed(),
    }
}

/// Retention after a commit (rank 0). Failing leaves extra checkpoints behind, never a
/// broken one: logged.
pub(crate) fn retain(runtime: &mut AlignedRuntime, keep: usize, after: CheckpointId) {
    if let Some(repo) = runtime.repository_mut() {
        if let Err(e) = repo.retain(keep) {
            tracing::warn!("retention after checkpoint {}: {e}", after.0);
        }
    }
}

/// The flush in flight: what the Job needs to report it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InFlight {
    pub checkpoint: CheckpointId,
    pub step: u64,
    pub stall: Duration,
    /// Bytes of state the capture copied into staging (reported).
    pub captured: u64,
    /// With fast levels: the levels this checkpoint goes to (`None` without levels).
    pub due: Option<Due>,
}

/// The background worker of one Job: the flusher shared with the unaligned
/// `AsyncSession` (`lazarus_coord::Flusher`), running [`run`].
pub(crate) type Flusher = lazarus_coord::Flusher<Task, Done, InFlight>;

/// Starts the Job's worker thread (named after the rank).
pub(crate) fn start(rank: u32) -> std::io::Result<Flusher> {
    Flusher::start(format!("lazarus-flush-{rank}"), run)
}
