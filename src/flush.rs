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
//! The capture itself (staging budget, split into pieces, sparse copies) is shared with
//! the unaligned runtime: `lazarus_coord::capture`.

use lazarus_coord::{AlignedRuntime, Committed, RoundError, StartedRound};
use lazarus_format::{CheckpointId, ObjectSpec};
use lazarus_store::CommitMeta;
use std::time::{Duration, Instant};

/// One flush handed to the worker (or, if the worker is gone, back to the Job).
pub(crate) struct Task {
    pub runtime: AlignedRuntime,
    pub begun: StartedRound,
    pub objects: Vec<ObjectSpec<'static>>,
    pub meta: CommitMeta,
    pub keep: usize,
}

/// What the worker hands back.
pub(crate) struct Done {
    pub runtime: AlignedRuntime,
    pub result: Result<Committed, RoundError>,
    /// The staging buffers, for the next capture.
    pub pool: Vec<Vec<u8>>,
    /// From the start of the background work to the round's decision (and retention).
    pub flush: Duration,
}

/// Runs one flush: the rest of the round, then retention on rank 0. On the worker, or on
/// the program's thread when the worker is gone.
pub(crate) fn run(t: Task) -> Done {
    let started = Instant::now();
    let Task {
        mut runtime,
        begun,
        objects,
        meta,
        keep,
    } = t;
    let result = runtime.complete_round(begun, Ok(&objects), &meta);
    if let Ok(done) = &result {
        retain(&mut runtime, keep, done.checkpoint);
    }
    Done {
        runtime,
        result,
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
}

/// The background worker of one Job: the flusher shared with the unaligned
/// `AsyncSession` (`lazarus_coord::Flusher`), running [`run`].
pub(crate) type Flusher = lazarus_coord::Flusher<Task, Done, InFlight>;

/// Starts the Job's worker thread (named after the rank).
pub(crate) fn start(rank: u32) -> std::io::Result<Flusher> {
    Flusher::start(format!("lazarus-flush-{rank}"), run)
}
