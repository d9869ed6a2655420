//! The adaptive policy: measures the checkpoint cost as the job runs, takes the MTBF from
//! configuration or the failure history, and checkpoints when the time since the last
//! checkpoint reaches the model's interval.

use crate::history::{FailureHistory, DEFAULT_PRIOR_MTBF_S};
use crate::model::{Formula, Model};
use crate::{Opportunity, Policy};
use std::time::{Duration, Instant};

/// Where the adaptive policy's mean time between failures comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum MtbfSource {
    /// A configured constant.
    Fixed(Duration),
    /// Estimated from the supervisor's failure history (see [`FailureHistory::mtbf_estimate`]);
    /// without a history (first launch, no supervisor) the prior alone is used.
    Estimated {
        /// The history handed over by the supervisor, if any.
        history: Option<FailureHistory>,
        /// The prior MTBF `M₀`.
        prior: Duration,
        /// The prior's weight `w` in pseudo-failures (1 is a weak prior).
        prior_weight: f64,
    },
}

impl MtbfSource {
    /// Estimated from `history` with the default prior: one day, weight 1.
    pub fn from_history(history: Option<FailureHistory>) -> MtbfSource {
        MtbfSource::Estimated {
            history,
            prior: Duration::from_secs_f64(DEFAULT_PRIOR_MTBF_S),
            prior_weight: 1.0,
        }
    }

    /// The MTBF in seconds, `elapsed` after this process started observing.
    fn seconds(&self, elapsed: Duration) -> f64 {
        match self {
            MtbfSource::Fixed(d) => d.as_secs_f64(),
            MtbfSource::Estimated {
                history: Some(h),
                prior,
                prior_weight,
            } => h.mtbf_estimate(*prior, *prior_weight, elapsed),
            MtbfSource::Estimated { prior, .. } => prior.as_secs_f64(),
        }
    }
}

/// The smallest cost the model is given: a measured zero would make every interval zero.
const MIN_COST_S: f64 = 1e-6;
/// The smallest EWMA weight of a new cost sample (a smaller one would ignore a changed
/// cost for hundreds of checkpoints).
pub const MIN_SMOOTHING: f64 = 0.01;
/// The smallest MTBF the model is given, so a degenerate configuration cannot divide by 0.
const MIN_MTBF_S: f64 = 1e-3;

/// Checkpoints by a model ([`Formula`]) from a measured cost and an MTBF.
///
/// - Cost `δ`: an exponentially weighted moving average of the costs reported to
///   `checkpoint_taken` (the first measurement is taken as is, replacing any
///   `initial_cost`). Until a cost is known (no
///   `initial_cost` and no checkpoint yet), it takes one *probe* checkpoint as soon as
///   `min_interval` has passed, at the earliest at the second opportunity.
/// - Interval: `formula`'s interval for the current `δ`, `M`, `R`, clamped to
///   `[min_interval, max_interval]`, recomputed after every checkpoint (cheap at each step).
/// - Flush time: with asynchronous checkpoints the cost is the stall the program paid,
///   and the background flush time (reported to [`Policy::flush_completed`], smoothed like
///   the cost) is a lower bound on the interval: a checkpoint taken sooner would only wait
///   for the previous flush. The bound applies before `max_interval`, which stays an
///   upper bound the user chose.
/// - Clock: the interval counts from the end of the last checkpoint (the model's `τ` is
///   work between checkpoints), or from the first opportunity seen.
/// - A failed background flush ([`Policy::checkpoint_failed`]): the next opportunity takes
///   a checkpoint, as after a failed synchronous one. The stall it cost stays in `δ` (the
///   program paid it).
#[derive(Clone, Debug)]
pub struct Adaptive {
    formula: Formula,
    mtbf: MtbfSource,
    restart: Duration,
    smoothing: f64,
    min_interval: Duration,
    max_interval: Option<Duration>,
    cost: Option<f64>,
    measured: bool,
    flush: Option<f64>,
    started: Option<Instant>,
    last: Option<Instant>,
    interval: Option<Duration>,
    /// A checkpoint reported taken did not commit: the next opportunity takes one.
    retry: bool,
}

impl Adaptive {
    /// A policy using `formula` with MTBF from `mtbf`; restart time 0, smoothing 0.3, no
    /// initial cost, no interval bounds.
    pub fn new(formula: Formula, mtbf: MtbfSource) -> Adaptive {
        Adaptive {
            formula,
            mtbf,
            restart: Duration::ZERO,
            smoothing: 0.3,
            min_interval: Duration::ZERO,
            max_interval: None,
            cost: None,
            measured: false,
            flush: None,
            started: None,
            last: None,
            interval: None,
            retry: false,
        }
    }

