//! Log output of a Lazarus program: one place that decides how `tracing` events reach
//! stderr, for the `lazarus` command and for programs (feature `logging`, on by default).
//!
//! Colour: escape codes only when stderr is a terminal and `NO_COLOR` is not set to a
//! non-empty value (<https://no-color.org>). Ranks under `lazarus run` write into a pipe,
//! so their lines reach logs and files without escape codes.

use std::io::IsTerminal;

/// True when log lines on stderr may carry colour escape codes: stderr is a terminal and
/// `NO_COLOR` is unset or empty.
pub fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Sends the library's `tracing` events (damaged checkpoints skipped, aborted rounds,
/// retention failures, ...) to stderr, one line each, without timestamps, coloured only
/// as [`colour_on_stderr`] allows. The filter is `RUST_LOG` when set (`tracing`'s
/// `EnvFilter` syntax), else `default` (e.g. `"warn"`, `"info"`, `"lazarus=debug"`).
/// Returns false, changing nothing, when the program already installed a subscriber.
pub fn init_logging(default: &str) -> bool {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false)
        .without_time()
        // Its own report of a failed write is an `eprintln!`, which panics when stderr
        // itself failed (issue #11 item 10): a lost log line must not kill the program.
        .log_internal_errors(false)
        .try_init()
        .is_ok()
}
