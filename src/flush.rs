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

use lazarus_coord::{AlignedRuntime, Committed, RoundError, StartedRound};
use lazarus_format::{CheckpointId, ObjectSpec};
use lazarus_store::CommitMeta;
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// Default staging budget when neither `.staging_budget` nor physical memory is known.
pub(crate) const FALLBACK_BUDGET: u64 = 1 << 30;

/// The default staging budget: a quarter of physical memory (`/proc/meminfo`), else
/// [`FALLBACK_BUDGET`]. A state larger than the budget is captured in pieces ([`split`]).
pub(crate) fn default_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(FALLBACK_BUDGET, |kib| kib.saturating_mul(1024) / 4)
}

pub(crate) use lazarus_coord::capture::{borrowed_bytes, sparse_bytes, stage, stage_sparse};

/// An object's tail to write inside the call, and the offset it starts at.
pub(crate) type Tail<'a> = (ObjectSpec<'a>, u64);

/// Splits a state larger than the staging `budget` (issue #16 item 3): borrowed objects,
/// in order, go whole into the heads while they fit; the first one that does not fit is
/// cut at the largest multiple of `chunk` that does (its head staged, its tail written
/// inside the call); every later borrowed object goes whole into the tails (with an empty
/// head, so the part still lists it). Owned objects are always heads: they are moved to
/// the worker, not copied. The heads' borrowed bytes are at most `budget`.
pub(crate) fn split(
    objects: Vec<ObjectSpec<'_>>,
    budget: u64,
    chunk: u64,
) -> (Vec<ObjectSpec<'_>>, Vec<Tail<'_>>) {
    let chunk = chunk.max(1);
    let mut room = budget;
    let mut heads = Vec::with_capacity(objects.len());
    let mut tails = Vec::new();
    for o in objects {
        let b = match o.data {
            Cow::Borrowed(b) if b.len() as u64 > room => b,
            Cow::Borrowed(b) => {
                room -= b.len() as u64;
                heads.push(ObjectSpec {
                    data: Cow::Borrowed(b),
                    ..o
                });
                continue;
            }
            Cow::Owned(_) => {
                heads.push(o);
                continue;
            }
        };
        // `cut` < b.len() because room < b.len(); a multiple of the chunk size.
        let cut = room / chunk * chunk;
        room -= cut;
        let at = usize::try_from(cut).unwrap_or(0).min(b.len());
        let (head, tail) = b.split_at(at);
        // The hint describes the whole object: a split one is hashed in full.
        heads.push(ObjectSpec {
            info: o.info.clone(),
            data: Cow::Borrowed(head),
            hint: None,
        });
        tails.push((
            ObjectSpec {
                info: o.info,
                data: Cow::Borrowed(tail),
                hint: None,
            },
            at as u64,
        ));
    }
    (heads, tails)
}

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
