//! Unaligned checkpoints at run time: the [`Unaligned`] recorder and the 2PC machines
//! bound to a real [`Comm`], the store and the state crate (docs/PROTOCOL.md, section
//! "Unaligned checkpoints at run time").
//!
//! Every application send and receive of a rank goes through its [`AsyncSession`]. The
//! session stamps the epoch on outgoing messages, feeds every incoming envelope to the
//! recorder in arrival order (so the per-channel FIFO order the recorder relies on is the
//! net layer's), and handles markers and the 2PC on reserved checkpoint tags.
//!
//! Because a snapshot can be triggered by any incoming marker or post-cut message, every
//! call that reads the network takes the application state (`&S`): the session may have
//! to capture it right there, before the triggering message is delivered. The state given
//! must reflect every message the session has returned so far, and nothing else.

mod config;
mod error;
pub(crate) mod wire;

pub use config::AsyncConfig;
pub use error::{SessionError, SessionErrorKind};
pub use wire::{SavedMessage, CHANNELS_OBJECT, UNALIGNED_TAG_BASE};

use crate::aligned::{
    AbortReason, Coordinator, CoordinatorAction, Decision, Outcome, Participant, ParticipantAction,
    RoundId, ToParticipant, VoteMsg,
};
use crate::flusher::Flusher;
use crate::marker::Marker;
use crate::unaligned::{ChannelState, Unaligned, UnalignedAction};
use lazarus_format::{CheckpointId, Epoch, LoadedObject, ObjectSpec, Rank};
use lazarus_net::{Comm, Envelope, ErrorKind as NetKind, NetError, Tag, TagSpace};
use lazarus_state::Checkpoint;
use lazarus_store::{
    CommitMeta, PartReceipt, PartWriter, PendingCheckpoint, RepoReader, Repository, StoreError,
    StoreErrorKind, Unchanged, WrittenAhead,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{TAG_DONE, TAG_MARKER, TAG_TO_PARTICIPANT, TAG_VOTE};
use SessionErrorKind as K;

/// Decisions kept for [`AsyncSession::take_report`] at most; older ones are dropped.
const MAX_QUEUED_REPORTS: usize = 1024;

/// How a session started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsyncStart {
    /// No committed checkpoint: the state was left as given.
    Fresh,
    /// The state was restored from checkpoint `id` (snapshot `epoch`), and `replayed`
    /// saved in-flight messages were queued for delivery before any new traffic.
    Restored {
        /// the checkpoint restored
        id: CheckpointId,
        /// its snapshot epoch
        epoch: Epoch,
        /// messages queued from its channel state for this rank
        replayed: usize,
    },
}

/// One application message handed to the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    /// the sender
    pub from: Rank,
    /// the user tag
    pub tag: u32,
    /// the bytes sent
    pub payload: Vec<u8>,
}

impl AsyncMessage {
    /// Decodes a payload sent with [`AsyncSession::send`] (postcard).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, SessionError> {
        postcard::from_bytes(&self.payload).map_err(|e| {
            SessionError::wrap(
                K::Codec,
                self.from,
                &format!("decoding message with tag {} from {}", self.tag, self.from),
                e,
            )
        })
    }
}

/// What rank 0's [`AsyncSession::checkpoint`] reports once the round is decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncReport {
    /// the round (epoch and repository id)
    pub round: RoundId,
    /// committed or aborted
    pub outcome: Outcome,
    /// why it aborted, if it did
    pub reason: Option<AbortReason>,
}

/// Counters of one session, for tests and logs (serde, so a program can gather them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncStats {
    /// local snapshots captured
    pub snapshots: u64,
    /// parts written to the repository
    pub parts_written: u64,
    /// in-flight messages saved in those parts (channel state, including messages received
    /// by the session but not yet handed to the program)
    pub messages_saved: u64,
    /// saved messages queued again at restore
    pub replayed: u64,
    /// rounds whose outcome this rank never learned
    pub outcomes_unknown: u64,
    /// bytes of channel state (the encoded `lazarus.channels` objects) in those parts
    pub channel_bytes: u64,
    /// bytes of state copied at those snapshots: only the changed chunks of an
    /// incremental capture (docs/ASYNC.md), the whole borrowed state otherwise
    #[serde(default)]
    pub captured_bytes: u64,
    /// bytes of state written inside the calls that took the snapshots, because those
    /// were larger than [`AsyncConfig::staging_budget`] (the tails of a capture in pieces,
    /// docs/ASYNC.md)
    #[serde(default)]
    pub ahead_bytes: u64,
}

struct Leader {
    /// `None` while COMMIT is written in the background (the writer holds it), or after
    /// the writer died with it (reopened by the next use).
    repo: Option<Repository>,
    coord: Coordinator<PartReceipt>,
    pending: Option<PendingCheckpoint>,
    /// Decisions not yet handed out, oldest first (`take_report`, or `drive_round` for
    /// its own round).
    decided: VecDeque<AsyncReport>,
}

/// The local state captured at `TakeLocalSnapshot`, waiting for the recorder to complete.
struct Snap {
    epoch: Epoch,
    objects: Vec<ObjectSpec<'static>>,
    /// received by the session but not yet by the program: in flight for the cut
    inbox: BTreeMap<Rank, Vec<SavedMessage>>,
    /// chunks of objects captured sparsely, named by digest in the part
    reused: Vec<Unchanged>,
    /// the tails written inside the call (a snapshot over the staging budget)
    pieces: Option<Pieces>,
    /// the capture failed (writing the tails): this rank's vote is Failed
    failed: Option<String>,
}

/// A complete part: captured state plus channel state.
struct Ready {
    epoch: Epoch,
    objects: Vec<ObjectSpec<'static>>,
    channels: ChannelState<SavedMessage>,
    reused: Vec<Unchanged>,
    pieces: Option<Pieces>,
    failed: Option<String>,
}

/// A snapshot larger than [`AsyncConfig::staging_budget`], captured in pieces (issue #16
/// item 3, docs/ASYNC.md): the tails written durably inside the call that took it, by
/// `writer`, which then writes the part (the staged heads and the manifest) with them.
struct Pieces {
    writer: PartWriter,
    ahead: WrittenAhead,
}

/// A session's part as a capture's target ([`crate::capture::capture_into`]): the
/// chunks reused by digest are kept for the part's write, tails are written ahead with
/// the part writer.
struct SessionTarget<'a> {
    writer: &'a PartWriter,
    me: Rank,
    reused: Vec<Unchanged>,
    ahead: Option<WrittenAhead>,
}

/// Why a session's capture failed: staging (the snapshot is not taken) or writing the
/// tails (the snapshot is taken, the part cannot be written).
enum SessionCaptureError {
    Staging(StoreError),
    Tails(StoreError),
}

