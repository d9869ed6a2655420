//! Log output of a Lazarus program: one place that decides how `tracing` events reach
//! stderr, for the `lazarus` command and for programs (feature `logging`, on by default).
//!
//! Colour: escape codes only when stderr is a terminal and `NO_COLOR` is not set to a
//! non-empty value (<https://no-color.org>). Ranks under `lazarus run` write into a pipe,
//! so their lines reach logs and files without escape codes.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Log lines held back by [`hold_log_lines`] (`None`: written at once).
static HELD: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Beyond this many held bytes, lines are written at once: holding must never grow
/// without bound, and a very chatty start is better torn than lost.
const HOLD_LIMIT: usize = 1 << 20;

fn held() -> MutexGuard<'static, Option<Vec<u8>>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds the log lines [`init_logging`] writes to stderr until [`release_log_lines`]
/// (up to 1 MiB; beyond it they are written at once). For a process whose stderr is not
/// yet where it should write: `lazarus vm run` resuming a program whose stderr is a file
/// puts it back at the program's offset first, and a line written before that lands at
/// whatever offset the file was opened with, over the program's own output.
pub fn hold_log_lines() {
    held().get_or_insert_with(Vec::new);
}

/// Writes the lines held since [`hold_log_lines`] to stderr and stops holding. Without
/// a hold, does nothing.
pub fn release_log_lines() {
    let lines = held().take();
    if let Some(lines) = lines {
        // Best effort, as every log line: a failed stderr must not fail the program.
        let _ = std::io::stderr().lock().write_all(&lines);
    }
}

/// Stderr for log lines, through the hold of [`hold_log_lines`].
struct LogStderr;

impl Write for LogStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        {
            let mut g = held();
            if let Some(h) = g.as_mut().filter(|h| h.len() + buf.len() <= HOLD_LIMIT) {
                h.extend_from_slice(buf);
                return Ok(buf.len());
            }
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

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
/// Lines can be held back for a while ([`hold_log_lines`]). Returns false, changing
/// nothing, when the program already installed a subscriber.
pub fn init_logging(default: &str) -> bool {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogStderr)
        .with_ansi(colour_on_stderr())
        .with_target(false)
        .without_time()
        // Its own report of a failed write is an `eprintln!`, which panics when stderr
        // itself failed (issue #11 item 10): a lost log line must not kill the program.
        .log_internal_errors(false)
        .try_init()
        .is_ok()
}
