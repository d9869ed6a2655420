//! What a supervised job did: its failures, the work each one cost, how it ended.

use lazarus_format::{CheckpointId, Rank};
use lazarus_net::launch::RankFailure;
use std::fmt;
use std::time::Duration;

/// The checkpoint a restart resumed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestorePoint {
    /// Checkpoint id.
    pub id: CheckpointId,
    /// Its step.
    pub step: u64,
    /// Its commit time, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// Written by `Job::finish`: the job had completed there, so a restart only restores
    /// its final state and loses no work (`lazarus_coord::meta::FINISHED_KEY`).
    pub finished: bool,
}

/// One failure and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureReport {
    /// The incarnation that failed (0 = first run).
    pub incarnation: u64,
    /// The first failing rank and how it failed.
    pub failure: RankFailure,
    /// True when the plan's fault injection caused it: a planned SIGKILL fired, or the
    /// failing rank was armed with a failpoint (`--inject-failpoint`) and was killed.
    pub injected: bool,
    /// When it was detected (or injected), ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// The newest intact committed checkpoint at that time (`None`: restart from scratch).
    pub restored: Option<RestorePoint>,
    /// Highest step a checkpoint marker of the failed incarnation reported (a lower bound
    /// of the step reached; `None` without markers).
    pub last_step: Option<u64>,
    /// Wall time since the restored checkpoint was committed (or since the incarnation
    /// started, whichever is later): the computation lost.
    pub lost_time: Duration,
    /// Stdout lines printed after the restore point and withheld (they are printed again).
    pub dropped_lines: usize,
    /// From the failure to every rank of the next incarnation reporting `resumed`
    /// (`None` if not restarted or the program emits no `resumed` markers).
    pub recovery_time: Option<Duration>,
    /// From the failure to the next incarnation's ranks being spawned.
    pub restart_latency: Option<Duration>,
    /// The host of the failing rank (multi-host engines; `localhost` for the local one).
    pub host: Option<String>,
    /// Hosts found gone with this failure (not only a dead process).
    pub lost_hosts: Vec<String>,
    /// The ranks keep fast checkpoint levels the supervisor does not see:
    /// `restored` and `lost_time` are then bounds, not the restart point.
    pub fast_levels: bool,
}

impl FailureReport {
    /// Steps lost (last step known from markers minus restored step), if known.
    pub fn lost_steps(&self) -> Option<u64> {
        let from = self.restored.map_or(0, |r| r.step);
        self.last_step.map(|s| s.saturating_sub(from))
    }
}

impl fmt::Display for FailureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incarnation {}: {}", self.incarnation, self.failure)?;
        if let Some(h) = self.host.as_deref().filter(|h| *h != "localhost") {
            write!(f, " on host {h}")?;
        }
        if self.injected {
            write!(f, " (injected)")?;
        }
        if !self.lost_hosts.is_empty() {
            write!(f, "; host(s) gone: {}", self.lost_hosts.join(", "))?;
        }
        match self.restored {
            Some(r) if r.finished => {
                return write!(
                    f,
                    "; the job had finished (checkpoint {} at step {}): the restart only \
                     restores its final state, no work is lost",
                    r.id.0, r.step
                )
            }
            Some(r) if self.fast_levels => write!(
                f,
                "; newest durable checkpoint {} at step {} (a fast level may hold a newer one)",
                r.id.0, r.step
            )?,
            Some(r) => write!(
                f,
                "; newest committed checkpoint {} at step {}",
                r.id.0, r.step
            )?,
            None if self.fast_levels => write!(
                f,
                "; no durable checkpoint yet (the ranks restore from the fastest level that holds one)"
            )?,
            None => write!(f, "; no committed checkpoint yet, restarting from scratch")?,
        }
        let at_most = if self.fast_levels { "at most " } else { "" };
        write!(
            f,
            "; lost {at_most}{:.2} s of work",
            self.lost_time.as_secs_f64()
        )?;
        if let (Some(s), Some(l)) = (self.last_step, self.lost_steps()) {
            write!(
                f,
                " (reached at least step {s}: {} to redo)",
                lazarus_format::count(l, "step")
            )?;
        }
        Ok(())
    }
}

