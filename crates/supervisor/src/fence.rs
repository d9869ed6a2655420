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
/// was free, held, or the repository does not exist yet: opening reports a held lock).
pub(crate) fn wait_for_dead_jobs_ranks(repo: &Path, net: &NetConfig, progress: bool) -> Duration {
    let owner = match probe_lock(repo) {
        Ok(LockProbe::Stale { owner }) => owner,
        Ok(LockProbe::Free | LockProbe::Held) => return Duration::ZERO,
        Err(e) => {
            // Opening the repository will report it properly.
            tracing::debug!("probing the lock of {}: {e}", repo.display());
            return Duration::ZERO;
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
    std::thread::sleep(wait);
    wait
}
