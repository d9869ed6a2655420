//! The aligned two-phase commit bound to the real runtime: [`Coordinator`] and
//! [`Participant`] driven over a [`Comm`] (tags in the checkpoint space), parts written with
//! the store's `PartWriter`, COMMIT written by rank 0's `Repository`.
//!
//! Every rank calls [`AlignedRuntime::round`] at the same program step, with its channels
//! quiet (aligned). Rank 0 begins a pending checkpoint, sends `Prepare` to every rank
//! (itself included, through its own mailbox), writes its own part, then collects votes;
//! the other ranks write their part as soon as `Prepare` arrives. Rank 0 writes COMMIT only
//! with a durable receipt from every rank; any failed write, dead rank or deadline aborts
//! the round and rank 0 deletes the pending directory at once (chunks go with the next GC).
//!
//! Every wait of a round is bounded: by `Timeouts::decision` for `Prepare` and for the
//! decision, by `Timeouts::round` for votes, and by the net layer's failure timeout when
//! the peer waited for has died (the receive then fails naming it). Opening a runtime
//! (`AlignedRuntime::new`) waits for every peer like a collective: a dead peer fails it,
//! a live one that never opens its runtime is waited for.

use crate::aligned::{
    AbortReason, Coordinator, CoordinatorAction, Decision, Outcome, Participant, ParticipantAction,
    RoundId, Timeouts, ToParticipant, VoteMsg,
};
use crate::error::ProtocolError;
use crate::marker::Marker;
use lazarus_format::{CheckpointId, Epoch, ObjectSpec, Rank};
use lazarus_net::{Comm, ErrorKind as NetKind, NetError, Tag};
use lazarus_store::{
    CommitMeta, PartReceipt, PartWriter, RepoOptions, Repository, StoreError, StoreErrorKind,
    WrittenAhead,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Checkpoint-space tag of coordinator → participant messages (`Prepare`, `Decided`).
/// Values `0x100..0x200` of the checkpoint tag space belong to the aligned runtime.
pub const TAG_TO_PARTICIPANT: u32 = 0x100;
/// Checkpoint-space tag of participant → coordinator votes.
pub const TAG_VOTE: u32 = 0x101;
// Both are private to the round (wildcard receives of the program never take them while a
// round runs in the background, docs/ASYNC.md).
const _: () = assert!(
    lazarus_net::Tag::CHECKPOINT_PRIVATE.start <= TAG_TO_PARTICIPANT
        && TAG_VOTE < lazarus_net::Tag::CHECKPOINT_PRIVATE.end
);

/// The abort of this many rounds in a row is not retryable, on any rank. One abort rule
/// for every rank ([`AbortReason::retryable`]) calls every abort retryable, as only rank
/// 0 knows its reason; but a cause that does not pass (a rank alive and stuck, a lease
/// lost for good) would then abort every later round, each after the round deadline, for
/// as long as the program goes on. Every rank learns every round's decision, so every
/// rank counts the same aborts and stops at the same one; a commit resets the count.
pub const MAX_ABORTS_IN_A_ROW: u32 = 3;

/// Environment variable: a marker key there makes parts and commits print output markers
/// on stdout ([`crate::marker`]).
pub use lazarus_net::launch::OUTPUT_MARKERS_ENV;

/// Where this rank's part goes. Rank 0 owns the (locked or shared) repository and commits;
/// other ranks only need its path and options to open a part writer per round.
#[derive(Debug)]
pub enum RankStore {
    /// Rank 0: the repository it commits to.
    Coordinator(Repository),
    /// Any other rank: the repository root and the options to write parts with.
    Participant {
        /// repository root (shared file system)
        path: PathBuf,
        /// chunk size and codec for this rank's chunks
        options: RepoOptions,
    },
}

/// What went wrong in a round, for callers that branch on the cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoundErrorKind {
    /// The round was aborted (a failed write, a dead rank, the deadline, COMMIT failed).
    Aborted,
    /// The network failed (usually a dead peer).
    Net,
    /// The repository could not be read or written outside a vote.
    Store,
    /// A peer sent something no correct peer sends.
    Protocol,
    /// Rank 0 did not start the round in time: ranks did not call `round` at the same step.
    NotStarted,
    /// Nobody can say yet whether the round committed (COMMIT visible but not durable, or
    /// no decision arrived and COMMIT is absent while the directory remains). Not
    /// retryable: restart from whatever the repository holds.
    OutcomeUnknown,
}

