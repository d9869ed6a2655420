//! Checkpoint protocols of Lazarus as pure state machines (raft-rs style): inputs are
//! `step(message)`, `tick(now)` and local events; outputs are ordered lists of actions
//! ("send this to rank r", "write my part", "write COMMIT", "deliver this message",
//! "record this as channel state"). Nothing here does I/O, reads a clock or spawns a
//! thread, so every protocol can be run on a simulated network and model-checked.
//!
//! The three central types:
//! - [`Coordinator`]: decides aligned rounds by two-phase commit: COMMIT only with a
//!   durable receipt from every rank, abort on any failure, dead rank or deadline.
//! - [`Participant`]: one rank's side of a round: write the part, vote, learn the outcome.
//! - [`Unaligned`]: one rank's consistent-cut recorder (Chandy-Lamport markers with
//!   Lai-Yang epoch piggybacking) producing the [`ChannelState`] saved with its part,
//!   and replaying it exactly once after a restart.
//!
//! An unaligned checkpoint uses both: the coordinator's `Prepare` starts the snapshot
//! (`Unaligned::start_snapshot`), the part is written when the recorder reports
//! `Complete`, and the round commits as an aligned one. See docs/PROTOCOL.md.
//!
//! ```
//! use lazarus_coord::{Coordinator, CoordinatorAction, Participant, ParticipantAction, RoundId, Timeouts};
//! use lazarus_format::{CheckpointId, Epoch, Rank};
//! use std::time::Duration;
//!
//! let t0 = Duration::ZERO;
//! let round = RoundId { epoch: Epoch(1), ckpt: CheckpointId(1) };
//! let mut coord = Coordinator::<&str>::new(1, Timeouts::default())?;
//! let mut rank0 = Participant::new(Rank(0), Timeouts::default());
//! let prepare = match coord.start_round(round, t0)?.remove(0) {
//!     CoordinatorAction::Send { msg, .. } => msg,
//!     other => unreachable!("{other:?}"),
//! };
//! assert_eq!(rank0.step(prepare, t0)?, vec![ParticipantAction::WritePart { round }]);
//! // ... the runtime writes the part; the store returns a receipt ...
//! let vote = match rank0.part_written(round, Ok("receipt-0"), t0).remove(0) {
//!     ParticipantAction::Send(v) => v,
//!     other => unreachable!("{other:?}"),
//! };
//! let actions = coord.step(vote, t0)?;
//! assert!(matches!(actions[0], CoordinatorAction::WriteCommit { .. }));
//! # Ok::<(), lazarus_coord::ProtocolError>(())
//! ```
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod aligned;
mod aligned_rt;
pub mod capture;
mod damage;
mod error;
mod fence;
mod flusher;
mod fuzz;
pub mod marker;
pub mod meta;
pub mod restore;
mod unaligned;
mod unaligned_rt;

pub use aligned::{
    AbortReason, Coordinator, CoordinatorAction, Decision, Outcome, Participant, ParticipantAction,
    RoundId, Timeouts, ToParticipant, Vote, VoteMsg,
};
pub use aligned_rt::{
    AlignedRuntime, Committed, RankStore, RoundError, RoundErrorKind, RoundTarget, StartedRound,
    MAX_ABORTS_IN_A_ROW, OUTPUT_MARKERS_ENV, TAG_TO_PARTICIPANT, TAG_VOTE,
};
pub use damage::{all_damaged_message, announce_all_damaged, OnAllDamaged, ON_ALL_DAMAGED_ENV};
pub use error::{ErrorKind, ProtocolError};
#[doc(hidden)]
pub use fence::open_channels as open_aligned_channels;
pub use flusher::Flusher;
#[doc(hidden)]
pub use fuzz::{channels_object_info, fuzz_channel_state, fuzz_two_phase};
pub use unaligned::{ChannelState, Unaligned, UnalignedAction, MAX_EPOCH_LEAP};
pub use unaligned_rt::{
    AsyncConfig, AsyncMessage, AsyncReport, AsyncSession, AsyncStart, AsyncStats, SavedMessage,
    SessionError, SessionErrorKind, CHANNELS_OBJECT, UNALIGNED_TAG_BASE,
};

/// What the repository says about checkpoint `id` of a round whose decision this rank did
/// not get: `Commit` if COMMIT is there, `Abort` once the directory is gone (rank 0
/// removes it before announcing any abort, also after a failed COMMIT write), `None` while it exists without COMMIT (rank 0 may still be
/// writing it). A read error is an error, never an outcome.
pub(crate) fn outcome_in_repo(
    repo: &std::path::Path,
    id: lazarus_format::CheckpointId,
) -> Result<Option<Outcome>, lazarus_store::StoreError> {
    use lazarus_store::Presence;
    Ok(
        match lazarus_store::RepoReader::open(repo)?.commit_presence(id)? {
            Presence::Committed(_) => Some(Outcome::Commit),
            Presence::Gone => Some(Outcome::Abort),
            Presence::Pending => None,
        },
    )
}

/// True only if COMMIT of `id` is definitely not there (not found); any doubt is false.
/// A coordinator may decide Abort after a failed COMMIT write only when this holds: a
/// store error mislabelled as "not committed" must never turn a visible COMMIT into an
/// announced abort.
pub(crate) fn commit_absent(repo: &std::path::Path, id: lazarus_format::CheckpointId) -> bool {
    match lazarus_store::RepoReader::open(repo).map(|r| r.commit_record(id)) {
        Ok(Err(e)) => e.kind() == lazarus_store::StoreErrorKind::Missing,
        _ => false,
    }
}

/// Environment variable naming the repository when a program was given none (the one
/// `lazarus run --repo` exports to every rank).
pub const REPO_ENV: &str = "LAZARUS_REPO";
/// Environment variable with the job token `lazarus run` gives every rank (shares the
/// repository lock with the supervisor).
pub const TOKEN_ENV: &str = "LAZARUS_JOB_TOKEN";
