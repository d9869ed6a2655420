//! Fixed-schedule policies: every N steps, every T of wall-clock time.

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
}

/// Checkpoint when at least `interval` has passed since the last one (or since start).
#[derive(Clone, Debug)]
pub struct EveryInterval {
    interval: Duration,
    last: Option<Instant>,
}

impl EveryInterval {
    /// Every `interval` of wall-clock time.
    pub fn new(interval: Duration) -> Self {
        EveryInterval {
            interval,
            last: None,
        }
    }
}

impl Policy for EveryInterval {
    fn should_checkpoint(&mut self, at: Opportunity) -> bool {
        let last = *self.last.get_or_insert(at.now);
        at.now.duration_since(last) >= self.interval
    }
    fn checkpoint_taken(&mut self, at: Opportunity, _cost: Duration) {
        self.last = Some(at.now);
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
}