    /// Sets the restart time `R` (only Daly's first-order formula depends on it).
    pub fn restart(mut self, r: Duration) -> Adaptive {
        self.restart = r;
        self.interval = None;
        self
    }

    /// Starts with this cost estimate instead of taking a probe checkpoint.
    pub fn initial_cost(mut self, cost: Duration) -> Adaptive {
        self.cost = Some(cost.as_secs_f64());
        self.interval = None;
        self
    }

    /// The EWMA weight of each new cost sample, clamped to `[MIN_SMOOTHING, 1]` (1: latest
    /// only); a policy spec refuses a value outside instead. NaN keeps the default.
    pub fn smoothing(mut self, alpha: f64) -> Adaptive {
        if !alpha.is_nan() {
            self.smoothing = alpha.clamp(MIN_SMOOTHING, 1.0);
        }
        self
    }

    /// Never checkpoint more often than this.
    pub fn min_interval(mut self, d: Duration) -> Adaptive {
        self.min_interval = d;
        self.interval = None;
        self
    }

    /// Never wait longer than this between checkpoints.
    pub fn max_interval(mut self, d: Duration) -> Adaptive {
        self.max_interval = Some(d);
        self.interval = None;
        self
    }

    /// Updates the restart time from a measurement (e.g. the restore just done).
    pub fn restart_measured(&mut self, r: Duration) {
        self.restart = r;
        self.interval = None;
    }

    /// The formula in use.
    pub fn formula(&self) -> Formula {
        self.formula
    }

    /// The current cost estimate `δ`, once known.
    pub fn cost_estimate(&self) -> Option<Duration> {
        self.cost.and_then(|c| Duration::try_from_secs_f64(c).ok())
    }

    /// The smoothed background flush time, once a flush was reported.
    pub fn flush_estimate(&self) -> Option<Duration> {
        self.flush.map(secs)
    }

    /// The MTBF the model would use at `now` (exposure grows with time since the first
    /// opportunity).
    pub fn mtbf_estimate(&self, now: Instant) -> Duration {
        let elapsed = self
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        secs(self.mtbf.seconds(elapsed).max(MIN_MTBF_S))
    }

    /// The interval the policy currently waits between checkpoints; `None` until a cost
    /// is known.
    pub fn current_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn recompute(&mut self, now: Instant) {
        self.interval = self.cost.map(|cost| {
            let mtbf = self.mtbf_estimate(now).as_secs_f64();
            let tau = Model::new(cost.max(MIN_COST_S), mtbf, self.restart.as_secs_f64())
                .map_or(mtbf, |m| m.interval(self.formula));
            // No sooner than a background flush completes (issue #16 item 5).
            let tau = secs(tau.max(self.flush.unwrap_or(0.0))).max(self.min_interval);
            self.max_interval.map_or(tau, |max| tau.min(max))
        });
    }
}

/// Seconds to a duration, saturating (NaN and negatives become zero).
fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    }
}

impl Policy for Adaptive {
    fn should_checkpoint(&mut self, at: Opportunity) -> bool {
        let first = self.started.is_none();
        self.started.get_or_insert(at.now);
        let last = *self.last.get_or_insert(at.now);
        if self.retry {
            return true;
        }
        let elapsed = at.now.saturating_duration_since(last);
        if self.cost.is_none() {
            return !first && elapsed >= self.min_interval;
        }
        if self.interval.is_none() {
            self.recompute(at.now);
        }
        self.interval.is_some_and(|tau| elapsed >= tau)
    }

    fn checkpoint_taken(&mut self, at: Opportunity, cost: Duration) {
        self.started.get_or_insert(at.now);
        let sample = cost.as_secs_f64();
        self.cost = Some(match self.cost {
            // A configured initial cost is a guess: the first measurement replaces it.
            Some(old) if self.measured => old + self.smoothing * (sample - old),
            _ => sample,
        });
        self.measured = true;
        self.last = Some(at.now);
        self.retry = false;
        self.recompute(at.now);
    }

    fn checkpoint_failed(&mut self, _at: Opportunity) {
        self.retry = true;
    }

    fn flush_completed(&mut self, flush: Duration) {
        let sample = flush.as_secs_f64();
        self.flush = Some(match self.flush {
            Some(old) => old + self.smoothing * (sample - old),
            None => sample,
        });
        // Recomputed at the next opportunity (the MTBF estimate needs a `now`).
        self.interval = None;
    }
}
