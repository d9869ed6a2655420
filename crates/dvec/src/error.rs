//! Errors of the data-parallel layer.
//!
//! Policy: one public [`DistError`] carrying a [`DistErrorKind`] (what class of failure, and
//! hence whether retrying can help) and a message that names the rank, field or range at
//! fault. Bad input (a checkpoint part with a hole, a weight that is NaN, a peer sending the
//! wrong length) is always an error, never a panic.

use std::fmt;

/// The class of a [`DistError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DistErrorKind {
    /// An argument is out of its documented domain (zero ranks, NaN weight, bad index).
    InvalidArgument,
    /// Checkpointed parts do not form a valid distributed array (gap, overlap, dtype,
    /// length), or state that is not redistributable was asked to change world size.
    BadCheckpoint,
    /// A peer sent something that does not match the protocol (wrong length, wrong tag).
    Protocol,
    /// The communicator failed (peer died, timeout); retrying after recovery may help.
    Comm,
    /// A migration failed after rows had moved (on this rank or another): the vector no
    /// longer holds what its range says, so every later operation on it and every save
    /// of it is refused; restore it from a checkpoint. Not retryable.
    Unusable,
}

/// An error of the data-parallel layer; `kind()` classifies it, `Display` names the culprit.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct DistError {
    kind: DistErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl DistError {
    /// Builds an error of `kind` with a message naming what is at fault.
    pub fn new(kind: DistErrorKind, message: impl Into<String>) -> Self {
        DistError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Builds an error of `kind` wrapping a lower-level cause.
    pub fn with_source(
        kind: DistErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DistError {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> DistErrorKind {
        self.kind
    }

    /// What is at fault, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when retrying (after the job recovered) may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == DistErrorKind::Comm
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(DistErrorKind::InvalidArgument, message)
    }

    pub(crate) fn bad_checkpoint(message: impl Into<String>) -> Self {
        Self::new(DistErrorKind::BadCheckpoint, message)
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(DistErrorKind::Protocol, message)
    }
}

impl fmt::Display for DistErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DistErrorKind::InvalidArgument => "invalid argument",
            DistErrorKind::BadCheckpoint => "bad checkpoint",
            DistErrorKind::Protocol => "protocol error",
            DistErrorKind::Comm => "communication error",
            DistErrorKind::Unusable => "unusable vector",
        })
    }
}

/// Result alias of this crate.
pub type Result<T, E = DistError> = std::result::Result<T, E>;