/// Exit status of `lazarus run --repo` when the ranks report a restore that no restart can
/// fix ([`Refusal::Restore`]; 65 is `EX_DATAERR` of sysexits.h: the data cannot be used).
pub const EXIT_RESTORE_REFUSED: i32 = 65;
/// Exit status of `lazarus run --repo` when a rank opened another repository than the
/// supervisor's ([`Refusal::RepoMismatch`]; 78 is `EX_CONFIG` of sysexits.h).
pub const EXIT_REPO_MISMATCH: i32 = 78;

/// Why the supervisor stopped the job instead of restarting it: what no restart can change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A rank reported (marker `refused`) that its restore failed in a way no restart can
    /// fix: a checkpoint that cannot be restored on this number of ranks, a schema
    /// mismatch, every checkpoint damaged.
    Restore {
        /// the first rank that said so
        rank: Rank,
        /// its error, naming the checkpoint and why
        message: String,
    },
    /// A rank opened another repository than the supervisor's `--repo` (marker `repo`).
    RepoMismatch {
        /// the rank
        rank: Rank,
        /// the supervisor's repository, normalized
        supervisor: String,
        /// the rank's repository, normalized
        rank_repo: String,
    },
}

impl Refusal {
    /// The process exit status for the CLI ([`EXIT_RESTORE_REFUSED`] or
    /// [`EXIT_REPO_MISMATCH`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Refusal::Restore { .. } => EXIT_RESTORE_REFUSED,
            Refusal::RepoMismatch { .. } => EXIT_REPO_MISMATCH,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Restore { rank, message } => write!(
                f,
                "not restarting: {rank} cannot restore, and a restart would fail the same \
                 way: {message}"
            ),
            Refusal::RepoMismatch {
                rank,
                supervisor,
                rank_repo,
            } => write!(
                f,
                "stopped the job: {rank} opened the repository {rank_repo}, but this \
                 supervisor manages {supervisor} (--repo); give the program the same \
                 repository, or none (it then uses LAZARUS_REPO)"
            ),
        }
    }
}

/// How the job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// Every rank exited 0.
    Completed,
    /// The restart budget was spent; the last failure is in `failures`.
    GaveUp {
        /// the budget
        max_restarts: u32,
    },
    /// A signal (SIGINT/SIGTERM/SIGHUP) stopped the job.
    Interrupted(i32),
    /// Stopped without restarting: restarting cannot help.
    Refused(Refusal),
}

/// A stdout line released to the user (when capturing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    /// Which rank printed it.
    pub rank: Rank,
    /// The line, without its newline (lossy UTF-8).
    pub text: String,
}

/// The result of [`crate::Supervisor::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// How it ended.
    pub end: JobEnd,
    /// Every failure, in order.
    pub failures: Vec<FailureReport>,
    /// Number of launches (1 + restarts).
    pub launches: u64,
    /// Commit markers seen (checkpoints committed while supervised).
    pub commits: u64,
    /// Wall time of the whole job.
    pub elapsed: Duration,
    /// Released stdout lines, when `SupervisorConfig::capture_output` is set.
    pub output: Vec<OutputLine>,
    /// Exit status of the last launch (the failing rank's status when giving up).
    pub last_exit_code: i32,
    /// Number of ranks of the last launch (smaller than the configured number after a
    /// shrink, see `SupervisorConfig::shrink`).
    pub ranks: u32,
    /// Hosts used, lost and excluded (multi-host engines).
    pub hosts: Option<crate::hosts::HostsReport>,
}

impl Report {
    /// True when the job completed.
    pub fn success(&self) -> bool {
        self.end == JobEnd::Completed
    }