impl crate::capture::CaptureTarget for SessionTarget<'_> {
    type Error = SessionCaptureError;

    fn unchanged_since(
        &mut self,
        objects: &[ObjectSpec<'_>],
        base: CheckpointId,
    ) -> Result<Vec<Option<Unchanged>>, SessionCaptureError> {
        Ok(crate::capture::unchanged_since(
            self.writer,
            self.me,
            objects,
            base,
        ))
    }

    fn reuse(&mut self, unchanged: Vec<Unchanged>) -> Result<(), SessionCaptureError> {
        self.reused.extend(unchanged);
        Ok(())
    }

    fn chunk_size(&mut self) -> Result<u64, SessionCaptureError> {
        Ok(self.writer.chunk_size())
    }

    fn write_ahead(&mut self, tails: &[(ObjectSpec<'_>, u64)]) -> Result<(), SessionCaptureError> {
        let ahead = self
            .writer
            .write_ahead(self.me, tails)
            .map_err(SessionCaptureError::Tails)?;
        self.ahead = Some(ahead);
        Ok(())
    }

    fn staging_failed(e: StoreError) -> SessionCaptureError {
        SessionCaptureError::Staging(e)
    }
}

/// What a local snapshot captured.
struct Captured {
    /// the staged objects (the heads when in pieces)
    objects: Vec<ObjectSpec<'static>>,
    reused: Vec<Unchanged>,
    /// bytes copied into staging
    copied: u64,
    pieces: Option<Pieces>,
    /// writing the tails failed: the part cannot be written
    failed: Option<String>,
}

impl Captured {
    fn staged(objects: Vec<ObjectSpec<'static>>, copied: u64) -> Self {
        Captured {
            objects,
            reused: Vec::new(),
            copied,
            pieces: None,
            failed: None,
        }
    }

    fn failed(e: String) -> Self {
        Captured {
            failed: Some(e),
            ..Captured::staged(Vec::new(), 0)
        }
    }
}

/// This rank's part writer of checkpoint `id` (format 1.1: a small manifest rides the
/// vote into COMMIT), limited to `budget` bytes (fault injection) if given.
fn open_writer(
    repo: &Path,
    id: CheckpointId,
    store: lazarus_store::RepoOptions,
    budget: Option<u64>,
) -> Result<PartWriter, StoreError> {
    PartWriter::open(repo, id, store)
        .map(|w| w.with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST))
        .map(|w| match budget {
            Some(b) => w.with_write_budget(b),
            None => w,
        })
}

/// One rank's runtime for unaligned (Chandy-Lamport / Lai-Yang) checkpoints.
///
/// Guarantees, for a program that sends and receives only through its session and
/// passes a state reflecting exactly the messages it was given: every committed
/// checkpoint is a consistent cut (no orphan message), every message in flight across
/// it is saved in the receiver's part, and after [`AsyncSession::open`] on a new
/// incarnation those messages are delivered exactly once, before any new traffic.
/// Every blocking call has a time bound. Rank 0 initiates rounds (see
/// [`AsyncSession::checkpoint`]) and writes COMMIT; it must be able to open the
/// repository for writing.
///
/// Parts are written in the background (issue #16, docs/ASYNC.md; unless
/// [`AsyncConfig::sync_writes`]): the call that completes a rank's snapshot copies its
/// state (so the program may change it as soon as the call returns: what commits is the
/// state at the snapshot) and hands the part to a writer thread, the same
/// [`crate::Flusher`] as the Job API's; the rank votes from the first session call after
/// the write ended, so a checkpoint commits only once every rank's part is durable. One
/// part is in flight per rank: a snapshot completed while the previous part is still
/// being written waits for it. A background write that failed makes the rank vote Failed
/// (the round aborts, the previous checkpoint stays the restart point) and is returned,
/// once, by the next session call ([`SessionErrorKind::Flush`], naming the checkpoint;
/// retryable), by [`AsyncSession::finish`] at the latest.
///
/// Rank 0 writes COMMIT on the same writer: once every vote says durable, the COMMIT
/// write (then the `commit` output marker and retention) is handed over and the call
/// returns; the first later call that finds it written decides the round and announces
/// it, so no session call waits for the COMMIT fsync (only [`AsyncSession::checkpoint`],
/// which returns the decision, waits for the round). A COMMIT whose result is unknown is
/// returned by that call, as when written inside it.
///
/// A snapshot of a tracked object (a `DirtyVec`: one with a change hint) copies only the
/// chunks changed since this rank's newest checkpoint learned committed in this session,
/// by the same rule as the Job's ([`crate::capture`]); the part names the other chunks by
/// digest. [`AsyncStats::captured_bytes`] counts what the snapshots copied.
pub struct AsyncSession {
    comm: Comm,
    me: Rank,
    world: u32,
    cfg: AsyncConfig,
    t0: Instant,
    rec: Unaligned<SavedMessage>,
    part: Participant<PartReceipt>,
    leader: Option<Leader>,
    inbox: VecDeque<(Rank, SavedMessage)>,
    snap: Option<Snap>,
    ready: Option<Ready>,
    want: Option<RoundId>,
    done_from: BTreeSet<Rank>,
    stats: AsyncStats,
    /// The background part writer (issue #16, docs/ASYNC.md), shared with the Job API;
    /// `None` with `AsyncConfig::sync_writes` or when its thread could not start.
    flusher: Option<Flusher<Work, Worked, InFlight>>,
    /// A background write that failed: returned by the next session call, once.
    flush_error: Option<SessionError>,
    /// Fault injection ([`AsyncSession::set_write_budget`]): bytes each part may write.
    write_budget: Option<u64>,
    /// Test hook ([`AsyncSession::hold_commits`]): COMMIT writes wait while it is set.
    commit_hold: Option<Arc<AtomicBool>>,
    /// The newest checkpoint this rank learned committed in this session: the base of an
    /// incremental capture (docs/ASYNC.md).
    last_committed: Option<CheckpointId>,
}

/// One part handed to the background writer: the captured snapshot and its channel state.
struct PartTask {
    repo: std::path::PathBuf,
    store: lazarus_store::RepoOptions,
    me: Rank,
    round: RoundId,
    objects: Vec<ObjectSpec<'static>>,
    /// chunks the part names by digest (an incremental capture: `objects` hold the others)
    reused: Vec<Unchanged>,
    /// a capture in pieces: its writer and the tails it wrote (`objects` hold the heads)
    pieces: Option<Pieces>,
    budget: Option<u64>,
}

/// What the background writer hands back.
struct PartDone {
    result: Result<PartReceipt, String>,
    /// The write failed because the checkpoint's directory was gone (collected by rank 0
    /// after the round aborted): [`lazarus_store::StoreError::is_not_pending`].
    not_pending: bool,
}

/// A part in flight: its round and the size of its channel state.
#[derive(Clone, Copy, Debug)]
struct PartInFlight {
    round: RoundId,
    channel_bytes: u64,
}

/// The work of the background writer: this rank's part of a round, or (rank 0) a round's
/// COMMIT. One at a time: a round's COMMIT needs every vote, rank 0's too, so its part
/// was written and taken before; the next round begins only once this one is decided.
enum Work {
    Part(Box<PartTask>),
    Commit(Box<CommitTask>),
}

/// What the background writer hands back.
enum Worked {
    Part(PartDone),
    Commit(CommitDone),
}

/// What the session remembers of the work in flight.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    Part(PartInFlight),
    Commit(RoundId),
}

fn work(w: Work) -> Worked {
    match w {
        Work::Part(t) => Worked::Part(write_part_task(*t)),
        Work::Commit(t) => Worked::Commit(write_commit(*t)),
    }
}

/// Rank 0's COMMIT of a round whose every part is durable, handed to the background
/// writer (or written in the call without it).
struct CommitTask {
    me: Rank,
    /// The repository: it moves to the writer with the task and comes back with the
    /// outcome (no round can begin meanwhile: this one is undecided).
    repo: Repository,
    path: std::path::PathBuf,
    pending: PendingCheckpoint,
    receipts: Vec<PartReceipt>,
    round: RoundId,
    keep: Option<usize>,
    markers: bool,
    hold: Option<Arc<AtomicBool>>,
}

/// How a COMMIT write ended.
enum CommitOutcome {
    /// COMMIT is durable (and the `commit` output marker written, retention run).
    Written,
    /// COMMIT is not visible: the round may abort.
    NotVisible(String),
    /// COMMIT may be visible but is not known durable: neither outcome may be announced.
    Unknown(StoreError),
}

struct CommitDone {
    repo: Repository,
    round: RoundId,
    outcome: CommitOutcome,
}

/// Rank 0's handle of the repository, recycling dead chunk files as `cfg` says. Under
/// `lazarus run --repo` the supervisor holds the lock with the job token; without a token
/// `open_shared` shares with nobody, exactly like `open`.
fn open_leader_repo(cfg: &AsyncConfig) -> Result<Repository, StoreError> {
    let mut repo = Repository::open_shared(&cfg.repo, cfg.store.clone())?;
    repo.recycle_dead_chunks(cfg.recycle_chunk_files);
    Ok(repo)
}

/// Writes COMMIT of `t.round` (format 1.1: the parts' inline manifests ride in it), then
/// the output `commit` marker and retention; on the background writer or in the call.
fn write_commit(t: CommitTask) -> CommitDone {
    let CommitTask {
        me,
        mut repo,
        path,
        pending,
        receipts,
        round,
        keep,
        markers,
        hold,
    } = t;
    if let Some(h) = hold {
        // Test hook: hold the write (bounded, so a forgotten release cannot hang a job).
        let t = Instant::now();
        while h.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let meta = CommitMeta {
        step: round.epoch.0,
        app: BTreeMap::from([
            (crate::meta::MODE_KEY.to_string(), "unaligned".to_string()),
            (
                crate::meta::EPOCH_KEY.to_string(),
                round.epoch.0.to_string(),
            ),
        ]),
    };
    let outcome = match repo.commit(pending, receipts, meta) {
        Ok(_) => {
            if markers {
                crate::marker::write_marker(&Marker::Commit {
                    id: round.ckpt,
                    step: round.ckpt.0,
                });
            }
            if let Some(k) = keep {
                // Retention failing leaves extra checkpoints, never a wrong one.
                if let Err(e) = repo.retain(k) {
                    tracing::warn!("{me}: retention after {}: {e}", round.ckpt);
                }
            }
            CommitOutcome::Written
        }
        // The coordinator may only abort if COMMIT is not visible: the store says so by
        // any kind but `CommitUnknown`, and reading it back must say "not found" (belt
        // and braces).
        Err(e)
            if e.kind() != StoreErrorKind::CommitUnknown
                && crate::commit_absent(&path, round.ckpt) =>
        {
            // The round aborts, but `commit` consumed the pending checkpoint, so the
            // coordinator's `CollectLeftovers` finds nothing: remove the directory here,
            // before the abort is announced. Ranks that miss `Decided` read its absence as
            // the abort (docs/PROTOCOL.md); left in place it reads as "still pending".
            // Should it not go away, the abort is not announced (decided like an unknown
            // outcome) rather than announced with the directory still there.
            match repo.remove_uncommitted(round.ckpt) {
                Ok(()) => CommitOutcome::NotVisible(e.to_string()),
                Err(r) => CommitOutcome::Unknown(r.context(&format!(
                    "{me}: COMMIT of checkpoint {} failed ({e}) and its directory could not \
                     be removed",
                    round.ckpt
                ))),
            }
        }
        Err(e) => CommitOutcome::Unknown(e),
    };
    CommitDone {
        repo,
        round,
        outcome,
    }
}

/// Writes one part (on the background writer, or in the call without it). Format 1.1: a
/// small manifest rides the vote into COMMIT (one durable file less per rank and round),
/// as in the aligned runtime.
fn write_part_task(t: PartTask) -> PartDone {
    let (writer, mut ahead) = match t.pieces {
        // The writer that wrote the tails: its write budget is shared with them.
        Some(p) => (Ok(p.writer), p.ahead),
        None => (
            open_writer(&t.repo, t.round.ckpt, t.store, t.budget),
            WrittenAhead::default(),
        ),
    };
    let result = writer.and_then(|w| {
        if t.reused.is_empty() && ahead.is_empty() {
            return w.write(t.me, &t.objects);
        }
        for u in t.reused {
            ahead.reuse(u)?;
        }
        w.write_with(t.me, &t.objects, &ahead)
    });
    let not_pending = result.as_ref().is_err_and(StoreError::is_not_pending);
    PartDone {
        result: result.map_err(|e| format!("{}: {e}", t.me)),
        not_pending,
    }
}

impl std::fmt::Debug for AsyncSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSession")
            .field("rank", &self.me)
            .field("world", &self.world)
            .field("epoch", &self.rec.epoch())
            .field("stats", &self.stats)
            .finish()
    }
}

