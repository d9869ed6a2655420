//! Errors of the pure codecs. Policy: a decoder never panics on any input; it returns a
//! `FormatError` whose kind says *what* is wrong (the caller adds *where*: file, rank, id).

use std::fmt;

/// What is wrong with some bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FormatErrorKind {
    /// The leading magic bytes are not the expected ones: not this kind of file at all.
    BadMagic,
    /// A major format version this reader does not know (written by a future Lazarus).
    VersionUnsupported,
    /// Fewer (or more) bytes than the header promises.
    Truncated,
    /// A checksum or content digest does not match: the bytes were altered.
    Checksum,
    /// Structurally invalid content (bad JSON, inconsistent lengths, unknown codec...).
    Invalid,
}

impl fmt::Display for FormatErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormatErrorKind::BadMagic => "bad magic",
            FormatErrorKind::VersionUnsupported => "unsupported format version",
            FormatErrorKind::Truncated => "truncated",
            FormatErrorKind::Checksum => "checksum mismatch",
            FormatErrorKind::Invalid => "invalid content",
        })
    }
}

/// A decoding error: a kind plus a human message naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {msg}")]
pub struct FormatError {
    /// What class of damage this is.
    pub kind: FormatErrorKind,
    /// Which field or value was wrong, for humans.
    pub msg: String,
}

impl FormatError {
    pub(crate) fn new(kind: FormatErrorKind, msg: impl Into<String>) -> Self {
        FormatError {
            kind,
            msg: msg.into(),
        }
    }
}
