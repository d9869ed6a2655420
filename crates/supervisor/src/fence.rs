//! Fencing the ranks of a job whose supervisor died.
//!
//! A supervisor killed with SIGKILL releases the repository's flock at once, but its ranks
//! run until they notice: at once on this machine (their control connection closes), at
//! most the failure timeout later on a host the death did not reach (its heartbeats stop,
//! `lazarus_net`'s launcher watch). A new supervisor that took the lock over at once could
//! run beside ranks still committing. So a stale lock (it names an owner nobody holds) is
//! taken over only after the failure timeout plus two heartbeat intervals, counted from
//! when it was found stale, which is after the old supervisor died.
//!
//! Decision: the new job waits with its own timeouts; a job resumed with a shorter failure
//! timeout than the dead one's should pass the same `--failure-timeout-ms`.

use lazarus_net::NetConfig;
use lazarus_store::{probe_lock, LockProbe};
use std::path::Path;
use std::time::Duration;

/// Waits, if the repository at `repo` has a stale lock, until the ranks of the dead job
/// that held it have certainly stopped. Returns how long it waited (zero when the lock
/// was free, held, or the repository does not exist yet: opening reports a held lock),
/// or `Err(signal)` when a forwarded signal (Ctrl-C, SIGTERM) ended the wait: the caller
/// then stops without taking the lock (taking it would erase the dead job's record, and
/// the next supervisor would not wait for its ranks).
pub(crate) fn wait_for_dead_jobs_ranks(
    repo: &Path,
    net: &NetConfig,
    progress: bool,
) -> Result<Duration, i32> {
    let owner = match probe_lock(repo) {
        Ok(LockProbe::Stale { owner }) => owner,
        Ok(LockProbe::Free | LockProbe::Held) => return Ok(Duration::ZERO),
        Err(e) => {
            // Opening the repository will report it properly.
            tracing::debug!("probing the lock of {}: {e}", repo.display());
            return Ok(Duration::ZERO);
        }
    };
    let wait = net.rank_outlives_launcher();
    if progress {
        crate::supervisor::progress(format_args!(
            "lazarus: the repository's lock names a job that died without releasing it \
             ({owner}); waiting {:.1} s for that job's ranks to stop before taking it over",
            wait.as_secs_f64()
        ));
    }
    // In slices: a Ctrl-C must not wait for the end of a failure timeout (minutes, for
    // some jobs).
    let end = std::time::Instant::now() + wait;
    loop {
        if let Some(sig) = lazarus_net::launch::take_interrupt() {
            return Err(sig);
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(wait);
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}
