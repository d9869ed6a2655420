//! The store's one public error type.
//!
//! Policy: every error carries a [`StoreErrorKind`] (what class of failure, and whether a
//! retry can help), the path of the file at fault when there is one, and a message that
//! names the checkpoint id and rank when they are known. Damage found in a repository is
//! never a panic: decoders return `Corrupt`/`Missing`/`VersionUnsupported`.

use lazarus_format::{FormatError, FormatErrorKind};
use std::fmt;
use std::path::{Path, PathBuf};

/// The class of a [`StoreError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// Bytes on disk are damaged: bad checksum, bad magic, invalid JSON, truncated file.
    Corrupt,
    /// A file that must exist does not (a chunk, a manifest, a pending checkpoint dir).
    Missing,
    /// The repository (or one of its files) was written by an unknown major format version.
    VersionUnsupported,
    /// Another live writer holds the repository lock.
    Locked,
    /// The disk (or the simulated write budget) is full.
    NoSpace,
    /// Any other I/O failure.
    Io,
    /// The caller broke a rule: missing/duplicate rank receipt, bad option, GC while a
    /// checkpoint is pending, `keep == 0`...
    InvalidArgument,
    /// `Repository::commit` renamed COMMIT into place (it is visible, readers treat the
    /// checkpoint as committed) but could not make it durable (the directory fsync failed),
    /// or an object store did not answer the COMMIT request in time and COMMIT is not
    /// there (yet): the checkpoint may or may not exist later. Never report such a round as
    /// aborted and never delete it; the repository after a restart is the truth.
    CommitUnknown,
    /// A conditional write lost: the object was created (or changed) by someone else first.
    /// COMMIT is written this way, so two writers can never both commit one checkpoint.
    Conflict,
    /// A remote store did not answer: connection refused or broken, no answer within the
    /// operation's time bound, or server errors after the bounded retries. Retrying later
    /// can help; a write that failed so may or may not have been applied.
    Unavailable,
}

impl StoreErrorKind {
    /// True when trying again later can succeed without anyone repairing the repository.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            StoreErrorKind::Locked
                | StoreErrorKind::NoSpace
                | StoreErrorKind::Io
                | StoreErrorKind::Unavailable
        )
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Missing => "missing",
            StoreErrorKind::VersionUnsupported => "unsupported version",
            StoreErrorKind::Locked => "locked",
            StoreErrorKind::NoSpace => "no space left",
            StoreErrorKind::Io => "I/O error",
            StoreErrorKind::InvalidArgument => "invalid argument",
            StoreErrorKind::CommitUnknown => "commit outcome unknown",
            StoreErrorKind::Conflict => "conflict",
            StoreErrorKind::Unavailable => "store unavailable",
        })
    }
}

/// The end of the message of a part writer whose checkpoint directory is gone
/// ([`StoreError::is_not_pending`]).
pub(crate) const NOT_PENDING: &str = "is not pending (no directory)";

/// An error of the checkpoint store: kind, file path when known, and a message.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    path: Option<PathBuf>,
    msg: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// A new error of `kind` about `path` (if any).
    pub fn new(kind: StoreErrorKind, path: Option<&Path>, msg: impl Into<String>) -> Self {
        StoreError {
            kind,
            path: path.map(Path::to_path_buf),
            msg: msg.into(),
            source: None,
        }
    }

    /// Wraps an I/O error about `path`; ENOSPC/EDQUOT become `NoSpace`, not-found `Missing`.
    pub fn io(path: &Path, what: &str, e: std::io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreErrorKind::NoSpace,
            _ if e.kind() == std::io::ErrorKind::NotFound => StoreErrorKind::Missing,
            _ => StoreErrorKind::Io,
        };
        StoreError {
            kind,
            path: Some(path.to_path_buf()),
            msg: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    /// Wraps a decoding error about `path`; `context` names the checkpoint/rank.
    pub fn format(path: &Path, context: &str, e: FormatError) -> Self {
        let kind = match e.kind {
            FormatErrorKind::VersionUnsupported => StoreErrorKind::VersionUnsupported,
            _ => StoreErrorKind::Corrupt,
        };
        let msg = if context.is_empty() {
            e.to_string()
        } else {
            format!("{context}: {e}")
        };
        StoreError {
            kind,
            path: Some(path.to_path_buf()),
            msg,
            source: None,
        }
    }

    /// The class of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// True when a part writer found its checkpoint no longer pending: the directory is
    /// gone, i.e. the coordinator already collected the (aborted) round. Nothing of this
    /// writer's was lost that the round's own outcome does not already say.
    pub fn is_not_pending(&self) -> bool {
        self.kind == StoreErrorKind::Missing && self.msg.ends_with(NOT_PENDING)
    }

    /// The file at fault, if one is known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The same error with `context: ` in front of its message (kind and path kept).
    pub fn context(self, context: &str) -> Self {
        StoreError {
            msg: format!("{context}: {}", self.msg),
            ..self
        }
    }

    /// The message without the kind and path.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Shorthand for `self.kind().is_retryable()`.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{} ({}): {}", self.kind, p.display(), self.msg),
            None => write!(f, "{}: {}", self.kind, self.msg),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
