//! Fixed-schedule policies: every N steps, every T of wall-clock time, never.

use crate::{Opportunity, Policy};
use std::time::{Duration, Instant};

/// Checkpoint every `n` steps (at steps that are multiples of `n`, never at step 0).
#[derive(Clone, Debug)]
pub struct EverySteps {
    n: u64,
}

impl EverySteps {
    /// Every `n` steps; `n == 0` is treated as 1.
    pub fn new(n: u64) -> Self {
        EverySteps { n: n.max(1) }
    }
}

impl Policy for EverySteps {
    fn should_checkpoint(&mut self, at: Opportunity) -> bool {
        at.step > 0 && at.step % self.n == 0
    }
    fn checkpoint_taken(&mut self, _at: Opportunity, _cost: Duration) {}
    fn is_step_only(&self) -> bool {
        true
    }
}

/// Never checkpoint on its own: `should_checkpoint` is always false. For benchmarks and
/// for runs that must not pay for checkpoints (the default policy checkpoints every 60 s);
/// explicit checkpoints (`Job::checkpoint_now`) are still taken, and a restart still
/// restores whatever checkpoint the repository holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Never;

impl Policy for Never {
    fn should_checkpoint(&mut self, _at: Opportunity) -> bool {
        false
    }
    fn checkpoint_taken(&mut self, _at: Opportunity, _cost: Duration) {}
    fn is_step_only(&self) -> bool {
        true
    }
}

/// Checkpoint when at least `interval` has passed since the last one (or since start).
/// After [`Policy::checkpoint_failed`] (a background flush failed), at the next
/// opportunity.
#[derive(Clone, Debug)]
pub struct EveryInterval {
    interval: Duration,
    last: Option<Instant>,
    /// A checkpoint reported taken did not commit: the next opportunity takes one.
    retry: bool,
}

impl EveryInterval {
    /// Every `interval` of wall-clock time.
    pub fn new(interval: Duration) -> Self {
        EveryInterval {
            interval,
            last: None,
            retry: false,
        }
    }
}

impl Policy for EveryInterval {
    fn should_checkpoint(&mut self, at: Opportunity) -> bool {
        let last = *self.last.get_or_insert(at.now);
        self.retry || at.now.saturating_duration_since(last) >= self.interval
    }
    fn checkpoint_taken(&mut self, at: Opportunity, _cost: Duration) {
        self.last = Some(at.now);
        self.retry = false;
    }
    fn checkpoint_failed(&mut self, _at: Opportunity) {
        self.retry = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_steps_fires_on_multiples_only() {
        let mut p = EverySteps::new(3);
        let now = Instant::now();
        let fired: Vec<u64> = (0..10)
            .filter(|&step| p.should_checkpoint(Opportunity { step, now }))
            .collect();
        assert_eq!(fired, vec![3, 6, 9]);
    }

    #[test]
    fn never_never_fires_even_after_an_explicit_checkpoint() {
        let mut p = Never;
        let t0 = Instant::now();
        for step in [0, 1, 60, u64::MAX] {
            let now = t0 + Duration::from_secs(step.min(1 << 30));
            assert!(!p.should_checkpoint(Opportunity { step, now }), "{step}");
            p.checkpoint_taken(Opportunity { step, now }, Duration::from_secs(1));
        }
        assert!(p.is_step_only());
    }

    #[test]
    fn every_interval_waits_for_the_interval() {
        let mut p = EveryInterval::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!p.should_checkpoint(Opportunity { step: 1, now: t0 }));
        let t1 = t0 + Duration::from_secs(11);
        assert!(p.should_checkpoint(Opportunity { step: 2, now: t1 }));
        p.checkpoint_taken(Opportunity { step: 2, now: t1 }, Duration::ZERO);
        assert!(!p.should_checkpoint(Opportunity {
            step: 3,
            now: t1 + Duration::from_secs(1)
        }));
    }

    #[test]
    fn every_interval_retries_at_the_next_opportunity_after_a_failed_checkpoint() {
        let mut p = EveryInterval::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        let at = |step, s| Opportunity {
            step,
            now: t0 + Duration::from_secs(s),
        };
        assert!(!p.should_checkpoint(at(0, 0)));
        p.checkpoint_taken(at(1, 1), Duration::ZERO);
        assert!(!p.should_checkpoint(at(2, 2)), "an hour has not passed");
        // Its background flush failed: nothing committed since the start.
        p.checkpoint_failed(at(1, 3));
        assert!(p.should_checkpoint(at(3, 4)), "retries at once");
        assert!(p.should_checkpoint(at(4, 5)), "until a checkpoint is taken");
        p.checkpoint_taken(at(4, 6), Duration::ZERO);
        assert!(!p.should_checkpoint(at(5, 7)), "then a full interval again");
        assert!(p.should_checkpoint(at(6, 3606)));
    }
}
