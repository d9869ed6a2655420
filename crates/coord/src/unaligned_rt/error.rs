//! Errors of the unaligned runtime.
//!
//! Policy: every error names the rank that raised it, carries a [`SessionErrorKind`] to
//! branch on, and keeps the lower layer's error (net, store, state, protocol) as its
//! source. After an error the session's recorder may be half-way through a snapshot; the
//! caller should treat the session as failed (drop it; restart restores the newest
//! committed checkpoint), except for `Timeout` from a receive, which changes nothing, and
//! `Flush`, a background write that failed (its checkpoint aborted; the session goes on).

use crate::error::ProtocolError;
use lazarus_format::Rank;
use std::error::Error as StdError;
use thiserror::Error;

/// What went wrong, without the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionErrorKind {
    /// The communicator failed (a peer died, a frame was refused, ...).
    Net,
    /// The checkpoint repository could not be read or written.
    Store,
    /// The application state could not be saved or restored (schema mismatch, ...).
    State,
    /// A peer sent input the checkpoint protocol cannot accept.
    Protocol,
    /// A payload could not be encoded or decoded.
    Codec,
    /// A receive or a protocol phase did not complete in its time bound.
    Timeout,
    /// A peer left the job (dropped its communicator) before saying it was done.
    PeerGone,
    /// The checkpoint to restore was written by a different number of ranks.
    WorldMismatch,
    /// Every committed checkpoint is damaged and the session may not start fresh
    /// (`AsyncConfig::on_all_damaged`).
    AllDamaged,
    /// The program used the session in a way it does not support.
    Misuse,
    /// This rank's part of a checkpoint, written in the background, could not be written
    /// (a full disk, say): that checkpoint did not commit (this rank voted Failed, so the
    /// round aborted everywhere) and the previous one stays the restart point. Reported
    /// once, by the session call after the write ended; the session goes on (retryable).
    Flush,
}

/// An error of [`AsyncSession`](crate::AsyncSession): a kind, the rank it happened on, a
/// message naming the peer, file or field, and the underlying error if any.
#[derive(Debug, Error)]
#[error("{rank}: {detail}")]
pub struct SessionError {
    kind: SessionErrorKind,
    rank: Rank,
    detail: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl SessionError {
    pub(crate) fn new(kind: SessionErrorKind, rank: Rank, detail: impl Into<String>) -> Self {
        SessionError {
            kind,
            rank,
            detail: detail.into(),
            source: None,
        }
    }

    pub(crate) fn wrap<E: StdError + Send + Sync + 'static>(
        kind: SessionErrorKind,
        rank: Rank,
        context: &str,
        e: E,
    ) -> Self {
        SessionError {
            kind,
            rank,
            detail: format!("{context}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    pub(crate) fn protocol(rank: Rank, context: &str, e: ProtocolError) -> Self {
        Self::wrap(SessionErrorKind::Protocol, rank, context, e)
    }

    /// The cause, for callers that branch on it.
    pub fn kind(&self) -> SessionErrorKind {
        self.kind
    }

    /// The rank on which the error was raised.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// True when the session can go on: a receive that timed out (repeating it may
    /// succeed), or a background part write that failed (`Flush`: the next checkpoint
    /// may commit).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            SessionErrorKind::Timeout | SessionErrorKind::Flush
        )
    }

    /// True for a restore that no restart of the job can fix: the checkpoint has another
    /// world size, the state does not fit it, or every checkpoint is damaged. `open` tells
    /// a supervisor (marker `refused`), which then stops instead of restarting.
    pub fn is_restore_refusal(&self) -> bool {
        matches!(
            self.kind,
            SessionErrorKind::WorldMismatch
                | SessionErrorKind::State
                | SessionErrorKind::AllDamaged
        )
    }
}
