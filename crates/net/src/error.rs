//! The one public error type of the runtime.
//!
//! Policy: every error has a [`ErrorKind`] a caller can branch on, names the peer rank or
//! address it concerns when there is one, and says whether retrying can help. Nothing the
//! network or a peer controls may panic; it becomes one of these.

use lazarus_format::Rank;
use std::fmt;

/// What went wrong, coarsely enough to branch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A peer died: closed connection not re-established in time, or missed heartbeats.
    PeerFailed,
    /// A peer finished (its communicator was dropped) and will send nothing more.
    PeerFinished,
    /// A bounded wait ran out (rendezvous, connect, an explicit `*_timeout` call).
    Timeout,
    /// A peer could not prove it knows the job token, or belongs to another job.
    Auth,
    /// Bytes that do not follow the wire protocol (bad frame, wrong length, bad header).
    Protocol,
    /// A value could not be encoded or decoded (postcard, slice length).
    Codec,
    /// An operating-system I/O error.
    Io,
    /// Configuration or environment is invalid.
    Config,
    /// The caller passed an invalid argument (rank out of range, wrong buffer length).
    InvalidArgument,
    /// The launcher could not start or supervise ranks.
    Launch,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::PeerFailed => "peer failed",
            ErrorKind::PeerFinished => "peer finished",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Codec => "codec error",
            ErrorKind::Io => "i/o error",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Launch => "launch error",
        };
        f.write_str(s)
    }
}

/// A runtime error: a kind, the peer it concerns (if any), and a human-readable detail.
#[derive(Debug, thiserror::Error)]
pub struct NetError {
    kind: ErrorKind,
    peer: Option<Rank>,
    detail: String,
    #[source]
    source: Option<std::io::Error>,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(r) => write!(f, "{} ({r}): {}", self.kind, self.detail),
            None => write!(f, "{}: {}", self.kind, self.detail),
        }
    }
}

impl NetError {
    /// A new error of `kind` with a detail message.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        NetError {
            kind,
            peer: None,
            detail: detail.into(),
            source: None,
        }
    }

    /// The same error, naming the peer it concerns.
    pub fn with_peer(mut self, peer: Rank) -> Self {
        self.peer = Some(peer);
        self
    }

    /// The same error with `ctx` (what was being done, with whom) in front of its detail.
    pub(crate) fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.detail = format!("{ctx}: {}", self.detail);
        self
    }

    /// An I/O error with context.
    pub fn io(detail: impl Into<String>, source: std::io::Error) -> Self {
        NetError {
            kind: ErrorKind::Io,
            peer: None,
            detail: detail.into(),
            source: Some(source),
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The peer rank this error concerns, if any.
    pub fn peer(&self) -> Option<Rank> {
        self.peer
    }

    /// Whether retrying the same operation may succeed (timeouts and transient I/O).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::Io)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
