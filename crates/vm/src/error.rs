//! The crate's one error type. Policy: every error names what it is about (the module file,
//! the checkpoint, the WASI call, the field); `kind` says what went wrong and whether
//! trying again can help. Module and checkpoint problems are never retried: retrying
//! cannot change the bytes.

use std::fmt;
use std::path::Path;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmErrorKind {
    /// The module uses something that cannot be checkpointed or is not WASI preview 1
    /// (threads, SIMD, non-WASI imports, no `_start`, ...). Refused at load time.
    Unsupported,
    /// The module is not valid WebAssembly.
    InvalidModule,
    /// A tool the instrumenter needs (`wasm-opt`) is missing or failed.
    Toolchain,
    /// The checkpoint belongs to another program, or was taken with other arguments,
    /// environment or directories than the command resuming it.
    Mismatch,
    /// A checkpoint (or its VM metadata) is damaged or inconsistent.
    Corrupt,
    /// The program trapped (a bug in the program, or a resource limit).
    Trap,
    /// Reading or writing a file or the repository failed.
    Io,
    /// A flag or option is invalid.
    InvalidArgument,
}

impl VmErrorKind {
    /// True when the same operation may succeed if simply tried again.
    pub fn is_retryable(self) -> bool {
        matches!(self, VmErrorKind::Io)
    }
}

impl fmt::Display for VmErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmErrorKind::Unsupported => "unsupported module",
            VmErrorKind::InvalidModule => "invalid module",
            VmErrorKind::Toolchain => "toolchain",
            VmErrorKind::Mismatch => "checkpoint mismatch",
            VmErrorKind::Corrupt => "damaged checkpoint",
            VmErrorKind::Trap => "trap",
            VmErrorKind::Io => "i/o",
            VmErrorKind::InvalidArgument => "invalid argument",
        })
    }
}

/// An error of the VM layer: a kind and a message that names the file, checkpoint or field.
#[derive(Debug, Clone)]
pub struct VmError {
    kind: VmErrorKind,
    msg: String,
}

impl VmError {
    /// A new error.
    pub fn new(kind: VmErrorKind, msg: impl Into<String>) -> VmError {
        VmError {
            kind,
            msg: msg.into(),
        }
    }

    /// An I/O error about `path`.
    pub fn io(path: &Path, what: &str, e: std::io::Error) -> VmError {
        VmError::new(VmErrorKind::Io, format!("{}: {what}: {e}", path.display()))
    }

    /// The kind.
    pub fn kind(&self) -> VmErrorKind {
        self.kind
    }

    /// The message (without the kind).
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// True when trying again may help.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The same error with `ctx: ` in front of its message.
    pub fn context(self, ctx: impl fmt::Display) -> VmError {
        VmError {
            kind: self.kind,
            msg: format!("{ctx}: {}", self.msg),
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.msg, self.kind)
    }
}

impl std::error::Error for VmError {}

impl From<lazarus_store::StoreError> for VmError {
    fn from(e: lazarus_store::StoreError) -> Self {
        use lazarus_store::StoreErrorKind as K;
        let kind = match e.kind() {
            K::Corrupt | K::Missing | K::VersionUnsupported => VmErrorKind::Corrupt,
            K::InvalidArgument => VmErrorKind::InvalidArgument,
            _ => VmErrorKind::Io,
        };
        VmError::new(kind, e.to_string())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

pub(crate) fn unsupported(msg: impl Into<String>) -> VmError {
    VmError::new(VmErrorKind::Unsupported, msg)
}

pub(crate) fn corrupt(msg: impl Into<String>) -> VmError {
    VmError::new(VmErrorKind::Corrupt, msg)
}
