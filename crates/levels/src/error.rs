//! The crate's one error type.

use lazarus_format::Rank;
use lazarus_net::NetError;
use lazarus_store::StoreError;

/// Why a level operation failed. Every variant names the rank, host or file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LevelError {
    /// A node-local repository could not be read or written.
    #[error("{level}: {source}")]
    Store {
        /// which level (`L1 node-local`, `L2 partner copy`)
        level: &'static str,
        /// the store's error (names the file)
        source: StoreError,
    },
    /// Talking to another rank failed.
    #[error("levels: {0}")]
    Net(#[from] NetError),
    /// Another rank failed its side of a level operation.
    #[error("levels: {rank}: {message}")]
    Peer {
        /// the failed rank
        rank: Rank,
        /// its error
        message: String,
    },
    /// A message from `rank` did not decode or did not fit the protocol.
    #[error("levels: bad message from {rank}: {detail}")]
    Protocol {
        /// the sender
        rank: Rank,
        /// what was wrong
        detail: String,
    },
    /// The parity codec refused its input or failed (names the member or shard).
    #[error("levels: parity: {0}")]
    Parity(String),
    /// The configuration cannot work (names the option).
    #[error("levels: {0}")]
    Config(String),
}

impl LevelError {
    /// True when a later checkpoint may succeed (a full or failing node-local disk, a
    /// peer's such failure); false for a dead peer or a protocol violation.
    pub fn is_retryable(&self) -> bool {
        match self {
            LevelError::Store { source, .. } => source.is_retryable(),
            LevelError::Peer { .. } => true,
            _ => false,
        }
    }

    /// A store error of this rank's L1 node-local repository.
    pub fn l1(source: StoreError) -> Self {
        LevelError::Store {
            level: "L1 node-local",
            source,
        }
    }

    pub(crate) fn l2(source: StoreError) -> Self {
        LevelError::Store {
            level: "L2 partner copy",
            source,
        }
    }
}
