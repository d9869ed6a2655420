//! The load-balancing policy: a pure function of measurements, no I/O.
//!
//! Every balancing interval each rank reports how many elements it processed and how long it
//! took. The [`Balancer`] turns these into a predicted per-step time for each rank, computes
//! the imbalance `max(time) / mean(time)` and proposes new block boundaries. It rebalances
//! only when all of the following hold (docs/DIST.md, "Load balancing"):
//!
//! 1. the imbalance exceeds `threshold` (default 1.10);
//! 2. at least `cooldown` intervals passed since the last rebalance (hysteresis: rates
//!    measured right after a migration are noisy and must not trigger another one);
//! 3. the predicted saving over `horizon` future steps exceeds the estimated migration cost
//!    (`elements moved by the busiest rank * seconds_per_element_moved`).
//!
//! Two cost models are offered because one measurement cannot tell a slow rank from
//! expensive elements: [`CostModel::RankRate`] (default; ranks differ in speed, elements
//! cost the same: blocks proportional to EWMA rates) and [`CostModel::ElementCost`] (ranks
//! are alike, cost varies along the array: boundaries equalise the measured cost,
//! assuming cost is uniform within each old block).

use crate::error::{DistError, Result};
use crate::partition::{Distribution, Plan};
use lazarus_format::Rank;

/// Which quantity the measurements describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostModel {
    /// Each rank has a speed (elements per second, smoothed by EWMA); element cost uniform.
    RankRate,
    /// Each element has a cost depending on its global index; ranks equally fast.
    ElementCost,
}

/// Tunables of the policy; `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceConfig {
    /// Rebalance only when `max time / mean time` exceeds this (default 1.10).
    pub threshold: f64,
    /// EWMA weight of the newest rate sample, in `(0, 1]` (default 0.5).
    pub ewma_alpha: f64,
    /// Intervals to wait after a rebalance before another may happen (default 2).
    pub cooldown: u32,
    /// Number of future steps over which the predicted saving is counted (default 20).
    pub horizon: f64,
    /// Estimated seconds to move one element between ranks (default: 8 bytes at 1 GB/s).
    pub seconds_per_element_moved: f64,
    /// A rank's weight never drops below this fraction of the mean, so it keeps some
    /// elements and its rate stays measurable (default 0.05).
    pub min_share: f64,
    /// Cost model (default [`CostModel::RankRate`]).
    pub model: CostModel,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            threshold: 1.10,
            ewma_alpha: 0.5,
            cooldown: 2,
            horizon: 20.0,
            seconds_per_element_moved: 8e-9,
            min_share: 0.05,
            model: CostModel::RankRate,
        }
    }
}

impl BalanceConfig {
    fn validate(&self) -> Result<()> {
        let ok = self.threshold.is_finite()
            && self.threshold >= 1.0
            && self.ewma_alpha > 0.0
            && self.ewma_alpha <= 1.0
            && self.horizon.is_finite()
            && self.horizon >= 0.0
            && self.seconds_per_element_moved.is_finite()
            && self.seconds_per_element_moved >= 0.0
            && (0.0..=1.0).contains(&self.min_share);
        if ok {
            Ok(())
        } else {
            Err(DistError::invalid(format!(
                "invalid balance configuration {self:?}: need threshold >= 1, 0 < ewma_alpha \
                 <= 1, finite horizon and move cost >= 0, 0 <= min_share <= 1"
            )))
        }
    }
}

/// One rank's measurement over one interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// elements processed (block length times steps)
    pub elements: u64,
    /// compute seconds spent on them (excluding communication waits)
    pub seconds: f64,
}

/// What the policy decided, with the numbers behind it (for logs and benchmarks).
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Keep the current blocks.
    Keep {
        /// current imbalance (max / mean predicted time), 1.0 when unknown
        imbalance: f64,
        /// why nothing happens
        reason: &'static str,
    },
    /// Move to new blocks.
    Rebalance {
        /// current imbalance
        imbalance: f64,
        /// predicted imbalance after the move
        predicted: f64,
        /// the new distribution
        to: Distribution,
        /// elements that change rank
        moved: u64,
    },
}

/// The stateful policy (EWMA rates, cooldown). Deterministic: equal inputs give equal
/// decisions, so ranks may each run it on allgathered samples, or one rank decides.
#[derive(Clone, Debug)]
pub struct Balancer {
    cfg: BalanceConfig,
    rates: Vec<Option<f64>>,
    /// seconds per element of each rank's block in the latest interval (ElementCost)
    density: Vec<Option<f64>>,
    since_rebalance: u32,
}

