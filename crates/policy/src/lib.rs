//! When to checkpoint. A [`Policy`] is asked at every checkpoint opportunity (the top of
//! the main loop) whether to take one now, and is told what each checkpoint cost.
//!
//! The three central types:
//! - [`Model`]: Young's, Daly's and the exact optimal checkpoint interval, and Daly's
//!   expected wall time for any interval.
//! - [`Adaptive`]: a [`Policy`] that measures the checkpoint cost as the job runs and
//!   follows a [`Formula`], with the MTBF configured or estimated from the
//!   [`FailureHistory`] a supervisor hands over in `LAZARUS_FAILURES`/`LAZARUS_JOB_START`.
//! - [`MultiLevel`]: per-level periods of a multi-level checkpoint schedule (nested
//!   Daly model; Young per level to first order), as a [`Plan`].
//! - [`PolicySpec`]: `steps:100`, `every:30s`, `daly,mtbf=6h`, `never` — one string
//!   selecting any policy.
//!
//! ```
//! use lazarus_policy::{Formula, Model};
//! // Daly's case: δ = 5 min, M = 24 h, R = 10 min.
//! let m = Model::new(300.0, 86_400.0, 600.0).unwrap();
//! assert!((m.interval(Formula::DalyHigherOrder) / 60.0 - 116.7).abs() < 0.1);
//! ```
//!
//! See docs/POLICY.md for the formulas, the derivation of the optimum and the hand-off
//! format.
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod adaptive;
mod duration;
mod error;
mod fixed;
mod history;
mod model;
mod multilevel;
mod spec;

pub use adaptive::{Adaptive, MtbfSource};
pub use duration::{format_seconds, parse_duration};
pub use error::{ErrorKind, PolicyError};
pub use fixed::{EveryInterval, EverySteps, Never};
pub use history::{FailureHistory, DEFAULT_PRIOR_MTBF_S};
pub use model::{lambert_w0, Formula, Model};
pub use multilevel::{Level, MultiLevel, Plan, DEFAULT_FACTORS, MAX_FACTOR, SEARCH_BUDGET};
pub use spec::{ModelSpec, PolicySpec};

use std::time::{Duration, Instant};

/// What a policy sees at a checkpoint opportunity.
#[derive(Clone, Copy, Debug)]
pub struct Opportunity {
    /// The application's step counter.
    pub step: u64,
    /// Monotonic time now.
    pub now: Instant,
}

/// Decides when to checkpoint. Implementations must be cheap: `should_checkpoint` runs at
/// every step of the user's loop.
pub trait Policy: Send {
    /// True when a checkpoint should be taken at this opportunity.
    fn should_checkpoint(&mut self, at: Opportunity) -> bool;
    /// Called after a checkpoint completed (committed) at `at`, having cost `cost`.
    fn checkpoint_taken(&mut self, at: Opportunity, cost: Duration);
    /// Called when a checkpoint written in the background (docs/ASYNC.md) has committed,
    /// `flush` after its capture returned: the background part of its cost. The stall the
    /// program paid was already reported to [`Policy::checkpoint_taken`]. Checkpoints
    /// cannot usefully be taken more often than a flush completes (the next one waits for
    /// it), so a policy may use it as a lower bound on its interval; the default ignores
    /// it.
    fn flush_completed(&mut self, flush: Duration) {
        let _ = flush;
    }
    /// Called when a checkpoint already reported to [`Policy::checkpoint_taken`] did not
    /// commit after all: its background flush (docs/ASYNC.md) failed, learnt at `at.now`
    /// (`at.step` is the failed checkpoint's step). A synchronous checkpoint that fails is
    /// never reported taken, so its policy fires again at the next opportunity; a policy
    /// that implements this hook guarantees the same after a failed background flush: its
    /// next [`Policy::should_checkpoint`] returns true (until a checkpoint is taken), rather
    /// than a whole interval after the checkpoint that was lost. The default ignores it,
    /// which is right for policies that depend on the step alone.
    fn checkpoint_failed(&mut self, at: Opportunity) {
        let _ = at;
    }
    /// True when the answer depends on `Opportunity::step` alone (not on time or on
    /// measured costs), so every rank of a job can ask its own copy and get the same answer
    /// without communicating. The default, `false`, is never wrong: the job then asks
    /// rank 0 and broadcasts its answer.
    fn is_step_only(&self) -> bool {
        false
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn should_checkpoint(&mut self, at: Opportunity) -> bool {
        (**self).should_checkpoint(at)
    }
    fn checkpoint_taken(&mut self, at: Opportunity, cost: Duration) {
        (**self).checkpoint_taken(at, cost)
    }
    fn flush_completed(&mut self, flush: Duration) {
        (**self).flush_completed(flush)
    }
    fn checkpoint_failed(&mut self, at: Opportunity) {
        (**self).checkpoint_failed(at)
    }
    fn is_step_only(&self) -> bool {
        (**self).is_step_only()
    }
}