impl AsyncSession {
    /// Starts the session of `comm`'s rank: restores `state` and the saved in-flight
    /// messages from the newest committed checkpoint of `cfg.repo` that every rank can
    /// load (rank 0 decides and broadcasts; all ranks restore the same one, falling back
    /// together past a damaged part; the communicator should then be a new incarnation),
    /// else leaves `state` alone. Every rank of the job must call it before sending (it is
    /// collective). Fails with `WorldMismatch` if the checkpoint has another world size
    /// (channel state cannot be resharded), and on every rank if committed checkpoints
    /// pass rank 0's check but none can be loaded on every rank. If committed checkpoints
    /// exist but none passes it, `cfg.on_all_damaged` decides: an error naming the damage
    /// (the default), or a fresh start said loudly on stderr.
    ///
    /// `comm` may be one an earlier session's [`AsyncSession::finish`] gave back: before
    /// its first round, the session opens its round channels with a handshake that drops
    /// whatever round messages an earlier session left in the mailbox (docs/PROTOCOL.md,
    /// "Opening fence").
    pub fn open<S: Checkpoint + ?Sized>(
        comm: Comm,
        cfg: AsyncConfig,
        state: &mut S,
    ) -> Result<(AsyncSession, AsyncStart), SessionError> {
        let me = comm.rank();
        let world = comm.size();
        let store = |ctx: &str, e| SessionError::wrap(K::Store, me, ctx, e);
        let leader = if me == Rank(0) {
            let repo = open_leader_repo(&cfg).map_err(|e| store("opening the repository", e))?;
            let coord = Coordinator::new(world, cfg.timeouts)
                .map_err(|e| SessionError::protocol(me, "coordinator", e))?;
            Some(Leader {
                repo: Some(repo),
                coord,
                pending: None,
                decided: VecDeque::new(),
            })
        } else {
            None
        };
        // Parts written in the background (issue #16); without the thread, in the calls.
        let flusher = if cfg.sync_writes {
            None
        } else {
            match Flusher::start(format!("lazarus-flush-{}", me.0), work) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(
                        "{me}: no background writer ({e}): parts are written in the session calls"
                    );
                    None
                }
            }
        };
        let mut s = AsyncSession {
            flusher,
            flush_error: None,
            write_budget: None,
            commit_hold: None,
            last_committed: None,
            me,
            world,
            t0: Instant::now(),
            rec: Unaligned::new(me, world)
                .map_err(|e| SessionError::protocol(me, "recorder", e))?,
            part: Participant::new(me, cfg.timeouts),
            leader,
            inbox: VecDeque::new(),
            snap: None,
            ready: None,
            want: None,
            done_from: BTreeSet::new(),
            stats: AsyncStats::default(),
            cfg,
            comm,
        };
        // The supervisor stops a job whose ranks opened another repository than its own.
        s.marker(&Marker::Repo {
            location: lazarus_store::repo_location(&s.cfg.repo),
        });
        let start = s.restore(state).inspect_err(|e| {
            if e.is_restore_refusal() {
                s.marker(&Marker::Refused {
                    message: e.to_string(),
                });
            }
        })?;
        // An earlier session on this communicator may have left round messages in the
        // mailbox: its participants re-send their vote until they see the decision, even
        // after `finish` sent Done, and rank 0 answers late votes. Rounds are named by
        // checkpoint id, which a new `Repository` hands out again after an aborted round
        // (its directory is deleted), so rank 0 would take such a vote, another session's
        // part, for its own round and commit it. The fence (as `AlignedRuntime::new`'s)
        // drops everything that came before it on the round's two tags. After the restore:
        // its last step gathers from every rank, so every rank has left its previous
        // session, which would otherwise receive our handshake as a round message.
        crate::fence::open_channels_on(&s.comm, TAG_TO_PARTICIPANT, TAG_VOTE)
            .map_err(|e| net(me, "opening the round channels with rank 0", e))?;
        Ok((s, start))
    }

    /// Agreed restore ([`crate::restore`], shared with the Job API): rank 0 picks the
    /// newest committed checkpoint that passes the cheap check; every rank loads (and so
    /// verifies) its own part; all fall back together past damage, all fail on anything
    /// else, and the state is touched only once every rank has its part of the same
    /// checkpoint. A checkpoint of another world size fails every rank (channel state
    /// cannot be redistributed).
    fn restore<S: Checkpoint + ?Sized>(
        &mut self,
        state: &mut S,
    ) -> Result<AsyncStart, SessionError> {
        use crate::restore::{AgreeError, LoadError, Phase, RestoreAgreement};
        let me = self.me;
        let comm = self.comm.clone();
        let agreement = RestoreAgreement {
            comm: &comm,
            repo: &self.cfg.repo,
            on_all_damaged: self.cfg.on_all_damaged,
        };
        let load = |c: &crate::restore::Candidate| {
            if c.world != self.world {
                return Err(LoadError::Fatal(SessionError::new(
                    K::WorldMismatch,
                    me,
                    format!(
                        "checkpoint {} has {} but this job has {}; unaligned \
                         checkpoints cannot be restored on another world size",
                        c.id,
                        lazarus_format::count(c.world, "rank"),
                        self.world
                    ),
                )));
            }
            let epoch = crate::meta::snapshot_epoch(&c.app).map(Epoch);
            self.load_own_part(c.id, epoch)
        };
        let apply = |chosen: Option<(&crate::restore::Candidate, LoadedPart)>| match chosen {
            None => Ok(None),
            Some((c, (channels, user))) => lazarus_state::restore(state, user)
                .map(|()| Some((c.id, channels)))
                .map_err(|e| {
                    SessionError::wrap(
                        K::State,
                        me,
                        &format!("restoring state from checkpoint {}", c.id),
                        e,
                    )
                }),
        };
        let outcome = agreement.run(load, apply).map_err(|e| match e {
            AgreeError::Own(e) => e,
            AgreeError::Peer {
                rank,
                checkpoint,
                message,
                phase,
            } => {
                let (kind, what) = match phase {
                    Phase::Load => (K::Store, "read"),
                    Phase::Apply => (K::State, "restore its state from"),
                };
                let ckpt =
                    checkpoint.map_or("a fresh start".to_string(), |c| format!("checkpoint {c}"));
                SessionError::new(
                    kind,
                    me,
                    format!("{rank} could not {what} {ckpt}: {message}"),
                )
            }
            AgreeError::Listing(e) => {
                SessionError::wrap(K::Store, me, "listing committed checkpoints", e)
            }
            AgreeError::Rank0(why) => SessionError::new(
                K::Store,
                me,
                format!("rank 0 could not prepare the restore: {why}"),
            ),
            AgreeError::AllDamaged(damaged) => SessionError::new(
                K::AllDamaged,
                me,
                crate::damage::all_damaged_message(&self.cfg.repo, &damaged),
            ),
            AgreeError::Net(e) => net(me, "agreeing on the restored checkpoint", e),
        })?;
        match outcome {
            (Some((id, channels)), _) => self.resume(id, channels),
            (None, _) => {
                self.marker(&Marker::Resumed {
                    id: None,
                    step: 0,
                    seq: None,
                });
                Ok(AsyncStart::Fresh)
            }
        }
    }

    /// Loads (and verifies) this rank's part of `id`: its channel state and the user's
    /// objects. Damage (a digest, decoder or version check failed, a file is missing, the
    /// channel state does not decode or cannot be replayed as the snapshot of `epoch`, the
    /// one COMMIT records) justifies falling back to an older checkpoint.
    fn load_own_part(
        &self,
        id: CheckpointId,
        epoch: Option<Epoch>,
    ) -> Result<LoadedPart, crate::restore::LoadError<SessionError>> {
        use crate::restore::LoadError;
        let me = self.me;
        let store = |ctx: String| {
            move |e: StoreError| {
                LoadError::from_store(id, e, |e| SessionError::wrap(K::Store, me, &ctx, e))
            }
        };
        let reader =
            RepoReader::open(&self.cfg.repo).map_err(store("opening the repository".into()))?;
        let objects = reader
            .load_part(id, me)
            .map_err(store(format!("loading part of {me} in checkpoint {id}")))?;
        // An undecodable channel state is damage too (the digests matched, so it was
        // written that way; an older checkpoint may still be good).
        let damaged = |detail: String| {
            LoadError::Damaged(lazarus_store::Damage {
                checkpoint: id,
                path: Default::default(),
                kind: "corrupt".into(),
                detail,
            })
        };
        let (channels, user) =
            split_channels(objects, id, me).map_err(|e| damaged(e.to_string()))?;
        if let Some(cs) = &channels {
            // Refused here, not by `resume` after the agreement (one rank failing while
            // the others go on from the checkpoint).
            wire::check_channels(cs, self.world, epoch)
                .map_err(|e| damaged(format!("part of {me}: {e}")))?;
        }
        let channels = match channels {
            Some(c) => c,
            // A checkpoint without channel state (none was in flight, or an aligned one).
            // Its epoch is the one COMMIT records, already read with the candidate.
            None => ChannelState {
                epoch: epoch.unwrap_or(Epoch(0)),
                channels: Vec::new(),
            },
        };
        Ok((channels, user))
    }

    /// Sets the recorder to the restored snapshot and queues its saved messages.
    fn resume(
        &mut self,
        id: CheckpointId,
        channels: ChannelState<SavedMessage>,
    ) -> Result<AsyncStart, SessionError> {
        let me = self.me;
        let epoch = channels.epoch;
        let (rec, replay) = Unaligned::restore(me, self.world, channels)
            .map_err(|e| SessionError::protocol(me, "restoring channel state", e))?;
        self.rec = rec;
        self.comm.set_epoch(epoch);
        let envs: Vec<Envelope> = replay
            .into_iter()
            .filter_map(|a| match a {
                UnalignedAction::Deliver { from, payload } => Some(Envelope {
                    src: from,
                    tag: Tag::user(payload.tag),
                    epoch: payload.epoch,
                    incarnation: self.comm.incarnation(),
                    payload: payload.payload,
                }),
                _ => None,
            })
            .collect();
        let replayed = envs.len();
        self.stats.replayed = replayed as u64;
        self.comm.requeue(envs);
        // A session has no step count: the checkpoint id stands for it.
        self.marker(&Marker::Resumed {
            id: Some(id),
            step: id.0,
            seq: None,
        });
        Ok(AsyncStart::Restored {
            id,
            epoch,
            replayed,
        })
    }

    /// The saved channel state of `rank` in checkpoint `id` (empty if the part has none),
    /// for inspection and tests.
    pub fn saved_channels(
        repo: &Path,
        id: CheckpointId,
        rank: Rank,
    ) -> Result<ChannelState<SavedMessage>, SessionError> {
        let reader = RepoReader::open(repo)
            .map_err(|e| SessionError::wrap(K::Store, rank, "opening the repository", e))?;
        let objects = reader.load_part(id, rank).map_err(|e| {
            SessionError::wrap(
                K::Store,
                rank,
                &format!("loading part of {rank} in checkpoint {id}"),
                e,
            )
        })?;
        let (cs, _) = split_channels(objects, id, rank)?;
        Ok(cs.unwrap_or(ChannelState {
            epoch: Epoch(0),
            channels: Vec::new(),
        }))
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.me
    }

    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.world
    }

    /// The epoch stamped on messages sent now (the latest local snapshot's).
    pub fn epoch(&self) -> Epoch {
        self.rec.epoch()
    }

    /// Counters since `open`.
    pub fn stats(&self) -> AsyncStats {
        self.stats
    }

    /// Sends `value` (postcard) under user tag `tag` to `to` (itself allowed). Eager.
    pub fn send<T: Serialize + ?Sized>(
        &mut self,
        to: Rank,
        tag: u32,
        value: &T,
    ) -> Result<(), SessionError> {
        let bytes = postcard::to_allocvec(value)
            .map_err(|e| SessionError::wrap(K::Codec, self.me, "encoding message", e))?;
        self.send_bytes(to, tag, bytes)
    }

    /// Sends raw bytes under user tag `tag` to `to`, stamped with the current epoch.
    pub fn send_bytes(&mut self, to: Rank, tag: u32, bytes: Vec<u8>) -> Result<(), SessionError> {
        self.comm
            .send_bytes(to, Tag::user(tag), bytes)
            .map_err(|e| net(self.me, &format!("sending to {to}"), e))
    }

    /// The next application message from any rank (in arrival order, which is send order
    /// per sender), waiting at most `timeout` (then `Timeout`, retryable). While waiting
    /// it runs the checkpoint protocol and may capture `state`.
    pub fn recv<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        timeout: Duration,
    ) -> Result<AsyncMessage, SessionError> {
        self.reported()?;
        let r = self.recv_inner(state, timeout);
        self.abort_round_on_error(r)
    }

    fn recv_inner<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        timeout: Duration,
    ) -> Result<AsyncMessage, SessionError> {
        let deadline = Instant::now() + timeout;
        loop {
            // A part written in the background votes as soon as a call sees it written,
            // even when messages are waiting (then this call never reaches `tick`).
            self.poll_flush(state)?;
            if let Some((from, m)) = self.inbox.pop_front() {
                return Ok(AsyncMessage {
                    from,
                    tag: m.tag,
                    payload: m.payload,
                });
            }
            self.tick(state)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::new(
                    K::Timeout,
                    self.me,
                    format!("no message within {timeout:?}"),
                ));
            }
            self.pump_one(state, left.min(self.wait_slice()))?;
        }
    }

    /// Runs the checkpoint protocol on whatever has arrived, without blocking.
    pub fn poll<S: Checkpoint + ?Sized>(&mut self, state: &S) -> Result<(), SessionError> {
        self.reported()?;
        let r = self.poll_inner(state);
        self.abort_round_on_error(r)
    }

    /// Rank 0 leaving a session call on a non-retryable error while a round it started
    /// with `start_checkpoint` runs: decide that round Abort and tell every rank, as
    /// `checkpoint` does, so no rank waits for a decision that will not come.
    fn abort_round_on_error<T>(&mut self, r: Result<T, SessionError>) -> Result<T, SessionError> {
        if let Err(e) = &r {
            if !e.is_retryable() {
                let active = self.leader.as_ref().and_then(|l| l.coord.active_round());
                if let Some(round) = active {
                    // The Abort stays queued for `take_report`, like any decision of a
                    // round started in the background.
                    self.abort_round(round, true);
                }
            }
        }
        r
    }

    fn poll_inner<S: Checkpoint + ?Sized>(&mut self, state: &S) -> Result<(), SessionError> {
        self.tick(state)?;
        loop {
            match self.comm.try_recv_envelope(None, None) {
                Ok(Some(env)) => self.handle(state, env)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(net(self.me, "polling", e)),
            }
        }
    }

    /// On rank 0: starts an unaligned round (next epoch, next repository id), runs the
    /// protocol until it is decided and returns the decision. It blocks for at most the
    /// round deadline plus the COMMIT write; meanwhile it keeps receiving (messages are
    /// held for later `recv`s). On other ranks: the same as [`AsyncSession::poll`], and
    /// returns `None` — any rank may call it at its own checkpoint opportunities, but only
    /// rank 0 decides when a round starts, so ranks need not be in lockstep.
    ///
    /// Rank 0 is blocked for the whole round here; [`AsyncSession::start_checkpoint`] is
    /// the non-blocking form.
    pub fn checkpoint<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
    ) -> Result<Option<AsyncReport>, SessionError> {
        if self.leader.is_none() {
            self.poll(state)?;
            return Ok(None);
        }
        self.reported()?;
        if self.round_in_progress() {
            return Err(SessionError::new(
                K::Misuse,
                self.me,
                "a round started by start_checkpoint is still running",
            ));
        }
        let round = self.begin_round()?;
        let driven = self.drive_round(state, round);
        if driven.is_err() {
            self.abort_round(round, false);
        }
        driven.map(Some)
    }

    /// On rank 0: starts an unaligned round and returns at once (`Ok(true)`). The round then
    /// runs inside this rank's later [`recv`](AsyncSession::recv),
    /// [`poll`](AsyncSession::poll) and `start_checkpoint` calls — its deadline too, so a
    /// rank 0 that stops calling them for long holds the round open — and its decision is
    /// collected with [`AsyncSession::take_report`]. While a round runs, or on other
    /// ranks, this is a [`poll`](AsyncSession::poll) and returns `Ok(false)`.
    ///
    /// Unlike [`AsyncSession::checkpoint`], rank 0 keeps computing and exchanging messages
    /// while the other ranks snapshot, write their parts and vote; its own part is written
    /// in the background like every rank's (see [`AsyncSession`]), and so is COMMIT: the
    /// call that collects the last vote hands it to the background writer, and a later
    /// call that finds it durable decides the round.
    pub fn start_checkpoint<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
    ) -> Result<bool, SessionError> {
        if self.leader.is_none() || self.round_in_progress() {
            self.poll(state)?;
            return Ok(false);
        }
        self.reported()?;
        self.begin_round()?;
        // Rank 0's own marker and snapshot are handled like any arrival, at once (an error
        // there aborts the round, as in every session call).
        self.poll(state)?;
        Ok(true)
    }

    /// On rank 0: the decision of the round [`AsyncSession::start_checkpoint`] started,
    /// once it is decided (each decision is returned once, oldest first; the newest 1024
    /// untaken ones are kept); `None` while it runs, before any round and on other ranks.
    pub fn take_report(&mut self) -> Option<AsyncReport> {
        self.leader.as_mut().and_then(|l| l.decided.pop_front())
    }

    /// True on rank 0 while a round it started is undecided.
    pub fn round_in_progress(&self) -> bool {
        self.leader
            .as_ref()
            .is_some_and(|l| l.coord.active_round().is_some())
    }

    /// Fault injection for tests (like the Job's): every part captured from now on may
    /// write at most `bytes` (a full disk); `None` lifts the limit.
    #[doc(hidden)]
    pub fn set_write_budget(&mut self, bytes: Option<u64>) {
        self.write_budget = bytes;
    }

    /// Fault injection for tests (rank 0): the repository that writes COMMIT may write at
    /// most `bytes` more (`u64::MAX` lifts it). Parts are written by their own writers,
    /// not limited by this, so a round's parts fit and its COMMIT does not. False when
    /// not applied (not rank 0, or the repository is with a COMMIT being written).
    #[doc(hidden)]
    pub fn set_commit_write_budget(&mut self, bytes: u64) -> bool {
        match self.leader.as_mut().and_then(|l| l.repo.as_mut()) {
            Some(r) => {
                r.set_write_budget(bytes);
                true
            }
            None => false,
        }
    }

    /// Test hook (rank 0): every COMMIT write handed out from now on waits, before it
    /// writes anything, while `hold` is set (60 s at most); `None` removes the hook.
    #[doc(hidden)]
    pub fn hold_commits(&mut self, hold: Option<Arc<AtomicBool>>) {
        self.commit_hold = hold;
    }

    /// Test hook (rank 0): true while a round's COMMIT is being written in the
    /// background.
    #[doc(hidden)]
    pub fn commit_in_flight(&self) -> bool {
        matches!(
            self.flusher.as_ref().and_then(Flusher::in_flight),
            Some(InFlight::Commit(_))
        )
    }

    /// Rank 0: opens the next checkpoint in the repository and tells every rank (markers
    /// and the round's Prepare). On failure nothing is left running.
    fn begin_round(&mut self) -> Result<RoundId, SessionError> {
        let me = self.me;
        let world = self.world;
        let current = self.rec.epoch();
        let now = self.now();
        let Some(l) = self.leader.as_mut() else {
            return Err(SessionError::new(
                K::Misuse,
                me,
                "only rank 0 starts rounds",
            ));
        };
        if l.coord.active_round().is_some() {
            return Err(SessionError::new(
                K::Misuse,
                me,
                "a round is still running (its COMMIT may be being written)",
            ));
        }
        let repo = match l.repo.take() {
            Some(r) => r,
            // Lost with a background writer that died: reopen.
            None => open_leader_repo(&self.cfg)
                .map_err(|e| SessionError::wrap(K::Store, me, "reopening the repository", e))?,
        };
        let repo = l.repo.insert(repo);
        let pending = repo
            .begin(world)
            .map_err(|e| SessionError::wrap(K::Store, me, "beginning a checkpoint", e))?;
        // The epoch is the checkpoint id, so every rank knows the id at its local snapshot
        // (for its output marker). Ids exceed every directory present, including the
        // restored checkpoint's, and every id this handle handed out, so the epoch
        // increases within a session. They are not unique across sessions: an aborted
        // round's directory is deleted and a new `Repository` hands its id out again (the
        // fence in `open` keeps an earlier session's round messages out of ours).
        let id = pending.id();
        if id.0 <= current.0 {
            let _ = repo.abort(pending);
            return Err(SessionError::new(
                K::Store,
                me,
                format!(
                    "the repository handed out checkpoint id {id}, not above the current \
                     epoch {}: were checkpoint directories renamed by hand?",
                    current.0
                ),
            ));
        }
        let round = RoundId {
            epoch: Epoch(id.0),
            ckpt: id,
        };
        l.pending = Some(pending);
        let actions = match l.coord.start_round(round, now) {
            Ok(a) => a,
            Err(e) => {
                if let (Some(p), Some(repo)) = (l.pending.take(), l.repo.as_mut()) {
                    let _ = repo.abort(p);
                }
                return Err(SessionError::protocol(me, "starting a round", e));
            }
        };
        if let Err(e) = self.exec_coord(actions) {
            self.abort_round(round, false);
            return Err(e);
        }
        Ok(round)
    }

    /// Rank 0: runs the protocol until `round` is decided.
    fn drive_round<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        round: RoundId,
    ) -> Result<AsyncReport, SessionError> {
        // The coordinator aborts a collecting round at `timeouts.round` (checked by `tick`
        // on every iteration, whatever arrives); COMMIT is written synchronously in here.
        // This outer bound only guards against a bug.
        let bound = Instant::now() + self.cfg.timeouts.decision;
        loop {
            if let Some(l) = self.leader.as_mut() {
                if let Some(i) = l.decided.iter().position(|r| r.round == round) {
                    if let Some(r) = l.decided.remove(i) {
                        return Ok(r);
                    }
                }
            }
            if Instant::now() >= bound {
                return Err(SessionError::new(
                    K::Timeout,
                    self.me,
                    format!(
                        "round {round:?} undecided after {:?}",
                        self.cfg.timeouts.decision
                    ),
                ));
            }
            self.tick(state)?;
            self.pump_one(state, self.wait_slice())?;
        }
    }

    /// Rank 0 leaving `round` on an error: if it is still collecting votes, decide Abort
    /// and tell every rank (so none waits for a decision) and collect its directory. A
    /// round whose COMMIT write has an unknown result is left undecided on purpose: the
    /// participants resolve it from the repository. `keep_report`: leave the Abort queued
    /// for `take_report` (a background round) instead of dropping it (the caller returns
    /// the error instead).
    fn abort_round(&mut self, round: RoundId, keep_report: bool) {
        let me = self.me;
        let Some(l) = self.leader.as_mut() else {
            return;
        };
        if l.coord.active_round() != Some(round) {
            return;
        }
        let actions = l
            .coord
            .abort(format!("{me} failed inside the round (see its error)"));
        if let Err(e) = self.exec_coord(actions) {
            tracing::warn!("{me}: announcing the abort of {}: {e}", round.ckpt);
        }
        if let (false, Some(l)) = (keep_report, self.leader.as_mut()) {
            l.decided.retain(|r| r.round != round);
        }
    }

    /// Ends the session: waits for the part being written in the background (and votes),
    /// tells every rank this one is done, keeps running the protocol
    /// until every rank said so (so no rank leaves while a round may still need it), and
    /// gives the communicator back. Fails if a peer leaves without saying so, after
    /// `timeout`, if messages are left that the program never received, or (once every
    /// rank is done) with a background write error not reported yet.
    ///
    /// On rank 0, a round started by [`AsyncSession::start_checkpoint`] and still running
    /// is first driven to its decision (before any rank can be told this one is done, so
    /// every participant is still there to complete its snapshot); the decision is
    /// logged, not returned — call [`AsyncSession::take_report`] before `finish` for the
    /// rounds decided until then.
    pub fn finish<S: Checkpoint + ?Sized>(
        mut self,
        state: &S,
        timeout: Duration,
    ) -> Result<Comm, SessionError> {
        match self.finish_protocol(state, timeout) {
            Ok(()) => {
                // Every rank is done: a background write that failed is this call's error.
                self.reported()?;
                Ok(self.comm)
            }
            Err(e) => {
                // Only one error can be returned; a background write error not reported
                // yet is logged rather than dropped with the session.
                if let Some(f) = self.flush_error.take() {
                    tracing::error!("{}: before finishing failed: {f}", self.me);
                }
                Err(e)
            }
        }
    }

    fn finish_protocol<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let me = self.me;
        let active = self.leader.as_ref().and_then(|l| l.coord.active_round());
        if let Some(round) = active {
            match self.drive_round(state, round) {
                Ok(r) => tracing::info!(
                    "{me}: checkpoint {} decided {:?} while finishing",
                    r.round.ckpt,
                    r.outcome
                ),
                Err(e) => {
                    self.abort_round(round, false);
                    return Err(e);
                }
            }
        }
        // A part still being written: its vote goes out before this rank says it is done.
        self.settle_flush(state)?;
        self.done_from.insert(me);
        for r in (0..self.world).map(Rank).filter(|&r| r != me) {
            self.send_ctl(r, TAG_DONE, Vec::new())
                .map_err(|e| net(me, &format!("telling {r} this rank is done"), e))?;
        }
        let deadline = Instant::now() + timeout;
        while (self.done_from.len() as u32) < self.world {
            self.tick(state)?;
            match self
                .comm
                .recv_envelope_timeout(None, None, self.wait_slice())
            {
                Ok(env) => self.handle(state, env)?,
                Err(e) if e.kind() == NetKind::Timeout => {}
                Err(e) if e.kind() == NetKind::PeerFinished => {}
                Err(e) => return Err(net(me, "finishing", e)),
            }
            // A peer that dropped its communicator without `Done` would make us wait for
            // ever: ask for it by name, which reports it as finished.
            let missing: Vec<Rank> = (0..self.world)
                .map(Rank)
                .filter(|r| !self.done_from.contains(r))
                .collect();
            for r in missing {
                match self.comm.try_recv_envelope(Some(r), None) {
                    Ok(Some(env)) => self.handle(state, env)?,
                    Ok(None) => {}
                    Err(e) => {
                        return Err(SessionError::wrap(
                            K::PeerGone,
                            me,
                            &format!("{r} left without finishing"),
                            e,
                        ))
                    }
                }
            }
            if Instant::now() >= deadline && (self.done_from.len() as u32) < self.world {
                let missing: Vec<String> = (0..self.world)
                    .map(Rank)
                    .filter(|r| !self.done_from.contains(r))
                    .map(|r| r.to_string())
                    .collect();
                return Err(SessionError::new(
                    K::Timeout,
                    me,
                    format!("not done after {timeout:?}: {}", missing.join(", ")),
                ));
            }
        }
        if !self.inbox.is_empty() {
            return Err(SessionError::new(
                K::Misuse,
                me,
                format!(
                    "{} received messages were never taken by the program",
                    self.inbox.len()
                ),
            ));
        }
        // Every rank is done, so no part is being written: the spare chunk files kept
        // for a next round have none to go to.
        self.settle_flush(state)?;
        self.clear_spares();
        Ok(())
    }

    /// Rank 0: deletes the spare chunk files its retention kept (a failure leaves them
    /// for the next collection or `lazarus gc`, and is logged).
    fn clear_spares(&mut self) {
        let Some(l) = self.leader.as_mut() else {
            return;
        };
        let cleared = match l.repo.as_ref() {
            Some(r) => r.clear_spares(),
            // Lost with a background writer that died: reopen.
            None => open_leader_repo(&self.cfg).and_then(|r| r.clear_spares()),
        };
        if let Err(e) = cleared {
            tracing::warn!("{}: removing spare chunk files: {e}", self.me);
        }
    }

    // ---- protocol plumbing ---------------------------------------------------------

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn send_ctl(&self, to: Rank, tag: u32, bytes: Vec<u8>) -> Result<(), NetError> {
        self.comm.send_bytes(to, Tag::checkpoint(tag), bytes)
    }

    fn tick<S: Checkpoint + ?Sized>(&mut self, state: &S) -> Result<(), SessionError> {
        self.poll_flush(state)?;
        let now = self.now();
        let a = self.part.tick(now);
        self.exec_part(state, a)?;
        if let Some(l) = self.leader.as_mut() {
            let a = l.coord.tick(now);
            self.exec_coord(a)?;
        }
        Ok(())
    }

    fn pump_one<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        wait: Duration,
    ) -> Result<(), SessionError> {
        match self.comm.recv_envelope_timeout(None, None, wait) {
            Ok(env) => self.handle(state, env),
            Err(e) if e.kind() == NetKind::Timeout => Ok(()),
            Err(e) => Err(net(self.me, "receiving", e)),
        }
    }

    fn handle<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        env: Envelope,
    ) -> Result<(), SessionError> {
        let me = self.me;
        let from = env.src;
        match env.tag.space() {
            TagSpace::User => {
                let msg = SavedMessage {
                    tag: env.tag.value(),
                    epoch: env.epoch,
                    payload: env.payload,
                };
                let a = self
                    .rec
                    .on_message(from, env.epoch, msg)
                    .map_err(|e| SessionError::protocol(me, "application message", e))?;
                self.exec_rec(state, a)
            }
            TagSpace::Checkpoint => match env.tag.value() {
                TAG_MARKER => {
                    let epoch = wire::decode_marker(&env.payload).ok_or_else(|| {
                        SessionError::new(
                            K::Codec,
                            me,
                            format!("marker from {from} has {} bytes, not 8", env.payload.len()),
                        )
                    })?;
                    let a = self
                        .rec
                        .on_marker(from, epoch)
                        .map_err(|e| SessionError::protocol(me, "marker", e))?;
                    self.exec_rec(state, a)
                }
                TAG_TO_PARTICIPANT => {
                    // Only rank 0 coordinates: another rank's message would start a round
                    // nobody opened or announce a decision nobody made.
                    if from != Rank(0) {
                        return Err(SessionError::new(
                            K::Protocol,
                            me,
                            format!(
                                "2PC message from {from}, but only rank 0 coordinates rounds; \
                                 do not mix an AsyncSession with other checkpoint traffic"
                            ),
                        ));
                    }
                    let msg: ToParticipant = decode(me, from, "2PC message", &env.payload)?;
                    let now = self.now();
                    let a = self
                        .part
                        .step(msg, now)
                        .map_err(|e| SessionError::protocol(me, "2PC message", e))?;
                    self.exec_part(state, a)
                }
                TAG_VOTE => {
                    let now = self.now();
                    let Some(l) = self.leader.as_mut() else {
                        return Err(SessionError::new(
                            K::Protocol,
                            me,
                            format!("vote from {from} reached a rank that is not rank 0"),
                        ));
                    };
                    // A bad vote is dropped, never fatal: failing here would leave the
                    // round undecided; the deadline aborts it if no good vote follows.
                    let vote: VoteMsg<PartReceipt> = match postcard::from_bytes(&env.payload) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!("{me}: ignoring undecodable vote from {from}: {e}");
                            return Ok(());
                        }
                    };
                    if vote.from != from {
                        tracing::warn!("{me}: ignoring a vote for {} sent by {from}", vote.from);
                        return Ok(());
                    }
                    match l.coord.step(vote, now) {
                        Ok(a) => self.exec_coord(a),
                        Err(e) => {
                            tracing::warn!("{me}: ignoring vote from {from}: {e}");
                            Ok(())
                        }
                    }
                }
                TAG_DONE => {
                    self.done_from.insert(from);
                    Ok(())
                }
                other => Err(SessionError::new(
                    K::Protocol,
                    me,
                    format!(
                        "checkpoint tag {other:#x} from {from} is not the unaligned runtime's; \
                         do not mix an AsyncSession with other checkpoint traffic"
                    ),
                )),
            },
            // A wildcard receive never yields collective traffic; nothing else exists.
            _ => Ok(()),
        }
    }

    fn exec_rec<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        actions: Vec<UnalignedAction<SavedMessage>>,
    ) -> Result<(), SessionError> {
        let me = self.me;
        // An action that fails (a capture, a marker that cannot be sent, a part that
        // cannot be handed to the writer) is this call's error, but only once every action
        // of the recorder has run: the other markers must still go out (or the other
        // ranks' snapshots never complete) and the message that triggered the snapshot
        // (Lai-Yang) must still reach the inbox, or the program never gets it. The first
        // error is returned, later ones are logged. A failed capture keeps its snapshot,
        // failed, so this rank votes Failed for its round.
        let mut first_error: Option<SessionError> = None;
        let mut keep = |e: SessionError| {
            if let Some(earlier) = &first_error {
                tracing::warn!("{me}: {e} (after an earlier error of the same call: {earlier})");
            } else {
                first_error = Some(e);
            }
        };
        for a in actions {
            match a {
                UnalignedAction::TakeLocalSnapshot { epoch } => {
                    // The cut in this rank's output: before anything the state captured
                    // now has not done yet. The epoch is the checkpoint id (see
                    // `checkpoint`).
                    self.marker(&Marker::Part {
                        id: CheckpointId(epoch.0),
                        step: epoch.0,
                    });
                    let id = CheckpointId(epoch.0);
                    let (c, staged) = match self.capture(state, id) {
                        Ok(c) => (c, true),
                        Err(e) => {
                            let c = Captured::failed(e.to_string());
                            keep(e);
                            (c, false)
                        }
                    };
                    self.stats.captured_bytes += c.copied;
                    if let Some(p) = &c.pieces {
                        self.stats.ahead_bytes += p.ahead.bytes();
                    }
                    if let (Some(e), true) = (&c.failed, staged) {
                        // Reported like a failed background write: by the next call.
                        let err = SessionError::new(
                            K::Flush,
                            me,
                            format!(
                                "checkpoint {id}: writing the part of this rank's snapshot, over \
                                 the staging budget of {} bytes, in pieces failed, so it did \
                                 not commit: {e}",
                                self.cfg.staging_budget
                            ),
                        );
                        if let Some(earlier) = self.flush_error.replace(err) {
                            tracing::warn!("{earlier}");
                        }
                    }
                    let mut inbox: BTreeMap<Rank, Vec<SavedMessage>> = BTreeMap::new();
                    for (from, m) in &self.inbox {
                        inbox.entry(*from).or_default().push(m.clone());
                    }
                    self.snap = Some(Snap {
                        epoch,
                        objects: c.objects,
                        inbox,
                        reused: c.reused,
                        pieces: c.pieces,
                        failed: c.failed,
                    });
                    if staged {
                        self.stats.snapshots += 1;
                    }
                    // Stamp before any marker or later send leaves this rank.
                    self.comm.set_epoch(epoch);
                }
                UnalignedAction::SendMarker { to, epoch } => {
                    match self.send_ctl(to, TAG_MARKER, wire::encode_marker(epoch)) {
                        Ok(()) => {}
                        // A rank that left cannot take part; the round aborts on its own
                        // deadline or vote, and a snapshot without round is garbage.
                        Err(e) if e.kind() == NetKind::PeerFinished => {}
                        Err(e) => keep(net(me, &format!("marker of epoch {} to {to}", epoch.0), e)),
                    }
                }
                UnalignedAction::Deliver { from, payload } => self.inbox.push_back((from, payload)),
                UnalignedAction::Complete(cs) => {
                    if let Some(snap) = self.snap.take_if(|s| s.epoch == cs.epoch) {
                        self.ready = Some(merge(snap, cs));
                    }
                    if let Err(e) = self.try_write(state) {
                        keep(e);
                    }
                }
                UnalignedAction::Abandoned { epoch } => {
                    if self.snap.as_ref().is_some_and(|s| s.epoch == epoch) {
                        self.snap = None;
                    }
                    if self.ready.as_ref().is_some_and(|r| r.epoch == epoch) {
                        self.ready = None;
                    }
                    if let Err(e) = self.try_write(state) {
                        keep(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Captures the local snapshot of checkpoint `id`: the state's objects copied into
    /// buffers of the session (so the program may change its memory as soon as the call
    /// returns), the chunks reused by digest, and the bytes copied. Incremental (the same
    /// rule as the Job's, [`crate::capture`]) when a tracked object's previous committed
    /// checkpoint is known: only its changed chunks are copied. Any doubt (no committed
    /// predecessor in this session, a cache of another part, no part writer) makes it a
    /// full copy.
    ///
    /// A copy over [`AsyncConfig::staging_budget`] is taken in pieces, like the Job's
    /// (issue #16 item 3, docs/ASYNC.md): the heads (what fits) copied, the tails written
    /// as durable chunks here, inside the call ([`PartWriter::write_ahead`]); the part
    /// (heads, manifest) is written later with them. An incremental copy over the budget
    /// becomes a full one in pieces. If writing the tails fails the snapshot is still
    /// taken (the recorder goes on) but marked failed: this rank votes Failed.
    fn capture<S: Checkpoint + ?Sized>(
        &self,
        state: &S,
        id: CheckpointId,
    ) -> Result<Captured, SessionError> {
        use crate::capture as cap;
        let me = self.me;
        let objects = lazarus_state::save(state)
            .map_err(|e| SessionError::wrap(K::State, me, "capturing the local snapshot", e))?;
        if let Some(o) = objects.iter().find(|o| o.info.name == CHANNELS_OBJECT) {
            return Err(SessionError::new(
                K::Misuse,
                me,
                format!("state object {:?} uses the reserved name", o.info.name),
            ));
        }
        let budget = self.cfg.staging_budget;
        let full = cap::borrowed_bytes(&objects);
        let base = cap::incremental_base(self.last_committed, &objects);
        if base.is_none() && full <= budget {
            return Ok(Captured::staged(cap::stage(objects, Vec::new()), full));
        }
        // The part writer gives the chunk size and the fingerprint cache, and writes the
        // tails of a capture in pieces.
        let writer = match open_writer(
            &self.cfg.repo,
            id,
            self.cfg.store.clone(),
            self.write_budget,
        ) {
            Ok(w) => w,
            Err(e) if full <= budget => {
                tracing::debug!("{me}: full capture of checkpoint {id}: {e}");
                return Ok(Captured::staged(cap::stage(objects, Vec::new()), full));
            }
            Err(e) => return Ok(Captured::failed(format!("{me}: {e}"))),
        };
        let mut target = SessionTarget {
            writer: &writer,
            me,
            reused: Vec::new(),
            ahead: None,
        };
        match cap::capture_into(&mut target, objects, Vec::new(), budget, base) {
            Ok((staged, copied)) => {
                let SessionTarget { reused, ahead, .. } = target;
                Ok(Captured {
                    reused,
                    pieces: ahead.map(|ahead| Pieces { writer, ahead }),
                    ..Captured::staged(staged, copied)
                })
            }
            Err(SessionCaptureError::Staging(e)) => Err(SessionError::wrap(
                K::State,
                me,
                "capturing the local snapshot",
                e,
            )),
            Err(SessionCaptureError::Tails(e)) => Ok(Captured::failed(format!("{me}: {e}"))),
        }
    }

    /// Writes the part if the round asked for it and the recorder has completed it; votes
    /// `Failed` if the recorder can no longer produce it. With the background writer the
    /// part is handed to it (after the previous part, if one is still being written: one
    /// in flight) and the vote goes out from the session call that finds it written.
    fn try_write<S: Checkpoint + ?Sized>(&mut self, state: &S) -> Result<(), SessionError> {
        let Some(round) = self.want else {
            return Ok(());
        };
        let result = if let Some(ready) = self.ready.take_if(|r| r.epoch == round.epoch) {
            self.stats.messages_saved += ready.channels.len() as u64;
            match self.part_task(round, ready) {
                Err(e) => Some(Err(e)),
                Ok((task, channel_bytes)) => {
                    let info = PartInFlight {
                        round,
                        channel_bytes,
                    };
                    if self.flusher.is_some() {
                        self.settle_flush(state)?;
                    }
                    let submitted = match self.flusher.as_mut() {
                        Some(f) => f
                            .submit(Work::Part(Box::new(task)), InFlight::Part(info))
                            .map_err(|w| match *w {
                                Work::Part(t) => Some(*t),
                                Work::Commit(_) => None,
                            }),
                        None => Err(Some(task)),
                    };
                    match submitted {
                        Ok(()) => {
                            self.want = None;
                            return Ok(());
                        }
                        Err(task) => {
                            if self.flusher.take().is_some() {
                                tracing::warn!(
                                    "{}: background writer gone: parts are written in the session calls",
                                    self.me
                                );
                            }
                            let Some(task) = task else {
                                return Err(SessionError::new(
                                    K::Protocol,
                                    self.me,
                                    "the background writer gave back a COMMIT for a part",
                                ));
                            };
                            let done = write_part_task(task);
                            self.want = None;
                            return self.part_done(
                                state,
                                info,
                                done.result,
                                false,
                                done.not_pending,
                            );
                        }
                    }
                }
            }
        } else {
            let e = self.rec.epoch();
            let gone = e > round.epoch
                || (e == round.epoch && self.snap.as_ref().is_none_or(|s| s.epoch != e));
            // A snapshot whose capture failed can only vote Failed: at once, not when its
            // recording completes.
            let failed = self
                .snap
                .as_ref()
                .filter(|s| s.epoch == round.epoch)
                .and_then(|s| s.failed.clone());
            match failed {
                Some(why) => Some(Err(why)),
                None => gone.then(|| Err(format!("superseded: recorder is at {e}"))),
            }
        };
        let Some(result) = result else {
            return Ok(());
        };
        self.want = None;
        let now = self.now();
        let a = self.part.part_written(round, result, now);
        self.exec_part(state, a)
    }

    /// The part of `round` to write: the captured objects plus the channel state; and the
    /// size of the latter.
    fn part_task(&self, round: RoundId, ready: Ready) -> Result<(PartTask, u64), String> {
        if let Some(e) = ready.failed {
            return Err(e);
        }
        let mut objects = ready.objects;
        let channels = wire::channels_object(&ready.channels).map_err(|e| e.to_string())?;
        let channel_bytes = channels.data.len() as u64;
        objects.push(channels);
        Ok((
            PartTask {
                repo: self.cfg.repo.clone(),
                store: self.cfg.store.clone(),
                me: self.me,
                round,
                objects,
                reused: ready.reused,
                pieces: ready.pieces,
                budget: self.write_budget,
            },
            channel_bytes,
        ))
    }

    /// A part write ended (`background`: on the writer thread): counted, voted; a failed
    /// background write is kept for the next session call to report.
    fn part_done<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        info: PartInFlight,
        result: Result<PartReceipt, String>,
        background: bool,
        not_pending: bool,
    ) -> Result<(), SessionError> {
        match &result {
            Ok(_) => {
                self.stats.parts_written += 1;
                self.stats.channel_bytes += info.channel_bytes;
            }
            // Rank 0 collects an aborted round's directory at once, also while a part of
            // it (its own, or another rank's that was sent the round's markers before the
            // abort) is still to be written in the background: that write then fails
            // because the directory is gone ("not pending"). The abort is the news,
            // already in the round's report; the failure it caused is not an error of
            // this rank to report again. Any other failure is reported, also for a round
            // that aborted meanwhile (e.g. by a timeout waiting for this very part).
            Err(e)
                if background
                    && not_pending
                    && self
                        .leader
                        .as_ref()
                        .is_none_or(|l| l.coord.active_round() != Some(info.round)) =>
            {
                tracing::info!(
                    "{}: its part of checkpoint {}, aborted meanwhile, was not written: {e}",
                    self.me,
                    info.round.ckpt
                );
            }
            Err(e) if background => {
                let err = SessionError::new(
                    K::Flush,
                    self.me,
                    format!(
                        "checkpoint {}: writing this rank's part in the background failed, so it did not commit: {e}",
                        info.round.ckpt
                    ),
                );
                if let Some(earlier) = self.flush_error.replace(err) {
                    tracing::warn!("{earlier}");
                }
            }
            Err(_) => {}
        }
        let now = self.now();
        let a = self.part.part_written(info.round, result, now);
        self.exec_part(state, a)
    }

    /// Takes the background write's outcome if it has ended (without waiting).
    fn poll_flush<S: Checkpoint + ?Sized>(&mut self, state: &S) -> Result<(), SessionError> {
        let polled = match self.flusher.as_mut() {
            Some(f) => f.poll(),
            None => return Ok(()),
        };
        self.flushed(state, polled)
    }

    /// Waits for the background write in flight, if any, and takes its outcome.
    fn settle_flush<S: Checkpoint + ?Sized>(&mut self, state: &S) -> Result<(), SessionError> {
        let settled = match self.flusher.as_mut() {
            Some(f) => f.settle(),
            None => return Ok(()),
        };
        self.flushed(state, settled)
    }

    fn flushed<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        outcome: Result<Option<(InFlight, Worked)>, InFlight>,
    ) -> Result<(), SessionError> {
        match outcome {
            Ok(None) => Ok(()),
            Ok(Some((InFlight::Part(info), Worked::Part(done)))) => {
                self.part_done(state, info, done.result, true, done.not_pending)
            }
            Ok(Some((_, Worked::Commit(done)))) => {
                let more = self.commit_done(done)?;
                self.exec_coord(more)
            }
            Ok(Some((InFlight::Commit(round), Worked::Part(_)))) => Err(SessionError::new(
                K::Protocol,
                self.me,
                format!("a part came back for the COMMIT of {}", round.ckpt),
            )),
            Err(InFlight::Part(info)) => {
                // The writer thread died with the part: vote Failed, write in the calls.
                self.flusher = None;
                let e = "the background part writer died".to_string();
                self.part_done(state, info, Err(e), true, false)
            }
            Err(InFlight::Commit(round)) => {
                // It died with the repository: COMMIT may or may not be there. Decide
                // nothing (participants resolve it from the repository); the next round
                // reopens the repository and writes in the calls.
                self.flusher = None;
                if let Some(l) = self.leader.as_mut() {
                    if let Err(m) = l.coord.commit_unknown(round) {
                        tracing::warn!("{}: commit_unknown: {m}", self.me);
                    }
                }
                Err(SessionError::new(
                    K::Store,
                    self.me,
                    format!(
                        "the background writer died writing COMMIT of checkpoint {}; outcome \
                         unknown, not announced",
                        round.ckpt
                    ),
                ))
            }
        }
    }

    /// A COMMIT write ended: the repository goes back to rank 0's leader, and the
    /// coordinator learns the result (its decision follows). An outcome that cannot be
    /// promised either way ends the round unannounced and is this call's error.
    fn commit_done(
        &mut self,
        done: CommitDone,
    ) -> Result<Vec<CoordinatorAction<PartReceipt>>, SessionError> {
        let me = self.me;
        let Some(l) = self.leader.as_mut() else {
            return Ok(Vec::new());
        };
        l.repo = Some(done.repo);
        let round = done.round;
        let result = match done.outcome {
            CommitOutcome::Written => Ok(()),
            CommitOutcome::NotVisible(e) => Err(e),
            CommitOutcome::Unknown(e) => {
                // Decide nothing (neither outcome can be promised): the round ends
                // unannounced, participants resolve it from the repository, the job
                // restarts from what is there.
                if let Err(m) = l.coord.commit_unknown(round) {
                    tracing::warn!("{me}: commit_unknown: {m}");
                }
                return Err(SessionError::wrap(
                    K::Store,
                    me,
                    &format!(
                        "writing COMMIT of checkpoint {} failed and it may be visible (or \
                         its directory could not be removed); outcome not announced",
                        round.ckpt
                    ),
                    e,
                ));
            }
        };
        l.coord
            .commit_written(round, result)
            .map_err(|e| SessionError::protocol(me, "commit written", e))
    }

    /// The background write error not yet reported, as this call's error.
    fn reported(&mut self) -> Result<(), SessionError> {
        match self.flush_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// How long a session call may block in one receive: short while a part is being
    /// written in the background, so its vote goes out soon after the write ends.
    fn wait_slice(&self) -> Duration {
        if self.flusher.as_ref().is_some_and(Flusher::busy) {
            self.cfg.timeouts.retry.min(Duration::from_millis(2))
        } else {
            self.cfg.timeouts.retry
        }
    }

    fn exec_part<S: Checkpoint + ?Sized>(
        &mut self,
        state: &S,
        actions: Vec<ParticipantAction<PartReceipt>>,
    ) -> Result<(), SessionError> {
        let me = self.me;
        for a in actions {
            match a {
                ParticipantAction::WritePart { round } => {
                    self.want = Some(round);
                    let mut snapshot = Ok(());
                    if self.rec.epoch() < round.epoch {
                        let a = self.rec.start_snapshot(round.epoch);
                        snapshot = self.exec_rec(state, a);
                    }
                    // A failed capture votes Failed now, then is this call's error.
                    self.try_write(state)?;
                    snapshot?;
                }
                ParticipantAction::Send(vote) => {
                    let bytes = postcard::to_allocvec(&vote)
                        .map_err(|e| SessionError::wrap(K::Codec, me, "encoding vote", e))?;
                    match self.send_ctl(Rank(0), TAG_VOTE, bytes) {
                        Ok(()) => {}
                        // Rank 0 gone: no decision will come; OutcomeUnknown follows.
                        Err(e) if e.kind() == NetKind::PeerFinished => {}
                        Err(e) => return Err(net(me, "sending vote to rank 0", e)),
                    }
                }
                ParticipantAction::Learned(Decision { round, outcome }) => {
                    if outcome == Outcome::Commit {
                        self.committed(round.ckpt);
                    }
                    if outcome == Outcome::Abort {
                        let a = self.rec.abandon(round.epoch);
                        self.exec_rec(state, a)?;
                        if self.want == Some(round) {
                            self.want = None;
                        }
                    }
                }
                // Our part landed after (or while) rank 0 collected the aborted round:
                // remove it now, or it would recreate the directory until the next GC.
                ParticipantAction::DiscardPart { round } => self.discard_part(round),
                ParticipantAction::OutcomeUnknown { round } => {
                    self.stats.outcomes_unknown += 1;
                    let resolved = self.resolve_unknown(round)?;
                    if resolved == Some(Outcome::Commit) {
                        self.committed(round.ckpt);
                    }
                    if resolved == Some(Outcome::Abort) {
                        let a = self.rec.abandon(round.epoch);
                        self.exec_rec(state, a)?;
                        if self.want == Some(round) {
                            self.want = None;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `id` committed (so every rank's part of it is durable and retained for now): the
    /// base of this rank's next incremental capture, if newer than the one known.
    fn committed(&mut self, id: CheckpointId) {
        if self.last_committed.is_none_or(|c| c < id) {
            self.last_committed = Some(id);
        }
    }

    fn discard_part(&self, round: RoundId) {
        let me = self.me;
        if let Err(e) = lazarus_store::discard_part(&self.cfg.repo, round.ckpt, me) {
            tracing::warn!(
                "{me}: discarding its part of aborted checkpoint {}: {e} (GC will retry)",
                round.ckpt
            );
        }
    }

    /// A round this rank voted in whose decision never came: the repository is the truth.
    /// `Commit` if COMMIT is there; `Abort` only if COMMIT is definitely absent, i.e. rank
    /// 0 already removed the directory (it does on every abort); `None` while the
    /// directory is there without COMMIT (rank 0 may still be writing it: the part stays,
    /// GC collects it if it never commits). Any other read error is an error.
    fn resolve_unknown(&self, round: RoundId) -> Result<Option<Outcome>, SessionError> {
        let me = self.me;
        let id = round.ckpt;
        let outcome = crate::outcome_in_repo(&self.cfg.repo, id).map_err(|e| {
            SessionError::wrap(
                K::Store,
                me,
                &format!("reading the outcome of checkpoint {id}"),
                e,
            )
        })?;
        if outcome.is_none() {
            tracing::warn!(
                "{me}: outcome of checkpoint {id} unknown (no decision, no COMMIT yet); \
                 leaving its part to rank 0 or GC"
            );
        }
        Ok(outcome)
    }

    /// Writes an output marker when markers are on (docs/RECOVERY.md).
    fn marker(&self, m: &Marker) {
        if self.cfg.output_markers {
            crate::marker::write_marker(m);
        }
    }

    fn exec_coord(
        &mut self,
        actions: Vec<CoordinatorAction<PartReceipt>>,
    ) -> Result<(), SessionError> {
        let me = self.me;
        let mut queue: VecDeque<_> = actions.into();
        while let Some(a) = queue.pop_front() {
            let Some(l) = self.leader.as_mut() else {
                return Ok(());
            };
            match a {
                CoordinatorAction::Send { to, msg } => {
                    let bytes = postcard::to_allocvec(&msg)
                        .map_err(|e| SessionError::wrap(K::Codec, me, "encoding prepare", e))?;
                    if self
                        .comm
                        .send_bytes(to, Tag::checkpoint(TAG_TO_PARTICIPANT), bytes)
                        .is_err()
                    {
                        let more = l
                            .coord
                            .rank_failed(to)
                            .map_err(|e| SessionError::protocol(me, "rank failed", e))?;
                        queue.extend(more);
                    }
                }
                CoordinatorAction::WriteCommit { round, receipts } => {
                    let pending = l.pending.take_if(|p| p.id() == round.ckpt);
                    let repo = match l.repo.take() {
                        Some(r) => Ok(r),
                        // Lost with a background writer that died: reopen.
                        None => open_leader_repo(&self.cfg)
                            .map_err(|e| format!("reopening the repository: {e}")),
                    };
                    let (pending, repo) = match (pending, repo) {
                        (Some(p), Ok(r)) => (p, r),
                        (p, r) => {
                            // COMMIT cannot have been written: the round aborts.
                            let why = match &r {
                                Err(e) => e.clone(),
                                Ok(_) => format!("no pending checkpoint {}", round.ckpt),
                            };
                            l.pending = l.pending.take().or(p);
                            l.repo = r.ok();
                            let more = l
                                .coord
                                .commit_written(round, Err(why))
                                .map_err(|e| SessionError::protocol(me, "commit written", e))?;
                            queue.extend(more);
                            continue;
                        }
                    };
                    let task = CommitTask {
                        me,
                        repo,
                        path: self.cfg.repo.clone(),
                        pending,
                        receipts: receipts.into_iter().map(|(_, r)| r).collect(),
                        round,
                        keep: self.cfg.keep,
                        markers: self.cfg.output_markers,
                        hold: self.commit_hold.clone(),
                    };
                    // In the background (issue #16): no session call waits for the COMMIT
                    // fsync; the decision follows from the call that finds it written.
                    let task = match self.flusher.as_mut().filter(|f| !f.busy()) {
                        Some(f) => {
                            match f.submit(Work::Commit(Box::new(task)), InFlight::Commit(round)) {
                                Ok(()) => continue,
                                Err(w) => {
                                    tracing::warn!(
                                    "{me}: background writer gone: COMMIT and parts are written in the session calls"
                                );
                                    self.flusher = None;
                                    match *w {
                                        Work::Commit(t) => *t,
                                        Work::Part(_) => return Err(SessionError::new(
                                            K::Protocol,
                                            me,
                                            "the background writer gave back a part for a COMMIT",
                                        )),
                                    }
                                }
                            }
                        }
                        // Without the writer (`sync_writes`), or (never expected: the part
                        // of rank 0 was taken before its vote) while it is busy: here.
                        None => task,
                    };
                    let more = self.commit_done(write_commit(task))?;
                    queue.extend(more);
                }
                CoordinatorAction::CollectLeftovers { round } => {
                    if let Some(p) = l.pending.take_if(|p| p.id() == round.ckpt) {
                        // Left behind on failure; GC removes directories without COMMIT.
                        if let Some(repo) = l.repo.as_mut() {
                            let _ = repo.abort(p);
                        }
                    }
                }
                CoordinatorAction::Decided { decision, reason } => {
                    // Bounded: a program that starts rounds in the background and never
                    // asks for their decisions must not grow this queue for ever.
                    if l.decided.len() >= MAX_QUEUED_REPORTS {
                        l.decided.pop_front();
                    }
                    l.decided.push_back(AsyncReport {
                        round: decision.round,
                        outcome: decision.outcome,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }
}

fn net(me: Rank, ctx: &str, e: NetError) -> SessionError {
    SessionError::wrap(K::Net, me, ctx, e)
}

fn decode<T: DeserializeOwned>(
    me: Rank,
    from: Rank,
    what: &str,
    b: &[u8],
) -> Result<T, SessionError> {
    postcard::from_bytes(b)
        .map_err(|e| SessionError::wrap(K::Codec, me, &format!("{what} from {from}"), e))
}

/// Per sender: messages the session held for the program at the cut come before the
/// ones recorded after it (arrival order on the FIFO channel).
fn merge(snap: Snap, cs: ChannelState<SavedMessage>) -> Ready {
    let mut by_rank = snap.inbox;
    for (r, msgs) in cs.channels {
        by_rank.entry(r).or_default().extend(msgs);
    }
    Ready {
        epoch: snap.epoch,
        objects: snap.objects,
        reused: snap.reused,
        pieces: snap.pieces,
        failed: snap.failed,
        channels: ChannelState {
            epoch: cs.epoch,
            channels: by_rank.into_iter().filter(|(_, m)| !m.is_empty()).collect(),
        },
    }
}

type Split = (
    Option<ChannelState<SavedMessage>>,
    Vec<lazarus_format::LoadedObject>,
);

/// A rank's part of a checkpoint, loaded and verified: its channel state and the user's
/// objects.
type LoadedPart = (ChannelState<SavedMessage>, Vec<LoadedObject>);

fn split_channels(
    objects: Vec<LoadedObject>,
    id: CheckpointId,
    me: Rank,
) -> Result<Split, SessionError> {
    let mut channels = None;
    let mut user = Vec::with_capacity(objects.len());
    for o in objects {
        if o.info.name == CHANNELS_OBJECT {
            let cs = wire::decode_channels(&o.info, &o.data).map_err(|e| {
                SessionError::new(K::Codec, me, format!("checkpoint {id} part of {me}: {e}"))
            })?;
            channels = Some(cs);
        } else {
            user.push(o);
        }
    }
    Ok((channels, user))
}