impl Balancer {
    /// A balancer for `ranks` ranks. Errors on an invalid configuration or zero ranks.
    pub fn new(cfg: BalanceConfig, ranks: usize) -> Result<Self> {
        cfg.validate()?;
        if ranks == 0 {
            return Err(DistError::invalid("a balancer needs at least one rank"));
        }
        Ok(Balancer {
            since_rebalance: cfg.cooldown,
            cfg,
            rates: vec![None; ranks],
            density: vec![None; ranks],
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &BalanceConfig {
        &self.cfg
    }

    /// Feeds one interval of per-rank samples (indexed by rank). Samples with no elements
    /// or no time carry no information and leave that rank's estimate unchanged.
    pub fn observe(&mut self, samples: &[Sample]) -> Result<()> {
        if samples.len() != self.rates.len() {
            return Err(DistError::invalid(format!(
                "{} for {}",
                lazarus_format::count(samples.len() as u64, "sample"),
                lazarus_format::count(self.rates.len() as u64, "rank")
            )));
        }
        let a = self.cfg.ewma_alpha;
        for (r, s) in samples.iter().enumerate() {
            if !s.seconds.is_finite() || s.seconds < 0.0 {
                return Err(DistError::invalid(format!(
                    "rank {r} reports {} seconds",
                    s.seconds
                )));
            }
            if s.elements == 0 || s.seconds <= 0.0 {
                self.density[r] = None;
                continue;
            }
            let rate = s.elements as f64 / s.seconds;
            self.rates[r] = Some(match self.rates[r] {
                Some(old) => a * rate + (1.0 - a) * old,
                None => rate,
            });
            self.density[r] = Some(s.seconds / s.elements as f64);
        }
        self.since_rebalance = self.since_rebalance.saturating_add(1);
        Ok(())
    }

    /// Smoothed rates (elements/second), unknown ones replaced by the mean of the known
    /// ones (1.0 if none is known), floored at `min_share * mean`.
    pub fn rates(&self) -> Vec<f64> {
        let known: Vec<f64> = self.rates.iter().flatten().copied().collect();
        let mean = if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        let floor = self.cfg.min_share * mean;
        self.rates
            .iter()
            .map(|r| r.unwrap_or(mean).max(floor))
            .collect()
    }

    /// Predicted per-step seconds of every rank under `dist`.
    fn predicted_times(&self, dist: &Distribution, basis: &Distribution) -> Vec<f64> {
        match self.cfg.model {
            CostModel::RankRate => {
                let rates = self.rates();
                (0..dist.ranks())
                    .map(|r| dist.len_of(Rank(r as u32)) as f64 / rates[r])
                    .collect()
            }
            CostModel::ElementCost => (0..dist.ranks())
                .map(|r| cost_of(basis, &self.densities(basis), dist.range(Rank(r as u32))))
                .collect(),
        }
    }

    /// Per-rank densities of `basis`, unknown ones replaced by the mean known density.
    fn densities(&self, basis: &Distribution) -> Vec<f64> {
        let known: Vec<f64> = self
            .density
            .iter()
            .enumerate()
            .filter(|(r, _)| basis.len_of(Rank(*r as u32)) > 0)
            .filter_map(|(_, d)| *d)
            .collect();
        let mean = if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        self.density.iter().map(|d| d.unwrap_or(mean)).collect()
    }

    /// `max / mean` of the predicted per-step times under `dist` (1.0 when all are zero).
    /// Errors when `dist` has a different number of ranks (it panicked on more).
    pub fn imbalance(&self, dist: &Distribution) -> Result<f64> {
        self.check_ranks(dist)?;
        Ok(imbalance_of(&self.predicted_times(dist, dist)))
    }

    fn check_ranks(&self, dist: &Distribution) -> Result<()> {
        if dist.ranks() != self.rates.len() {
            return Err(DistError::invalid(format!(
                "distribution over {} given to a balancer of {}",
                lazarus_format::count(dist.ranks() as u64, "rank"),
                self.rates.len()
            )));
        }
        Ok(())
    }

    /// Applies the policy to the current distribution `dist` (the one the samples were
    /// measured on). Errors when `dist` has a different number of ranks.
    pub fn decide(&mut self, dist: &Distribution) -> Result<Decision> {
        self.check_ranks(dist)?;
        let now = self.predicted_times(dist, dist);
        let imbalance = imbalance_of(&now);
        if imbalance <= self.cfg.threshold {
            return Ok(Decision::Keep {
                imbalance,
                reason: "imbalance below threshold",
            });
        }
        if self.since_rebalance < self.cfg.cooldown {
            return Ok(Decision::Keep {
                imbalance,
                reason: "cooling down after the last rebalance",
            });
        }
        let to = match self.cfg.model {
            CostModel::RankRate => Distribution::weighted(dist.total(), &self.rates())?,
            CostModel::ElementCost => equal_cost(dist, &self.densities(dist), dist.ranks())?,
        };
        if &to == dist {
            return Ok(Decision::Keep {
                imbalance,
                reason: "no better boundaries at element granularity",
            });
        }
        let after = self.predicted_times(&to, dist);
        let predicted = imbalance_of(&after);
        let gain = (max_of(&now) - max_of(&after)) * self.cfg.horizon;
        let plan = Plan::new(dist, &to, u64::MAX)?;
        let mut traffic = vec![0u64; dist.ranks()];
        for p in plan.pieces().iter().filter(|p| p.src != p.dst) {
            let n = p.global.end - p.global.start;
            traffic[p.src.index()] += n;
            traffic[p.dst.index()] += n;
        }
        let busiest = traffic.iter().copied().max().unwrap_or(0);
        let cost = busiest as f64 * self.cfg.seconds_per_element_moved;
        if gain <= cost {
            return Ok(Decision::Keep {
                imbalance,
                reason: "predicted saving does not pay for the migration",
            });
        }
        self.since_rebalance = 0;
        if self.cfg.model == CostModel::ElementCost {
            // Densities were tied to the old blocks; measure afresh.
            self.density.iter_mut().for_each(|d| *d = None);
        }
        Ok(Decision::Rebalance {
            imbalance,
            predicted,
            moved: plan.moved(),
            to,
        })
    }
}

fn max_of(t: &[f64]) -> f64 {
    t.iter().copied().fold(0.0, f64::max)
}

fn imbalance_of(t: &[f64]) -> f64 {
    let mean = t.iter().sum::<f64>() / t.len().max(1) as f64;
    if mean > 0.0 && mean.is_finite() {
        max_of(t) / mean
    } else {
        1.0
    }
}

/// Cost of global range `r` when rank `k` of `basis` has cost density `dens[k]`.
fn cost_of(basis: &Distribution, dens: &[f64], r: std::ops::Range<u64>) -> f64 {
    basis
        .overlapping(r)
        .iter()
        .map(|(k, s)| (s.end - s.start) as f64 * dens[k.index()])
        .sum()
}

/// Boundaries splitting the piecewise-constant cost of `basis` into `ranks` equal parts.
fn equal_cost(basis: &Distribution, dens: &[f64], ranks: usize) -> Result<Distribution> {
    let b = basis.bounds();
    let total_cost: f64 = (0..basis.ranks())
        .map(|k| (b[k + 1] - b[k]) as f64 * dens[k])
        .sum();
    if !(total_cost > 0.0 && total_cost.is_finite()) {
        return Distribution::even(basis.total(), ranks);
    }
    let mut bounds = vec![0u64];
    let mut seg = 0usize;
    let mut before = 0.0f64; // cost of segments before `seg`
    for i in 1..ranks {
        let target = total_cost * i as f64 / ranks as f64;
        while seg < basis.ranks() {
            let c = (b[seg + 1] - b[seg]) as f64 * dens[seg];
            if before + c >= target {
                break;
            }
            before += c;
            seg += 1;
        }
        let at = if seg >= basis.ranks() {
            basis.total()
        } else if dens[seg] > 0.0 {
            let into = ((target - before) / dens[seg]).round() as u64;
            (b[seg] + into).min(b[seg + 1])
        } else {
            b[seg + 1]
        };
        let prev = bounds.last().copied().unwrap_or(0);
        bounds.push(at.max(prev));
    }
    bounds.push(basis.total());
    Distribution::from_bounds(bounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(elements: u64, seconds: f64) -> Sample {
        Sample { elements, seconds }
    }

    #[test]
    fn balanced_ranks_are_left_alone() {
        let d = Distribution::even(1000, 4).unwrap();
        let mut b = Balancer::new(BalanceConfig::default(), 4).unwrap();
        b.observe(&[s(250, 1.0), s(250, 1.02), s(250, 0.99), s(250, 1.0)])
            .unwrap();
        assert!(matches!(b.decide(&d).unwrap(), Decision::Keep { .. }));
    }

    #[test]
    fn slow_rank_gets_a_third() {
        let d = Distribution::even(3000, 3).unwrap();
        let mut b = Balancer::new(BalanceConfig::default(), 3).unwrap();
        // rank 1 is 3x slower per element
        b.observe(&[s(1000, 1.0), s(1000, 3.0), s(1000, 1.0)])
            .unwrap();
        match b.decide(&d).unwrap() {
            Decision::Rebalance {
                imbalance,
                predicted,
                to,
                ..
            } => {
                assert!((imbalance - 9.0 / 5.0).abs() < 1e-9);
                assert!(predicted < 1.01, "{predicted}");
                assert_eq!(to.bounds(), &[0, 1286, 1714, 3000]);
            }
            k => panic!("expected a rebalance, got {k:?}"),
        }
        // cooldown: the same measurement right after does not trigger again
        b.observe(&[s(1000, 1.0), s(1000, 3.0), s(1000, 1.0)])
            .unwrap();
        assert!(matches!(
            b.decide(&d).unwrap(),
            Decision::Keep {
                reason: "cooling down after the last rebalance",
                ..
            }
        ));
    }

    #[test]
    fn expensive_migration_is_refused() {
        let cfg = BalanceConfig {
            seconds_per_element_moved: 1.0,
            ..Default::default()
        };
        let d = Distribution::even(3000, 3).unwrap();
        let mut b = Balancer::new(cfg, 3).unwrap();
        b.observe(&[s(1000, 1.0), s(1000, 3.0), s(1000, 1.0)])
            .unwrap();
        assert!(matches!(
            b.decide(&d).unwrap(),
            Decision::Keep {
                reason: "predicted saving does not pay for the migration",
                ..
            }
        ));
    }

    #[test]
    fn element_cost_equalises_cost() {
        let cfg = BalanceConfig {
            model: CostModel::ElementCost,
            ..Default::default()
        };
        let d = Distribution::even(400, 2).unwrap();
        let mut b = Balancer::new(cfg, 2).unwrap();
        // first half costs 3x per element
        b.observe(&[s(200, 3.0), s(200, 1.0)]).unwrap();
        match b.decide(&d).unwrap() {
            Decision::Rebalance { to, predicted, .. } => {
                assert_eq!(to.bounds(), &[0, 133, 400]);
                assert!(predicted < 1.01);
            }
            k => panic!("expected a rebalance, got {k:?}"),
        }
    }

    /// Review: `imbalance` of a layout over more ranks than the balancer indexed past its
    /// per-rank tables and panicked (both cost models); `decide` already refused it.
    #[test]
    fn imbalance_with_a_foreign_rank_count_is_not_a_panic() {
        for model in [CostModel::RankRate, CostModel::ElementCost] {
            let cfg = BalanceConfig {
                model,
                ..Default::default()
            };
            let mut b = Balancer::new(cfg, 2).unwrap();
            b.observe(&[s(5, 1.0), s(5, 2.0)]).unwrap();
            for ranks in [1, 3] {
                let e = b
                    .imbalance(&Distribution::even(10, ranks).unwrap())
                    .unwrap_err();
                assert!(e.to_string().contains("balancer of 2"), "{e}");
            }
            let two = b.imbalance(&Distribution::even(10, 2).unwrap()).unwrap();
            assert!((two - 4.0 / 3.0).abs() < 1e-9, "{model:?}: {two}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Balancer::new(BalanceConfig::default(), 0).is_err());
        let cfg = BalanceConfig {
            threshold: f64::NAN,
            ..Default::default()
        };
        assert!(Balancer::new(cfg, 2).is_err());
        let mut b = Balancer::new(BalanceConfig::default(), 2).unwrap();
        assert!(b.observe(&[s(1, 1.0)]).is_err());
        assert!(b.observe(&[s(1, -1.0), s(1, 1.0)]).is_err());
    }

    proptest! {
        #[test]
        fn rebalancing_never_increases_predicted_time(
            total in 0u64..10_000,
            speeds in prop::collection::vec(0.1f64..10.0, 1..=8),
            model in prop_oneof![Just(CostModel::RankRate), Just(CostModel::ElementCost)],
        ) {
            let cfg = BalanceConfig { model, cooldown: 0, ..Default::default() };
            let n = speeds.len();
            let d = Distribution::even(total, n).unwrap();
            let mut b = Balancer::new(cfg, n).unwrap();
            let samples: Vec<Sample> = (0..n)
                .map(|r| s(d.len_of(Rank(r as u32)), d.len_of(Rank(r as u32)) as f64 / speeds[r]))
                .collect();
            b.observe(&samples).unwrap();
            if let Decision::Rebalance { imbalance, predicted, to, .. } = b.decide(&d).unwrap() {
                prop_assert!(predicted <= imbalance + 1e-9);
                prop_assert_eq!(to.total(), total);
                prop_assert_eq!(to.ranks(), n);
            }
        }
    }
}
