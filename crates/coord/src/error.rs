//! Errors of the protocol state machines.
//!
//! Policy: a message that is merely *late* (stale epoch, duplicate, an answer to a round
//! that is already decided) is not an error; it is ignored, because loss, retransmission
//! and reordering across rounds are normal. An error means the input cannot be explained
//! by a correct peer on a FIFO channel (a rank outside the world, two different checkpoint
//! ids for one epoch, a FIFO violation) or that the local runtime called the machine out
//! of order. Retrying the same input never helps; the round (or the job) must be aborted.

use lazarus_format::{CheckpointId, Epoch, Rank};
use thiserror::Error;

/// What went wrong, for callers that branch on the cause rather than print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input names a rank outside `0..world`.
    UnknownRank,
    /// Two different checkpoint ids were used for one epoch.
    ConflictingRound,
    /// A message arrived in an order that a FIFO channel cannot produce.
    FifoViolation,
    /// A marker or message named an epoch too far beyond this rank's to be a real round.
    EpochLeap,
    /// The local runtime called the state machine in a state where the call is invalid.
    Misuse,
}

/// An input the protocol cannot accept. The message names the rank, epoch or checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A message or argument named a rank that is not part of the job.
    #[error("{rank} is outside the world of {}", lazarus_format::count(*world, "rank"))]
    UnknownRank {
        /// the offending rank
        rank: Rank,
        /// the world size
        world: u32,
    },
    /// The same epoch was announced with two checkpoint ids.
    #[error("{epoch} is checkpoint {known} here but {rank} used checkpoint {got}")]
    ConflictingRound {
        /// the epoch in question
        epoch: Epoch,
        /// the checkpoint id this machine knows for it
        known: CheckpointId,
        /// the checkpoint id in the message
        got: CheckpointId,
        /// who sent the conflicting message
        rank: Rank,
    },
    /// A pre-cut message arrived on a channel whose marker had already arrived.
    #[error("FIFO violation on the channel from {from}: a message of {msg_epoch} arrived after the marker of {epoch}")]
    FifoViolation {
        /// the sending rank
        from: Rank,
        /// the epoch stamped on the message
        msg_epoch: Epoch,
        /// the snapshot epoch whose marker had already arrived
        epoch: Epoch,
    },
    /// A marker or message from `from` named an epoch more than
    /// [`MAX_EPOCH_LEAP`](crate::MAX_EPOCH_LEAP) beyond this rank's: no round
    /// can be that far ahead, and accepting it would move this rank (and, through its
    /// stamps, every rank) past every later real round.
    #[error("{from} sent a {what} of {got}, more than {max} epochs beyond this rank's {current}: no round can be that far ahead (a buggy or replayed peer)", max = crate::MAX_EPOCH_LEAP)]
    EpochLeap {
        /// the sending rank
        from: Rank,
        /// "marker" or "message"
        what: &'static str,
        /// the epoch it named
        got: Epoch,
        /// this rank's epoch when it arrived
        current: Epoch,
    },
    /// The runtime called the machine out of order (a bug in the caller, not in a peer).
    #[error("protocol misuse: {0}")]
    Misuse(&'static str),
}

impl ProtocolError {
    /// The cause, without the details.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProtocolError::UnknownRank { .. } => ErrorKind::UnknownRank,
            ProtocolError::ConflictingRound { .. } => ErrorKind::ConflictingRound,
            ProtocolError::FifoViolation { .. } => ErrorKind::FifoViolation,
            ProtocolError::EpochLeap { .. } => ErrorKind::EpochLeap,
            ProtocolError::Misuse(_) => ErrorKind::Misuse,
        }
    }

    /// Whether repeating the same call could succeed. Always `false`: protocol inputs are
    /// facts about the past; the caller must abort the round or the job instead.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

pub(crate) fn check_rank(rank: Rank, world: u32) -> Result<(), ProtocolError> {
    if rank.0 < world {
        Ok(())
    } else {
        Err(ProtocolError::UnknownRank { rank, world })
    }
}
