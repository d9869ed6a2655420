//! The crate's one error type. Policy: every error names the parameter, flag, environment
//! variable or spec it came from and shows the offending input, so a user can fix it
//! without reading code. Nothing here is retryable: all errors are bad input.

/// What went wrong, without the details; stable for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A model parameter was out of its domain (negative, zero, NaN, infinite).
    InvalidParameter,
    /// A duration string could not be parsed.
    InvalidDuration,
    /// `LAZARUS_FAILURES` / `LAZARUS_JOB_START` were malformed or inconsistent.
    InvalidEnvironment,
    /// A policy spec string (`daly,mtbf=6h`) was malformed.
    InvalidSpec,
}

/// An error from the policy crate. Messages name the parameter, flag or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A numeric model parameter was outside its domain.
    #[error("{name} must be {expected}, got {value}")]
    Parameter {
        /// The parameter's name (`cost`, `mtbf`, ...).
        name: &'static str,
        /// What the domain is, in words.
        expected: &'static str,
        /// The rejected value (seconds for durations).
        value: f64,
    },
    /// A duration string was malformed.
    #[error("{flag}: cannot parse duration {input:?}: {reason} (expected e.g. 90s, 5m, 1.5h, 2d, 250ms)")]
    Duration {
        /// The flag or key the string came from (`--cost`, `mtbf`).
        flag: String,
        /// The string as given.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The failure-history environment variables were malformed.
    #[error("{var}: {reason} (value {input:?})")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// The variable's value (or the offending item of it).
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A policy spec string was malformed.
    #[error("policy spec {input:?}: {reason}")]
    Spec {
        /// The spec as given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl PolicyError {
    /// The error's kind, for matching without depending on message text.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PolicyError::Parameter { .. } => ErrorKind::InvalidParameter,
            PolicyError::Duration { .. } => ErrorKind::InvalidDuration,
            PolicyError::Env { .. } => ErrorKind::InvalidEnvironment,
            PolicyError::Spec { .. } => ErrorKind::InvalidSpec,
        }
    }
}
