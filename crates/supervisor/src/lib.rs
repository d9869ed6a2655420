//! Automatic recovery for Lazarus jobs: `lazarus run -n N --repo DIR --max-restarts K`.
//!
//! Three central types:
//! - [`SupervisorConfig`]: the job to launch, its repository, the restart budget and an
//!   optional seeded [`KillPlan`] (fault injection for tests, the demo and experiments).
//! - [`Supervisor`]: holds the repository lock for the whole job, launches the ranks,
//!   and after a failure stops everyone and restarts all ranks from the newest committed
//!   checkpoint, until the job completes or the budget is spent. With [`Shrink`], it
//!   restarts on one rank fewer after each failure (down to a minimum), the job's state
//!   being redistributed on restore.
//! - [`Report`]: every failure with the work it lost and the recovery time, and how the
//!   job ended — including [`JobEnd::Refused`] when a rank reports what no restart can fix
//!   (a restore refused, another repository opened): the supervisor then stops at once
//!   with its own exit status instead of spending the restart budget.
//! - [`HostPool`]: under a multi-host engine (`mpirun`, `srun`, `ssh`), which hosts run
//!   ranks; a lost host is replaced by a spare, or the job shrinks by its ranks; a host lost
//!   twice is excluded ([`HostsReport`] says which were used, lost, excluded).
//!
//! Output commit ([`OutputCommit`]): each rank's stdout is held back until a committed
//! checkpoint follows it, so re-executed work neither loses nor repeats output. Ranks
//! learn everything from the environment (`LAZARUS_REPO`, `LAZARUS_JOB_TOKEN`,
//! `LAZARUS_INCARNATION`, `LAZARUS_JOB_START`, `LAZARUS_FAILURES`,
//! a marker key in `LAZARUS_OUTPUT_MARKERS`). See docs/RECOVERY.md.
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod fence;
mod hosts;
mod output;
mod plan;
mod report;
mod shrink;
mod supervisor;

pub use hosts::{HostPool, HostState, HostsReport, Replacement};
/// Re-exported: ranks and the supervisor compare repository locations with it.
pub use lazarus_store::repo_location;
pub use output::{marker_key, split_at_marker, Marker, OutputCommit, MARKER_PREFIX};
pub use plan::{FailpointKill, KillPlan, KillTrigger, PlannedKill};
pub use report::{
    FailureReport, JobEnd, OutputLine, Refusal, Report, RestorePoint, EXIT_REPO_MISMATCH,
    EXIT_RESTORE_REFUSED,
};
pub use shrink::Shrink;
pub use supervisor::{Supervisor, SupervisorConfig, SupervisorError, OUTPUT_MARKERS_ENV, REPO_ENV};