    /// The process exit status for the CLI: 0 on completion, 128+signal when interrupted,
    /// the refusal's own status ([`Refusal::exit_code`]) when refused, otherwise the last
    /// failure's status (never 0).
    pub fn exit_code(&self) -> i32 {
        match &self.end {
            JobEnd::Completed => 0,
            JobEnd::Interrupted(s) => 128 + s,
            JobEnd::Refused(r) => r.exit_code(),
            // Never 0 (nor anything a shell would read as 0 once clamped to 0..=255).
            JobEnd::GaveUp { .. } if (1..=255).contains(&self.last_exit_code) => {
                self.last_exit_code
            }
            JobEnd::GaveUp { .. } => 1,
        }
    }

    /// The message explaining a give-up: the budget, and the rank and cause of the last failure.
    pub fn give_up_message(&self) -> Option<String> {
        let JobEnd::GaveUp { max_restarts } = self.end else {
            return None;
        };
        let last = self.failures.last()?;
        Some(format!(
            "giving up after {max_restarts} restart(s): the last failure was {} in incarnation {}",
            last.failure, last.incarnation
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_net::launch::FailureKind;

    fn report(restored: Option<RestorePoint>, fast_levels: bool) -> String {
        FailureReport {
            incarnation: 0,
            failure: RankFailure {
                rank: Rank(1),
                kind: FailureKind::Signaled(9),
            },
            injected: false,
            at_unix_ms: 0,
            restored,
            last_step: None,
            lost_time: Duration::from_secs(2),
            dropped_lines: 0,
            recovery_time: None,
            restart_latency: None,
            host: None,
            lost_hosts: Vec::new(),
            fast_levels,
        }
        .to_string()
    }

    #[test]
    fn with_fast_levels_the_durable_checkpoint_is_a_bound_not_the_restart_point() {
        let point = RestorePoint {
            id: CheckpointId(3),
            step: 30,
            time_unix_ms: 0,
            finished: false,
        };
        let plain = report(None, false);
        assert!(plain.contains("no committed checkpoint yet, restarting from scratch"));
        let fast = report(None, true);
        assert!(!fast.contains("from scratch"), "{fast}");
        assert!(fast.contains("no durable checkpoint yet"), "{fast}");
        assert!(fast.contains("lost at most 2.00 s"), "{fast}");
        let fast = report(Some(point), true);
        assert!(
            fast.contains(
                "newest durable checkpoint 3 at step 30 (a fast level may hold a newer one)"
            ),
            "{fast}"
        );
        assert!(report(Some(point), false)
            .contains("newest committed checkpoint 3 at step 30; lost 2.00 s"));
    }

    /// Regression (review): a give-up whose last exit code was outside 1..=255 (from a
    /// garbled launcher record) reported it as it was; `lazarus run` clamps to 0..=255, so
    /// a negative one made the job that gave up exit 0. The launcher's own code is checked
    /// the same way.
    #[test]
    fn a_give_up_with_an_impossible_exit_code_exited_zero() {
        let failure = RankFailure {
            rank: Rank(1),
            kind: FailureKind::Exited(-5),
        };
        let outcome = lazarus_net::launch::JobOutcome {
            failure: Some(failure),
            interrupted: None,
            statuses: Vec::new(),
            elapsed: Duration::ZERO,
            hosts: Vec::new(),
            lost_hosts: Vec::new(),
            failed_at: None,
        };
        assert_eq!(outcome.exit_code(), 1);
        let r = Report {
            end: JobEnd::GaveUp { max_restarts: 1 },
            failures: Vec::new(),
            launches: 2,
            commits: 0,
            elapsed: Duration::ZERO,
            output: Vec::new(),
            last_exit_code: -5,
            ranks: 2,
            hosts: None,
        };
        assert_eq!(r.exit_code(), 1);
    }
}