/// A round that did not commit. Every variant names the checkpoint, rank or peer involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundError {
    /// The round was decided `Abort`: its checkpoint is never used and was collected.
    #[error("checkpoint {checkpoint} aborted: {reason}")]
    Aborted {
        /// the aborted checkpoint
        checkpoint: CheckpointId,
        /// why (which rank failed or was missing), as the coordinator saw it
        reason: String,
        /// whether the cause may go away (a full disk) as opposed to a dead rank
        retryable: bool,
    },
    /// A message could not be sent or received.
    #[error("checkpoint round: {0}")]
    Net(#[from] NetError),
    /// The repository failed outside a vote (begin, commit check, reading COMMIT).
    #[error("checkpoint round: {0}")]
    Store(#[from] StoreError),
    /// A protocol violation (see `ProtocolError`).
    #[error("checkpoint round: {0}")]
    Protocol(#[from] ProtocolError),
    /// A checkpoint message from `rank` did not decode.
    #[error("checkpoint round: undecodable message from {rank}: {detail}")]
    BadMessage {
        /// the sender
        rank: Rank,
        /// the decoder's error
        detail: String,
    },
    /// The round's outcome cannot be known now (see [`RoundErrorKind::OutcomeUnknown`]).
    /// The checkpoint was NOT reported aborted: it may be committed.
    #[error("checkpoint {checkpoint}: outcome unknown: {detail}")]
    OutcomeUnknown {
        /// the checkpoint in doubt
        checkpoint: CheckpointId,
        /// what made it unknown
        detail: String,
    },
    /// Rank 0 could not begin the round (create the checkpoint's directory): no other
    /// rank learnt of it, so the job cannot go on. Never retryable.
    #[error("checkpoint round: rank 0 could not begin the round, so the job stops (the other ranks wait for it): {0}")]
    NotBegun(StoreError),
    /// No `Prepare` from rank 0 within `waited`.
    #[error("{rank} waited {waited:?} for rank 0 to start a checkpoint round: do all ranks checkpoint at the same step?")]
    NotStarted {
        /// the waiting rank
        rank: Rank,
        /// how long it waited
        waited: Duration,
    },
}

impl RoundError {
    /// The cause, for branching.
    pub fn kind(&self) -> RoundErrorKind {
        match self {
            RoundError::Aborted { .. } => RoundErrorKind::Aborted,
            RoundError::Net(_) => RoundErrorKind::Net,
            RoundError::Store(_) | RoundError::NotBegun(_) => RoundErrorKind::Store,
            RoundError::Protocol(_) | RoundError::BadMessage { .. } => RoundErrorKind::Protocol,
            RoundError::NotStarted { .. } => RoundErrorKind::NotStarted,
            RoundError::OutcomeUnknown { .. } => RoundErrorKind::OutcomeUnknown,
        }
    }

    /// True when the job can go on and a later round can commit (e.g. one rank's disk was
    /// full); false when a rank is gone or the ranks disagree.
    pub fn is_retryable(&self) -> bool {
        match self {
            RoundError::Aborted { retryable, .. } => *retryable,
            RoundError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// A committed round, as every rank sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The checkpoint id.
    pub checkpoint: CheckpointId,
    /// This rank's receipt (sizes written).
    pub receipt: PartReceipt,
    /// How long this rank took to write its part (open the writer, hash, compress, write
    /// and sync chunks and manifest); the rest of the round is waiting for the others.
    pub write: Duration,
}

/// One rank's driver of aligned rounds. Not `Sync`: one round at a time per rank.
pub struct AlignedRuntime {
    comm: Comm,
    store: RankStore,
    participant: Participant<PartReceipt>,
    coordinator: Option<Coordinator<PartReceipt>>,
    timeouts: Timeouts,
    origin: Instant,
    markers: bool,
    /// Rank 0: why the last round aborted.
    abort_reason: Option<AbortReason>,
    /// Rank 0: the last commit ended with COMMIT visible but not durable (this error).
    commit_unknown: Option<String>,
    /// A `Prepare` consumed while waiting for the previous round's decision: the next
    /// `write_phase` writes this round instead of waiting for a `Prepare` that already came.
    pending_prepare: Option<RoundId>,
    /// This rank's part writer from the previous round, reused (via `for_checkpoint`) so a
    /// round does not re-read the repository's FORMAT.
    writer_template: Option<PartWriter>,
    /// When the current round started on this rank, and how long its part write took:
    /// recorded in COMMIT by rank 0 (`crate::meta`) and reported in `Committed`.
    round_started: Instant,
    last_write: Duration,
    /// An asynchronous round being completed: the program's stall (given by the caller)
    /// and when the background flush started; COMMIT records both (`crate::meta`).
    async_cost: Option<(Duration, Instant)>,
    /// Rounds decided `Abort` in a row (see [`MAX_ABORTS_IN_A_ROW`]).
    aborts_in_a_row: u32,
}

/// A round begun at an asynchronous checkpoint's capture point
/// ([`AlignedRuntime::begin_round`]) and not yet completed. Must be passed to
/// [`AlignedRuntime::complete_round`] of the same runtime; dropping it leaves the other
/// ranks waiting for this rank's vote until the round deadline aborts the round.
#[derive(Debug)]
#[must_use = "a begun round must be completed, or every rank waits for the deadline"]
pub struct StartedRound {
    round: RoundId,
    pending: Option<lazarus_store::PendingCheckpoint>,
    decided: Option<Decision>,
    writer: Option<PartWriter>,
    marked: bool,
    stall: Option<Duration>,
    /// Tails of objects already written ahead, and chunks reused by digest
    /// ([`AlignedRuntime::capture_target`]).
    ahead: WrittenAhead,
    /// A step of the capture failed: the completion votes Failed with this reason.
    capture_failed: Option<String>,
}

impl StartedRound {
    /// The checkpoint this round writes.
    pub fn checkpoint(&self) -> CheckpointId {
        self.round.ckpt
    }

    /// Records how long the program stood still for this checkpoint (capture and
    /// `begin_round`), written by rank 0 into COMMIT as `lazarus.stall_us`, next to the
    /// background flush time `lazarus.flush_us` (`crate::meta`).
    pub fn set_stall(&mut self, stall: Duration) {
        self.stall = Some(stall);
    }
}

/// A begun round's part as a capture's target ([`AlignedRuntime::capture_target`]).
pub struct RoundTarget<'a> {
    runtime: &'a mut AlignedRuntime,
    started: &'a mut StartedRound,
}

impl RoundTarget<'_> {
    /// Runs `f` with this rank's part writer for the round (opened now if needed).
    fn with_writer<T>(&mut self, f: impl FnOnce(&PartWriter, Rank) -> T) -> Result<T, RoundError> {
        let started = &mut *self.started;
        let w = self
            .runtime
            .writer_for(started.round, started.writer.take())?;
        let out = f(&w, self.runtime.comm.rank());
        started.writer = Some(w);
        Ok(out)
    }

    /// Records a failed step: the round's part cannot be completed, and its completion
    /// ([`AlignedRuntime::complete_round`]) votes Failed with `e` as the reason.
    fn failed(&mut self, e: RoundError) -> RoundError {
        let rank = self.runtime.comm.rank();
        self.started
            .capture_failed
            .get_or_insert_with(|| format!("{rank}: {e}"));
        e
    }
}

impl crate::capture::CaptureTarget for RoundTarget<'_> {
    type Error = RoundError;

    fn unchanged_since(
        &mut self,
        objects: &[ObjectSpec<'_>],
        base: CheckpointId,
    ) -> Result<Vec<Option<lazarus_store::Unchanged>>, RoundError> {
        self.with_writer(|w, rank| crate::capture::unchanged_since(w, rank, objects, base))
            .map_err(|e| self.failed(e))
    }

    fn reuse(&mut self, unchanged: Vec<lazarus_store::Unchanged>) -> Result<(), RoundError> {
        for u in unchanged {
            if let Err(e) = self.started.ahead.reuse(u) {
                return Err(self.failed(e.into()));
            }
        }
        Ok(())
    }

    fn chunk_size(&mut self) -> Result<u64, RoundError> {
        self.with_writer(|w, _| w.chunk_size())
            .map_err(|e| self.failed(e))
    }

    fn write_ahead(&mut self, tails: &[(ObjectSpec<'_>, u64)]) -> Result<(), RoundError> {
        if tails.is_empty() {
            return Ok(());
        }
        if !self.started.ahead.is_empty() {
            let e = ProtocolError::Misuse("write_ahead called twice for one round").into();
            return Err(self.failed(e));
        }
        match self.with_writer(|w, rank| w.write_ahead(rank, tails)) {
            Ok(Ok(ahead)) => {
                self.started.ahead = ahead;
                Ok(())
            }
            Ok(Err(e)) => Err(self.failed(e.into())),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn staging_failed(e: StoreError) -> RoundError {
        e.into()
    }
}

impl std::fmt::Debug for AlignedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedRuntime")
            .field("rank", &self.comm.rank())
            .field("world", &self.comm.size())
            .finish_non_exhaustive()
    }
}

fn decode<T: serde::de::DeserializeOwned>(rank: Rank, bytes: &[u8]) -> Result<T, RoundError> {
    postcard::from_bytes(bytes).map_err(|e| RoundError::BadMessage {
        rank,
        detail: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain derive(Serialize) structs into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

impl AlignedRuntime {
    /// A driver for `comm`'s rank. Rank 0 must pass [`RankStore::Coordinator`], other ranks
    /// [`RankStore::Participant`]. Output markers follow `LAZARUS_OUTPUT_MARKERS`.
    ///
    /// Collective: every rank of `comm` constructs its runtime. Each channel of the round
    /// (rank 0 to every rank and to itself) is opened with a handshake that drops what an
    /// earlier runtime on the same communicator left in it (a Job opened after another
    /// one): rounds are named by their checkpoint id, which two repositories, or one after
    /// an aborted round, repeat, and a vote or `Prepare` re-sent late in the earlier
    /// runtime's last round stays in the mailbox after it is gone; rank 0 took such a vote
    /// (another run's receipt) for its own and committed it. Returns once this rank's
    /// channels are open; waits for its peers like a collective does (a dead peer is a
    /// net error) (crate-private module `fence`, docs/PROTOCOL.md).
    pub fn new(comm: Comm, store: RankStore, timeouts: Timeouts) -> Result<Self, RoundError> {
        let rank0 = comm.rank() == Rank(0);
        let coordinator = match (&store, rank0) {
            (RankStore::Coordinator(_), true) => Some(Coordinator::new(comm.size(), timeouts)?),
            (RankStore::Participant { .. }, false) => None,
            _ => {
                return Err(ProtocolError::Misuse(
                    "rank 0 and only rank 0 holds the repository (RankStore::Coordinator)",
                )
                .into())
            }
        };
        let rt = AlignedRuntime {
            participant: Participant::new(comm.rank(), timeouts),
            comm,
            store,
            coordinator,
            timeouts,
            origin: Instant::now(),
            markers: crate::marker::markers_enabled(),
            abort_reason: None,
            commit_unknown: None,
            pending_prepare: None,
            writer_template: None,
            round_started: Instant::now(),
            last_write: Duration::ZERO,
            async_cost: None,
            aborts_in_a_row: 0,
        };
        crate::fence::open_channels(&rt.comm)?;
        Ok(rt)
    }

    /// Forces output markers on or off (default: from `LAZARUS_OUTPUT_MARKERS`).
    pub fn set_output_markers(&mut self, on: bool) {
        self.markers = on;
    }

    /// Writes `m` on stdout when output markers are on (see [`crate::marker`]); the Job
    /// API writes its own markers (`repo`, `resumed`, `refused`) through this too.
    pub fn marker(&self, m: &crate::marker::Marker) {
        if self.markers {
            crate::marker::write_marker(m);
        }
    }

    /// The communicator.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// The repository root.
    pub fn repo_path(&self) -> &Path {
        match &self.store {
            RankStore::Coordinator(r) => r.path(),
            RankStore::Participant { path, .. } => path,
        }
    }

    /// Rank 0's repository (for retention); `None` on other ranks.
    pub fn repository_mut(&mut self) -> Option<&mut Repository> {
        match &mut self.store {
            RankStore::Coordinator(r) => Some(r),
            RankStore::Participant { .. } => None,
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs one aligned round: writes this rank's `objects` and returns once the round is
    /// decided. `Ok` means COMMIT is durable (`meta.step` is recorded in it; only rank 0's
    /// `meta` is used); `Err(Aborted)` means the checkpoint will never be used.
    pub fn round(
        &mut self,
        objects: &[ObjectSpec<'_>],
        meta: &CommitMeta,
    ) -> Result<Committed, RoundError> {
        self.round_impl(Ok(objects), meta)
    }

    /// Takes part in the round without a part (this rank could not produce its state):
    /// votes `Failed(reason)`, so the round aborts everywhere instead of timing out.
    pub fn round_failed(&mut self, reason: String, meta: &CommitMeta) -> Result<(), RoundError> {
        self.round_impl(Err(reason), meta).map(|_| ())
    }

    fn round_impl(
        &mut self,
        objects: Result<&[ObjectSpec<'_>], String>,
        meta: &CommitMeta,
    ) -> Result<Committed, RoundError> {
        let started = self.begin_inner(meta, false)?;
        self.complete_round(started, objects, meta)
    }

    /// Starts a round at the capture point of an asynchronous checkpoint (issue #16):
    /// rank 0 begins the pending checkpoint and sends `Prepare`; every rank waits for its
    /// `Prepare`, so every rank knows the checkpoint id when this returns. The part is
    /// written by [`AlignedRuntime::complete_round`], typically on a background thread
    /// that owns this runtime. Writes this rank's `part` output marker *now*: the lines the
    /// program printed before the capture belong to this checkpoint, those it prints after
    /// this call to the next one, whenever the part becomes durable.
    pub fn begin_round(&mut self, meta: &CommitMeta) -> Result<StartedRound, RoundError> {
        self.begin_inner(meta, true)
    }

    fn begin_inner(
        &mut self,
        meta: &CommitMeta,
        mark_now: bool,
    ) -> Result<StartedRound, RoundError> {
        self.round_started = Instant::now();
        self.last_write = Duration::ZERO;
        self.async_cost = None;
        if self.coordinator.is_none() {
            let round = self.wait_prepare()?;
            return Ok(self.started(round, None, None, None, mark_now, meta.step));
        }
        let world = self.comm.size();
        let pending = match &mut self.store {
            // Not retryable, whatever the cause: no Prepare went out, so the other ranks
            // still wait in this round's `checkpoint` call, and a retry by rank 0 at a
            // later step would begin a round they join with their state of this step (a
            // COMMIT mixing two steps). Found in review.
            RankStore::Coordinator(repo) => repo.begin(world).map_err(RoundError::NotBegun)?,
            RankStore::Participant { .. } => {
                return Err(ProtocolError::Misuse("rank 0 without a repository").into())
            }
        };
        self.abort_reason = None;
        let id = pending.id();
        let round = RoundId {
            epoch: Epoch(id.0),
            ckpt: id,
        };
        let now = self.now();
        let start = match self.coordinator.as_mut() {
            Some(c) => c.start_round(round, now),
            None => Err(ProtocolError::Misuse("no coordinator")),
        };
        let mut pending = Some(pending);
        let actions = match start {
            Ok(a) => a,
            Err(e) => {
                self.collect(&mut pending);
                return Err(e.into());
            }
        };
        let mut decided = None;
        self.commit_unknown = None;
        self.run_coordinator_actions(actions, &mut pending, meta, &mut decided);
        let writer = pending.as_ref().map(|p| p.part_writer());
        match self.wait_prepare() {
            Ok(own) => {
                debug_assert_eq!(own, round);
                Ok(self.started(round, pending, decided, writer, mark_now, meta.step))
            }
            Err(e) => {
                // Decide the round (Abort, told to every rank) before leaving, so nobody
                // waits for a decision and the next round can start.
                self.abort_round(format!("rank 0: {e}"), &mut pending, meta);
                Err(e)
            }
        }
    }

    fn started(
        &mut self,
        round: RoundId,
        pending: Option<lazarus_store::PendingCheckpoint>,
        decided: Option<Decision>,
        writer: Option<PartWriter>,
        mark_now: bool,
        step: u64,
    ) -> StartedRound {
        // Messages sent from here on belong to the next interval.
        self.comm.set_epoch(round.epoch);
        if mark_now {
            self.marker(&Marker::Part {
                id: round.ckpt,
                step,
            });
        }
        StartedRound {
            round,
            pending,
            decided,
            writer,
            marked: mark_now,
            stall: None,
            ahead: WrittenAhead::default(),
            capture_failed: None,
        }
    }

    /// The round `started` as the target of a capture that begins the part first
    /// ([`crate::capture::capture_into`]): an incremental capture names unchanged chunks
    /// by digest in its part, and a state over the staging budget has its tails written
    /// on the calling thread, durable on return, the heads following in
    /// [`AlignedRuntime::complete_round`]. This is how an asynchronous checkpoint stalls
    /// only for what it must copy or cannot stage (docs/ASYNC.md). On error the round is
    /// still begun, and [`AlignedRuntime::complete_round`] votes Failed for it, whatever
    /// it is given.
    pub fn capture_target<'a>(&'a mut self, started: &'a mut StartedRound) -> RoundTarget<'a> {
        RoundTarget {
            runtime: self,
            started,
        }
    }

    /// This rank's part writer for `round`: `own` (rank 0's, from its pending
    /// checkpoint), else the previous round's, else opened.
    fn writer_for(
        &mut self,
        round: RoundId,
        own: Option<PartWriter>,
    ) -> Result<PartWriter, StoreError> {
        let writer = match (own, &self.writer_template, &self.store) {
            (Some(w), _, _) => Ok(w),
            (None, Some(t), _) => t.for_checkpoint(round.ckpt),
            (None, None, RankStore::Participant { path, options }) => {
                PartWriter::open(path, round.ckpt, options.clone())
            }
            (None, None, RankStore::Coordinator(r)) => {
                PartWriter::open(r.path(), round.ckpt, r.options().clone())
            }
        }
        .map(|w| w.with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST));
        if let Ok(w) = &writer {
            if !matches!(self.store, RankStore::Coordinator(_)) {
                self.writer_template = Some(w.clone());
            }
        }
        writer
    }

    /// Writes this rank's part of a round started by [`AlignedRuntime::begin_round`] (or
    /// votes `Failed(reason)` for `Err(reason)`), then runs the vote and the decision as
    /// [`AlignedRuntime::round`] does. `Ok` means COMMIT is durable.
    pub fn complete_round(
        &mut self,
        started: StartedRound,
        objects: Result<&[ObjectSpec<'_>], String>,
        meta: &CommitMeta,
    ) -> Result<Committed, RoundError> {
        let StartedRound {
            round,
            mut pending,
            mut decided,
            writer,
            marked,
            stall,
            ahead,
            capture_failed,
        } = started;
        // A part whose capture failed cannot be completed.
        let objects = match capture_failed {
            Some(why) => Err(why),
            None => objects,
        };
        if let Some(stall) = stall {
            self.async_cost = Some((stall, Instant::now()));
        }
        let written = self.write_own_part(round, &objects, meta.step, writer, !marked, &ahead);
        if self.coordinator.is_none() {
            let (round, receipt) = written?;
            return self.await_decision(round, receipt, meta.step);
        }
        let (own_round, receipt) = match written {
            Ok(x) => x,
            Err(e) => {
                self.abort_round(format!("rank 0: {e}"), &mut pending, meta);
                return Err(e);
            }
        };
        debug_assert_eq!(own_round, round);
        let mut first_net_error = None;
        while decided.is_none() && self.commit_unknown.is_none() {
            let got = self.comm.recv_envelope_timeout(
                None,
                Some(Tag::checkpoint(TAG_VOTE)),
                self.timeouts.retry,
            );
            let now = self.now();
            let Some(coord) = self.coordinator.as_mut() else {
                break;
            };
            let mut actions = match got {
                Ok(env) => match decode::<VoteMsg<PartReceipt>>(env.src, &env.payload) {
                    Ok(vote) if vote.from != env.src => {
                        tracing::warn!(
                            "ignoring checkpoint vote sent by {} in the name of {}",
                            env.src,
                            vote.from
                        );
                        Vec::new()
                    }
                    Ok(vote) => coord.step(vote, now).unwrap_or_else(|e| {
                        tracing::warn!("ignoring checkpoint vote: {e}");
                        Vec::new()
                    }),
                    Err(e) => {
                        tracing::warn!("ignoring checkpoint vote: {e}");
                        Vec::new()
                    }
                },
                Err(e) if e.kind() == NetKind::Timeout => Vec::new(),
                Err(e) => match e.peer() {
                    Some(peer) => {
                        // Empty when already writing COMMIT or decided: keep going.
                        let a = coord.rank_failed(peer).unwrap_or_default();
                        first_net_error.get_or_insert(e);
                        a
                    }
                    None => {
                        let reason = format!("rank 0's network failed: {e}");
                        self.abort_round(reason, &mut pending, meta);
                        return Err(e.into());
                    }
                },
            };
            // The deadline and Prepare retries are checked on every pass, not only when
            // the receive times out: re-sent votes arriving faster than `retry` must not
            // keep the round open past its deadline.
            actions.extend(coord.tick(now));
            self.run_coordinator_actions(actions, &mut pending, meta, &mut decided);
        }
        if let Some(e) = self.commit_unknown.take() {
            return Err(RoundError::OutcomeUnknown {
                checkpoint: round.ckpt,
                detail: e,
            });
        }
        // Our own Decided is in our mailbox now.
        let decided = self.await_decision(round, receipt, meta.step);
        match (decided, first_net_error) {
            // An abort is retryable on every rank alike (`AbortReason::retryable`); what
            // forbids going on here is the peer rank 0 saw die: its own, non-retryable
            // error, as it is for every rank that next talks to that peer.
            (Err(RoundError::Aborted { reason, .. }), Some(e)) => {
                tracing::warn!("checkpoint {} aborted: {reason}", round.ckpt);
                Err(e.into())
            }
            (decided, _) => decided,
        }
    }

    /// Rank 0 leaves a round early: aborts it in the coordinator (if still collecting),
    /// tells every rank, and collects the pending directory.
    fn abort_round(
        &mut self,
        reason: String,
        pending: &mut Option<lazarus_store::PendingCheckpoint>,
        meta: &CommitMeta,
    ) {
        let actions = match self.coordinator.as_mut() {
            Some(c) => c.abort(reason),
            None => Vec::new(),
        };
        let mut decided = None;
        self.run_coordinator_actions(actions, pending, meta, &mut decided);
        self.collect(pending);
    }

    fn collect(&mut self, pending: &mut Option<lazarus_store::PendingCheckpoint>) {
        if let (Some(p), RankStore::Coordinator(repo)) = (pending.take(), &mut self.store) {
            let id = p.id();
            if let Err(e) = repo.abort(p) {
                tracing::warn!("collecting aborted checkpoint {id}: {e} (GC will retry)");
            }
        }
    }

    fn run_coordinator_actions(
        &mut self,
        actions: Vec<CoordinatorAction<PartReceipt>>,
        pending: &mut Option<lazarus_store::PendingCheckpoint>,
        meta: &CommitMeta,
        decided: &mut Option<Decision>,
    ) {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(a) = queue.pop_front() {
            match a {
                CoordinatorAction::Send { to, msg } => {
                    // A dead peer cannot be told; the vote loop notices its death.
                    if let Err(e) =
                        self.comm
                            .send_bytes(to, Tag::checkpoint(TAG_TO_PARTICIPANT), encode(&msg))
                    {
                        tracing::debug!("checkpoint message to {to} not sent: {e}");
                    }
                }
                CoordinatorAction::WriteCommit { round, receipts } => {
                    // What the round cost so far, for `lazarus inspect` (crate::meta).
                    let mut with_cost = meta.clone();
                    let (stall, flush) = match self.async_cost {
                        Some((stall, flush_started)) => (stall, Some(flush_started.elapsed())),
                        None => (self.round_started.elapsed(), None),
                    };
                    crate::meta::RecordedCost {
                        stall: Some(stall),
                        write: Some(self.last_write),
                        flush,
                    }
                    .insert_into(&mut with_cost.app);
                    let result = match (pending.take(), &mut self.store) {
                        (Some(p), RankStore::Coordinator(repo)) => repo
                            .commit(p, receipts.into_iter().map(|(_, r)| r).collect(), with_cost)
                            .map(|_| ()),
                        _ => Err(StoreError::new(
                            StoreErrorKind::InvalidArgument,
                            None,
                            "no pending checkpoint to commit",
                        )),
                    };
                    if let Err(e) = &result {
                        // Belt and braces, as in the unaligned runtime: only an error the
                        // store labels "not committed" AND a COMMIT that reads back as
                        // absent may become an Abort.
                        let absent = || match &self.store {
                            RankStore::Coordinator(repo) => {
                                crate::commit_absent(repo.path(), round.ckpt)
                            }
                            RankStore::Participant { .. } => false,
                        };
                        let undecidable = if e.kind() == StoreErrorKind::CommitUnknown || !absent()
                        {
                            // COMMIT is or may be visible: announcing Abort could be a
                            // lie, Commit a promise we cannot keep.
                            Some(e.to_string())
                        } else {
                            // COMMIT is not there, so the round aborts. `commit` consumed
                            // the pending checkpoint, so `CollectLeftovers` has nothing
                            // to collect: remove the directory here, before Abort is
                            // announced. A participant that misses `Decided` reads the
                            // directory's absence as the abort (PROTOCOL.md); left in
                            // place, it would read "outcome unknown" while rank 0 says
                            // "aborted, retry", and the ranks would disagree.
                            let removed = match &mut self.store {
                                RankStore::Coordinator(repo) => repo.remove_uncommitted(round.ckpt),
                                RankStore::Participant { .. } => Ok(()),
                            };
                            removed.err().map(|r| {
                                format!(
                                    "{e}; checkpoint {} could not be removed ({r}), so its \
                                     abort is not announced",
                                    round.ckpt
                                )
                            })
                        };
                        if let Some(why) = undecidable {
                            // Decide nothing; fail this rank. Participants resolve the
                            // round from the repository (or time out), never retrying on
                            // a guess.
                            tracing::error!("{why}");
                            if let Some(c) = self.coordinator.as_mut() {
                                if let Err(m) = c.commit_unknown(round) {
                                    tracing::warn!("commit_unknown: {m}");
                                }
                            }
                            self.commit_unknown = Some(why);
                            continue;
                        }
                    }
                    let result = result.map_err(|e| e.to_string());
                    if result.is_ok() {
                        self.marker(&Marker::Commit {
                            id: round.ckpt,
                            step: meta.step,
                        });
                    }
                    if let Some(c) = self.coordinator.as_mut() {
                        match c.commit_written(round, result) {
                            Ok(more) => queue.extend(more),
                            Err(e) => tracing::warn!("commit_written: {e}"),
                        }
                    }
                }
                CoordinatorAction::CollectLeftovers { .. } => self.collect(pending),
                CoordinatorAction::Decided { decision, reason } => {
                    if let Some(r) = reason {
                        tracing::warn!("checkpoint {} aborted: {r:?}", decision.round.ckpt);
                        self.abort_reason = Some(r);
                    }
                    *decided = Some(decision);
                }
            }
        }
    }

    /// Waits for this round's `Prepare` (or takes the one consumed while awaiting the
    /// previous decision) and returns its round; the participant is then `Writing`.
    fn wait_prepare(&mut self) -> Result<RoundId, RoundError> {
        let me = self.comm.rank();
        let started = Instant::now();
        let limit = self.timeouts.decision;
        loop {
            if let Some(round) = self.pending_prepare.take() {
                return Ok(round);
            }
            let left = limit.saturating_sub(started.elapsed());
            let env = match self.comm.recv_envelope_timeout(
                Some(Rank(0)),
                Some(Tag::checkpoint(TAG_TO_PARTICIPANT)),
                left,
            ) {
                Ok(env) => env,
                Err(e) if e.kind() == NetKind::Timeout => {
                    return Err(RoundError::NotStarted {
                        rank: me,
                        waited: limit,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let msg: ToParticipant = decode(env.src, &env.payload)?;
            let now = self.now();
            let mut write = None;
            for a in self.participant.step(msg, now)? {
                match a {
                    ParticipantAction::WritePart { round } => write = Some(round),
                    other => self.exec_participant(other)?,
                }
            }
            if let Some(round) = write {
                return Ok(round);
            }
        }
    }

    /// Writes this rank's part of `round` (the participant is in `Writing { round }`) and
    /// votes. Manifests up to `MAX_INLINE_MANIFEST` ride in the vote (format 1.1).
    fn write_own_part(
        &mut self,
        round: RoundId,
        objects: &Result<&[ObjectSpec<'_>], String>,
        step: u64,
        own_writer: Option<PartWriter>,
        mark: bool,
        ahead: &WrittenAhead,
    ) -> Result<(RoundId, Option<PartReceipt>), RoundError> {
        let me = self.comm.rank();
        let write_started = Instant::now();
        let result = objects.clone().and_then(|objects| {
            self.writer_for(round, own_writer)
                .and_then(|w| w.write_with(me, objects, ahead))
                .map_err(|e| format!("{me}: {e}"))
        });
        self.last_write = write_started.elapsed();
        let receipt = result.as_ref().ok().cloned();
        if receipt.is_some() && mark {
            self.marker(&Marker::Part {
                id: round.ckpt,
                step,
            });
        }
        let now = self.now();
        for a in self.participant.part_written(round, result, now) {
            self.exec_participant(a)?;
        }
        Ok((round, receipt))
    }

    /// Runs a participant action other than `WritePart`/`Learned` of the current round.
    fn exec_participant(&mut self, a: ParticipantAction<PartReceipt>) -> Result<(), RoundError> {
        match a {
            ParticipantAction::Send(v) => {
                match self
                    .comm
                    .send_bytes(Rank(0), Tag::checkpoint(TAG_VOTE), encode(&v))
                {
                    Ok(()) => {}
                    // Rank 0 finished: it decided this round first (it may abort on
                    // another rank's failed vote without waiting for ours) and said
                    // goodbye only once every rank held that decision, so the decision
                    // is in our mailbox, behind its goodbye in arrival but not in
                    // consumption. Failing here reported "peer has finished" instead of
                    // the round's outcome; `await_decision` reads it, or reports that rank
                    // 0 finished without sending one.
                    Err(e) if e.kind() == NetKind::PeerFinished => {
                        tracing::debug!("vote not sent, rank 0 has finished: {e}");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ParticipantAction::DiscardPart { round } => self.discard_own_part(round),
            ParticipantAction::OutcomeUnknown { round } => {
                // A round this rank voted in was superseded before its decision arrived;
                // its caller has already returned. Log what the repository says.
                let state = crate::outcome_in_repo(self.repo_path(), round.ckpt);
                tracing::warn!(
                    "checkpoint {} superseded without a decision; repository says {:?}",
                    round.ckpt,
                    state.map(|o| match o {
                        Some(Outcome::Commit) => "committed",
                        None => "pending",
                        Some(Outcome::Abort) => "aborted",
                    })
                );
            }
            ParticipantAction::WritePart { round } => self.pending_prepare = Some(round),
            ParticipantAction::Learned(_) => {}
        }
        Ok(())
    }

    /// Removes this rank's part of an aborted round, if it wrote a manifest file after
    /// rank 0 collected the directory (rank 0's own part goes with the directory).
    fn discard_own_part(&mut self, round: RoundId) {
        if matches!(self.store, RankStore::Coordinator(_)) {
            return;
        }
        let me = self.comm.rank();
        if let Err(e) = lazarus_store::discard_part(self.repo_path(), round.ckpt, me) {
            tracing::warn!("discarding {me}'s aborted part: {e} (GC will retry)");
        }
    }

    fn await_decision(
        &mut self,
        round: RoundId,
        receipt: Option<PartReceipt>,
        _step: u64,
    ) -> Result<Committed, RoundError> {
        let outcome = loop {
            let got = self.comm.recv_envelope_timeout(
                Some(Rank(0)),
                Some(Tag::checkpoint(TAG_TO_PARTICIPANT)),
                self.timeouts.retry,
            );
            let now = self.now();
            let actions = match got {
                Ok(env) => {
                    let msg: ToParticipant = decode(env.src, &env.payload)?;
                    self.participant.step(msg, now)?
                }
                Err(e) if e.kind() == NetKind::Timeout => self.participant.tick(now),
                Err(e) => return Err(e.into()),
            };
            let mut learned = None;
            let mut unknown = false;
            for a in actions {
                match a {
                    ParticipantAction::Learned(d) if d.round == round => learned = Some(d.outcome),
                    ParticipantAction::OutcomeUnknown { round: r } if r == round => unknown = true,
                    ParticipantAction::DiscardPart { round: r } if r == round => {
                        // Handled with the Abort outcome below.
                    }
                    // Includes a newer round's WritePart, kept for the next write_phase.
                    other => self.exec_participant(other)?,
                }
            }
            if unknown && learned.is_none() {
                // The repository is the truth, but only a definite answer counts: COMMIT
                // present => committed; directory gone (rank 0 collects every aborted
                // round) => aborted; a read error or a directory without COMMIT (rank 0
                // may still be writing it) => unknown, never "aborted".
                // A failed read proves nothing either (the round may have committed), so it
                // is an unknown outcome, never a retryable store error.
                let unknown_err = |e: StoreError| RoundError::OutcomeUnknown {
                    checkpoint: round.ckpt,
                    detail: format!(
                        "{} got no decision within {:?} and could not read the repository: {e}",
                        self.comm.rank(),
                        self.timeouts.decision
                    ),
                };
                let outcome =
                    crate::outcome_in_repo(self.repo_path(), round.ckpt).map_err(unknown_err)?;
                learned = Some(match outcome {
                    Some(o) => o,
                    None => {
                        return Err(RoundError::OutcomeUnknown {
                            checkpoint: round.ckpt,
                            detail: format!(
                                "{} got no decision within {:?} and the checkpoint directory \
                                 is still there without COMMIT",
                                self.comm.rank(),
                                self.timeouts.decision
                            ),
                        })
                    }
                });
            }
            if let Some(o) = learned {
                break o;
            }
        };
        match (outcome, receipt) {
            (Outcome::Commit, Some(receipt)) => {
                self.aborts_in_a_row = 0;
                Ok(Committed {
                    checkpoint: round.ckpt,
                    receipt,
                    write: self.last_write,
                })
            }
            (Outcome::Commit, None) => {
                Err(ProtocolError::Misuse("a round committed without this rank's receipt").into())
            }
            (Outcome::Abort, receipt) => {
                // Our part may have landed after rank 0 collected the round (recreating its
                // directory): remove it now rather than leave it to the next GC.
                if receipt.as_ref().is_some_and(|r| r.manifest.is_none()) {
                    self.discard_own_part(round);
                }
                let known = self.abort_reason.take();
                self.aborts_in_a_row = self.aborts_in_a_row.saturating_add(1);
                Err(aborted(
                    self.comm.rank(),
                    round.ckpt,
                    known.as_ref(),
                    receipt.is_some(),
                    self.aborts_in_a_row,
                ))
            }
        }
    }
}

/// The error of a round decided `Abort`, on any rank: `known` is why (rank 0 knows it,
/// the other ranks never do), `wrote` whether this rank's part was written, `in_a_row`
/// how many rounds in a row aborted, this one included. Whether it is retryable is
/// [`AbortReason::retryable`]'s one rule and [`MAX_ABORTS_IN_A_ROW`], so no rank goes on
/// while another stops for the same abort.
fn aborted(
    me: Rank,
    ckpt: CheckpointId,
    known: Option<&AbortReason>,
    wrote: bool,
    in_a_row: u32,
) -> RoundError {
    let mut reason = match known {
        Some(r) => describe(r),
        None if !wrote => format!("{me} could not write its part"),
        None => "another rank failed, died or missed the deadline (see rank 0's log)".into(),
    };
    let retryable = AbortReason::retryable(known) && in_a_row < MAX_ABORTS_IN_A_ROW;
    if in_a_row >= MAX_ABORTS_IN_A_ROW {
        reason.push_str(&format!(
            "; {in_a_row} rounds in a row aborted, so the job stops here (restart it)"
        ));
    }
    RoundError::Aborted {
        checkpoint: ckpt,
        reason,
        retryable,
    }
}

fn describe(r: &AbortReason) -> String {
    match r {
        AbortReason::Failed { rank, reason } => {
            format!("{rank} could not write its part: {reason}")
        }
        AbortReason::Timeout { missing } => {
            format!("no vote within the round deadline from {missing:?}")
        }
        AbortReason::RankDied { rank } => format!("{rank} died"),
        AbortReason::CommitWrite(e) => format!("writing COMMIT failed: {e}"),
        AbortReason::Local(e) => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review (2026-12-07): rank 0, which knows why a round aborted, called a deadline
    /// miss, a dead rank or its own failure fatal, while every other rank, which never
    /// learns the reason, called the same abort retryable: rank 0 stopped and the others
    /// went on to wait for a round that never came. Both sides must answer alike for
    /// every reason, including none.
    #[test]
    fn abort_is_retryable_alike_with_and_without_its_reason() {
        let reasons = [
            AbortReason::Failed {
                rank: Rank(2),
                reason: "disk full".into(),
            },
            AbortReason::Timeout {
                missing: vec![Rank(1)],
            },
            AbortReason::RankDied { rank: Rank(1) },
            AbortReason::CommitWrite("disk full".into()),
            AbortReason::Local("rank 0: its part failed".into()),
        ];
        let id = CheckpointId(7);
        for wrote in [true, false] {
            // A rank other than 0: the reason is never known there.
            let participant = aborted(Rank(1), id, None, wrote, 1);
            assert_eq!(participant.kind(), RoundErrorKind::Aborted);
            for r in &reasons {
                let leader = aborted(Rank(0), id, Some(r), wrote, 1);
                assert_eq!(leader.kind(), RoundErrorKind::Aborted);
                assert_eq!(
                    leader.is_retryable(),
                    participant.is_retryable(),
                    "{r:?} (part written: {wrote}): rank 0 says {leader}, rank 1 says {participant}"
                );
                assert!(leader.to_string().contains(&id.to_string()), "{leader}");
            }
        }
    }
}
