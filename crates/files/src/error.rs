//! The crate's error type: a kind, the file it concerns and a message.

use std::path::{Path, PathBuf};

/// What went wrong, to decide whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilesErrorKind {
    /// A managed file was changed, added or removed by someone other than the job since
    /// the checkpoint (size or digest differs from the one recorded): the restore refuses
    /// unless `accept_changes` is set.
    ForeignChange,
    /// The checkpoint's managed files cannot be used here (written by another number of
    /// ranks, or their index does not decode).
    Incompatible,
    /// A path is not a valid managed path (absolute, `..`, empty, outside the area).
    InvalidPath,
    /// The operation needs a restored job (`restore_or_init` not called yet).
    NotReady,
    /// The disk is full (ENOSPC/EDQUOT) while writing undo data, the journal or output.
    DiskFull,
    /// Any other I/O error.
    Io,
    /// A local journal or state file is damaged beyond its torn tail.
    Corrupt,
}

impl std::fmt::Display for FilesErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FilesErrorKind::ForeignChange => "changed outside the job",
            FilesErrorKind::Incompatible => "incompatible",
            FilesErrorKind::InvalidPath => "invalid path",
            FilesErrorKind::NotReady => "not ready",
            FilesErrorKind::DiskFull => "disk full",
            FilesErrorKind::Io => "I/O error",
            FilesErrorKind::Corrupt => "corrupt",
        })
    }
}

/// An error of the managed files, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
pub struct FilesError {
    kind: FilesErrorKind,
    path: Option<PathBuf>,
    message: String,
}

impl FilesError {
    /// An error of `kind` about `path` (if any).
    pub fn new(kind: FilesErrorKind, path: Option<&Path>, message: impl Into<String>) -> Self {
        FilesError {
            kind,
            path: path.map(Path::to_path_buf),
            message: message.into(),
        }
    }

    /// An I/O error while doing `what` on `path`; ENOSPC/EDQUOT become `DiskFull`.
    pub fn io(path: &Path, what: &str, e: &std::io::Error) -> Self {
        let kind = if is_disk_full(e) {
            FilesErrorKind::DiskFull
        } else {
            FilesErrorKind::Io
        };
        FilesError::new(kind, Some(path), format!("{what}: {e}"))
    }

    /// The kind.
    pub fn kind(&self) -> FilesErrorKind {
        self.kind
    }

    /// The file concerned, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The message without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when trying again later may succeed without repairing anything (a full disk,
    /// a transient I/O error).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, FilesErrorKind::DiskFull | FilesErrorKind::Io)
    }
}

impl From<FilesError> for std::io::Error {
    fn from(e: FilesError) -> std::io::Error {
        let kind = match e.kind {
            FilesErrorKind::DiskFull => std::io::ErrorKind::StorageFull,
            FilesErrorKind::InvalidPath => std::io::ErrorKind::InvalidInput,
            FilesErrorKind::NotReady => std::io::ErrorKind::Other,
            FilesErrorKind::Corrupt => std::io::ErrorKind::InvalidData,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// ENOSPC or EDQUOT.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}
