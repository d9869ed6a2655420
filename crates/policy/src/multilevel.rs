//! Multi-level checkpointing (docs/POLICY.md, "Multi-level schedules"): how often to write
//! each level when cheap levels recover from frequent, small failures and expensive levels
//! from rare, large ones — in the style of Moody et al. (SCR, SC'10) and Di et al.
//! (IPDPS'14).
//!
//! # Model
//!
//! Levels `j = 1..k`, cheapest first. Level `j` has
//! - `c_j`: the time writing level `j` **adds** to a checkpoint (a checkpoint whose
//!   highest level is `j` costs `c_1 + … + c_j`: in Lazarus a checkpoint due at L2, L3 or
//!   L4 is also written to every lower level that is due, and with nested periods they all
//!   are);
//! - `R_j`: the time to restart from level `j`;
//! - `λ_j = 1/M_j`: the rate of the failures for which level `j` is the cheapest level that
//!   recovers (process crashes → L1, host losses → L2/L3, the rest → L4). A failure of
//!   class `j` rolls back to the newest checkpoint of level `j` or higher.
//!
//! The schedule is nested: a checkpoint every `τ` seconds of work, all of them at level 1;
//! level `j` on every `n_j`-th level-`(j−1)` checkpoint, so level `j` is written every
//! `m_j = n_2·…·n_j` checkpoints (`m_1 = 1`) and a level-`j` checkpoint is also one of every
//! lower level.
//!
//! **Expected time (nested Daly).** With Daly's segment time
//! `D(λ, R, L) = e^{λR}·(e^{λL} − 1)/λ` (`= L` for `λ = 0`) — the expected time to get
//! through `L` seconds that failures at rate `λ` send back to their start, each costing a
//! restart `R` that such failures also interrupt —
//!
//! ```text
//! E_1 = D(λ_1, R_1, τ + c_1)
//! E_j = D(λ_j, R_j, n_j·E_{j−1} + c_j)            j = 2..k
//! T_w = T_s · E_k / (m_k·τ)                       overhead = T_w/T_s − 1
//! ```
//!
//! For one level this **is** Daly's `T_w(τ) = M·e^{R/M}·(e^{(τ+δ)/M} − 1)·T_s/τ`
//! ([`crate::Model::expected_wall_time`]). For several it is an approximation: a level-`j`
//! period is exposed to class-`j` failures for the *expected* duration of its inner
//! periods (the exact Markov model of Moody et al. uses the whole distribution; by Jensen
//! the approximation is slightly optimistic, second order in the rates), and a
//! lower-class failure during a higher-level restart is ignored. To first order in the
//! rates it is exact.
//!
//! **First order (closed form).** Expanding to first order,
//! `overhead ≈ Σ_j [c_j/P_j + λ_j·(R_j + P_j/2)]` with `P_j = m_j·τ` the period of level
//! `j` in seconds: separable, so each level's optimal period is **Young's interval for that
//! level alone**, `P_j = √(2·c_j·M_j)` ([`MultiLevel::young_periods`]); when those are not
//! increasing, adjacent levels share a period `√(2·Σc/Σλ)` (pool-adjacent-violators).
//!
//! **Plan (numeric).** [`MultiLevel::plan`] minimises the nested-Daly `T_w` over `τ` for
//! given multiples (the objective `E_k(τ)/τ` is unimodal: `E_k` is convex and increasing in
//! `τ` with `E_k(0) > 0`; bracketing then golden-section search on `ln τ`), and over the
//! integer multiples `n_j` in two stages:
//!
//! 1. a discrete descent that moves to the best neighbour (each `n_j` changed by −1, 0 or
//!    +1) until none is better, started from the rounded first-order periods, from "every
//!    level on every checkpoint" and from [`DEFAULT_FACTORS`]; the best end point is the
//!    incumbent;
//! 2. an exact branch and bound over all multiples, using the rigorous lower bound
//!    `overhead ≥ Σ_j [c_j/P_j + λ_j·P_j/2 + λ_j·R_j]` (from `e^x − 1 ≥ x + x²/2`,
//!    `e^{λR} ≥ 1 + λR` and `E_j ≥ m_j·τ`, by induction over the levels): each level's
//!    period is confined to the interval where its term can still beat the incumbent, and a
//!    partial schedule is cut when `2·√(Σc_i/m_i · Σλ_i·m_i/2) + Σ_{later} √(2·c_i·λ_i) +
//!    Σ λ_i·R_i` (its best case over `τ`) is not below the incumbent. It evaluates at most
//!    [`SEARCH_BUDGET`] schedules; [`Plan::proven`] says whether it finished.
//!
//! With one level there are no multiples and `τ` is Daly's exact optimum
//! ([`crate::Model::optimal`], closed form via Lambert W).

use crate::error::PolicyError;
use crate::model::{check, Model};

/// The largest multiple [`MultiLevel::plan`] considers for one level (`n_j`), and the
/// largest number of checkpoints between two writes of any level (`m_j`, a `u32` for
/// `lazarus run --lN-every`).
pub const MAX_FACTOR: u32 = 1 << 20;

/// The most schedules (vectors of multiples) [`MultiLevel::plan`]'s branch-and-bound
/// search evaluates before it settles for the best found ([`Plan::proven`] false).
pub const SEARCH_BUDGET: u64 = 20_000;

/// The fixed schedule the plan is compared against besides "every level on every
/// checkpoint": docs/LEVELS.md's example (L1 and L2 every checkpoint, L3 every 5th, L4
/// every 20th) as multiples `n_2, n_3, …` (each level 5 or 4 times rarer than the one
/// below; entries past the number of levels are unused, missing ones are 4).
pub const DEFAULT_FACTORS: [u32; 3] = [5, 4, 4];

/// One level's parameters, seconds (validated: every method is total).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    cost: f64,
    restart: f64,
    rate: f64,
}

impl Level {
    /// A level whose writing adds `cost_s` to a checkpoint, restarts in `restart_s`, and is
    /// the cheapest level that recovers failures arriving every `mtbf_s` on average.
    /// `cost` and `mtbf` must be finite and > 0, `restart` finite and >= 0; the error
    /// names the parameter.
    pub fn new(cost_s: f64, restart_s: f64, mtbf_s: f64) -> Result<Level, PolicyError> {
        Ok(Level {
            cost: check("cost", cost_s, false)?,
            restart: check("restart", restart_s, true)?,
            rate: 1.0 / check("mtbf", mtbf_s, false)?,
        })
    }
    /// `c_j`, seconds.
    pub fn cost(&self) -> f64 {
        self.cost
    }
    /// `R_j`, seconds.
    pub fn restart(&self) -> f64 {
        self.restart
    }
    /// `M_j = 1/λ_j`, seconds.
    pub fn mtbf(&self) -> f64 {
        1.0 / self.rate
    }
}

/// A chosen schedule: the base interval and each level's multiple.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `τ`: seconds of work between two checkpoints (every checkpoint is level 1).
    pub interval_s: f64,
    /// `n_2, …, n_k`: level `j` on every `n_j`-th level-`(j−1)` checkpoint.
    pub factors: Vec<u32>,
    /// Expected overhead `T_w/T_s − 1` of this plan (`+inf`: not expected to finish).
    pub overhead: f64,
    /// True when [`MultiLevel::plan`]'s branch-and-bound search covered every vector of
    /// multiples that could beat this plan (so it is the optimum, to the resolution of the
    /// `τ` search); false when it stopped at [`SEARCH_BUDGET`], and for
    /// [`MultiLevel::plan_for`].
    pub proven: bool,
}

impl Plan {
    /// `m_1, …, m_k`: level `j` is written on every `m_j`-th checkpoint (`m_1 = 1`).
    pub fn every(&self) -> Vec<u32> {
        cumulative(&self.factors).unwrap_or_default()
    }
    /// Each level's period in seconds of work, `m_j·τ`.
    pub fn periods_s(&self) -> Vec<f64> {
        self.every()
            .into_iter()
            .map(|m| f64::from(m) * self.interval_s)
            .collect()
    }
}

/// `m_j` from `n_j`; `None` past [`MAX_FACTOR`] or on a zero.
fn cumulative(factors: &[u32]) -> Option<Vec<u32>> {
    let mut m = 1u32;
    let mut out = vec![1];
    for &n in factors {
        if n == 0 {
            return None;
        }
        m = m.checked_mul(n).filter(|&m| m <= MAX_FACTOR)?;
        out.push(m);
    }
    Some(out)
}

/// The multi-level model: 1 to 8 levels, cheapest first.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiLevel {
    levels: Vec<Level>,
}

/// Daly's segment time `e^{λR}·(e^{λL} − 1)/λ`, `L` when `λ = 0`.
fn segment(rate: f64, restart: f64, len: f64) -> f64 {
    if rate == 0.0 {
        return len;
    }
    (rate * restart).exp() * (rate * len).exp_m1() / rate
}

impl MultiLevel {
    /// A model of `levels`, cheapest first; 1 to 8 of them.
    pub fn new(levels: Vec<Level>) -> Result<MultiLevel, PolicyError> {
        if levels.is_empty() || levels.len() > 8 {
            return Err(PolicyError::Parameter {
                name: "levels",
                expected: "between 1 and 8 levels",
                value: levels.len() as f64,
            });
        }
        Ok(MultiLevel { levels })
    }

    /// The levels, cheapest first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The single-level [`Model`] of level `j` (0-based) alone: its cost, restart and MTBF.
    pub fn level_model(&self, j: usize) -> Option<Model> {
        let l = self.levels.get(j)?;
        Model::new(l.cost, l.mtbf(), l.restart).ok()
    }

    /// The nested-Daly overhead `T_w/T_s − 1` of base interval `interval_s` and multiples
    /// `factors` (`n_2, …, n_k`; one fewer than the levels). `+inf` when `τ <= 0`, NaN, a
    /// multiple is 0, the count of multiples is wrong, or the value overflows.
    pub fn overhead(&self, interval_s: f64, factors: &[u32]) -> f64 {
        self.expected_wall_time(interval_s, factors, 1.0) - 1.0
    }

    /// The nested-Daly expected wall time `T_w` to do `work_s` seconds of failure-free work
    /// (module documentation); `+inf` on the inputs [`MultiLevel::overhead`] names.
    pub fn expected_wall_time(&self, interval_s: f64, factors: &[u32], work_s: f64) -> f64 {
        if interval_s.is_nan()
            || interval_s <= 0.0
            || work_s.is_nan()
            || factors.len() + 1 != self.levels.len()
            || factors.contains(&0)
        {
            return f64::INFINITY;
        }
        let first = &self.levels[0];
        let mut e = segment(first.rate, first.restart, interval_s + first.cost);
        let mut m = 1.0;
        for (l, &n) in self.levels[1..].iter().zip(factors) {
            e = segment(l.rate, l.restart, f64::from(n) * e + l.cost);
            m *= f64::from(n);
        }
        let v = e * (work_s / (m * interval_s));
        if v.is_nan() {
            f64::INFINITY
        } else {
            v
        }
    }

    /// The base interval minimising the overhead for `factors`: Daly's exact optimum
    /// ([`Model::optimal`]) for one level, otherwise a numeric minimisation (bracketing,
    /// then golden-section search on `ln τ` to a relative width of 1e-12). `None` when the
    /// factors are invalid or no finite overhead was found.
    pub fn best_interval(&self, factors: &[u32]) -> Option<f64> {
        if factors.len() + 1 != self.levels.len() || cumulative(factors).is_none() {
            return None;
        }
        if self.levels.len() == 1 {
            return self.level_model(0).map(|m| m.optimal());
        }
        let h = |ln_t: f64| self.overhead(ln_t.exp(), factors);
        // Start at level 1's Young interval, scaled down until finite.
        let l1 = &self.levels[0];
        let mut x = (2.0 * l1.cost / l1.rate).sqrt().ln();
        let mut tries = 0;
        while !h(x).is_finite() {
            x -= std::f64::consts::LN_2;
            tries += 1;
            if tries > 2000 {
                return None;
            }
        }
        // Bracket: walk downhill by doubling steps until the value stops decreasing; the
        // point before the last one and the last one enclose the minimum.
        let step = std::f64::consts::LN_2;
        let lower = |a: f64, b: f64| h(a).partial_cmp(&h(b)) == Some(std::cmp::Ordering::Less);
        let walk = |dir: f64| {
            let mut mid = x + dir * step;
            let mut s = step;
            loop {
                s *= 2.0;
                let next = mid + dir * s;
                if !lower(next, mid) || s > 1e4 {
                    let back = mid - dir * s / 2.0;
                    return (back.min(next), back.max(next));
                }
                mid = next;
            }
        };
        let (mut a, mut b) = if lower(x + step, x) {
            walk(1.0)
        } else if lower(x - step, x) {
            walk(-1.0)
        } else {
            (x - step, x + step)
        };
        // Golden-section search on [a, b].
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let mut c = b - g * (b - a);
        let mut d = a + g * (b - a);
        let (mut hc, mut hd) = (h(c), h(d));
        for _ in 0..400 {
            if (b - a).abs() <= 1e-12 {
                break;
            }
            if hc <= hd {
                b = d;
                d = c;
                hd = hc;
                c = b - g * (b - a);
                hc = h(c);
            } else {
                a = c;
                c = d;
                hc = hd;
                d = a + g * (b - a);
                hd = h(d);
            }
        }
        let t = if hc <= hd { c } else { d }.exp();
        self.overhead(t, factors).is_finite().then_some(t)
    }

    /// The best plan for fixed `factors`: [`MultiLevel::best_interval`] and its overhead.
    pub fn plan_for(&self, factors: &[u32]) -> Option<Plan> {
        let t = self.best_interval(factors)?;
        Some(Plan {
            interval_s: t,
            factors: factors.to_vec(),
            overhead: self.overhead(t, factors),
            proven: false,
        })
    }

    /// First order: each level's period is Young's interval for that level alone,
    /// `√(2·c_j·M_j)`; where that would make a level more frequent than the one below,
    /// the adjacent levels are pooled to `√(2·Σc/Σλ)` (the first-order optimum under the
    /// constraint that periods do not decrease). Seconds, cheapest level first.
    pub fn young_periods(&self) -> Vec<f64> {
        // Pool adjacent violators: blocks of (Σc, Σλ, count).
        let mut blocks: Vec<(f64, f64, usize)> = Vec::new();
        for l in &self.levels {
            blocks.push((l.cost, l.rate, 1));
            while blocks.len() >= 2 {
                let (c2, r2, n2) = blocks[blocks.len() - 1];
                let (c1, r1, n1) = blocks[blocks.len() - 2];
                if (2.0 * c2 / r2).sqrt() >= (2.0 * c1 / r1).sqrt() {
                    break;
                }
                blocks.pop();
                blocks.pop();
                blocks.push((c1 + c2, r1 + r2, n1 + n2));
            }
        }
        blocks
            .into_iter()
            .flat_map(|(c, r, n)| std::iter::repeat_n((2.0 * c / r).sqrt(), n))
            .collect()
    }

    /// The first-order periods rounded to nested integer multiples.
    fn first_order_factors(&self) -> Vec<u32> {
        let p = self.young_periods();
        let mut out = Vec::new();
        let mut prev = 1.0f64;
        for w in p.windows(2) {
            let m = (w[1] / p[0]).max(prev);
            let n = (m / prev).round().clamp(1.0, f64::from(MAX_FACTOR));
            out.push(n as u32);
            prev *= n;
        }
        // Keep the cumulative multiples within MAX_FACTOR.
        while cumulative(&out).is_none() {
            if let Some(big) = out.iter_mut().max() {
                *big = (*big / 2).max(1);
            }
        }
        out
    }

    /// The plan minimising the nested-Daly expected time (module documentation): base
    /// interval and integer multiples. No plan with multiples each within one of these is
    /// better, nor every level on every checkpoint, nor [`DEFAULT_FACTORS`]; when
    /// [`Plan::proven`], no plan at all is.
    pub fn plan(&self) -> Plan {
        let k = self.levels.len();
        let ones = vec![1u32; k - 1];
        let default: Vec<u32> = (0..k - 1)
            .map(|i| DEFAULT_FACTORS.get(i).copied().unwrap_or(4))
            .collect();
        let mut best: Option<Plan> = None;
        for start in [self.first_order_factors(), ones, default] {
            if let Some(p) = self.descend(start) {
                if best.as_ref().is_none_or(|b| p.overhead < b.overhead) {
                    best = Some(p);
                }
            }
        }
        let Some(mut best) = best.filter(|b| b.overhead.is_finite()) else {
            return Plan {
                interval_s: f64::INFINITY,
                factors: vec![1; k - 1],
                overhead: f64::INFINITY,
                proven: false,
            };
        };
        if k == 1 {
            best.proven = true;
            return best;
        }
        // Branch and bound from the descent's plan. Lower bound (module documentation):
        // overhead >= Σ_j [c_j/P_j + λ_j·P_j/2 + λ_j·R_j]; so a better plan has
        // Σ_j (c_j/P_j + λ_j·P_j/2) below o = best − Σ λ_j·R_j.
        let restarts: f64 = self.levels.iter().map(|l| l.rate * l.restart).sum();
        let o = best.overhead * (1.0 + 1e-9) - restarts;
        // Each level's own term is at least √(2·c·λ); a better plan leaves level j at most
        // o − Σ_{i≠j} √(2·c_i·λ_i).
        let young_min: Vec<f64> = self
            .levels
            .iter()
            .map(|l| (2.0 * l.cost * l.rate).sqrt())
            .collect();
        let all_min: f64 = young_min.iter().sum();
        let mut bounds = Vec::with_capacity(k);
        for (l, own_min) in self.levels.iter().zip(&young_min) {
            let o_j = (o - (all_min - own_min)) * (1.0 + 1e-9);
            let disc = o_j * o_j - 2.0 * l.rate * l.cost;
            if o_j <= 0.0 || disc < 0.0 {
                // No period of this level can beat the plan: it is optimal.
                best.proven = true;
                return best;
            }
            let root = disc.sqrt();
            bounds.push((2.0 * l.cost / (o_j + root), (o_j + root) / l.rate));
        }
        let (tau_lo, tau_hi) = bounds[0];
        let mut rest = vec![0.0; k + 1];
        for j in (0..k).rev() {
            rest[j] = rest[j + 1] + young_min[j];
        }
        let l1 = &self.levels[0];
        let mut search = Search {
            model: self,
            bounds,
            restarts,
            rest,
            budget: SEARCH_BUDGET,
            best,
        };
        let mut factors = Vec::with_capacity(k - 1);
        let complete = search.branch(&mut factors, 1, tau_lo, tau_hi, l1.cost, l1.rate / 2.0);
        let mut best = search.best;
        best.proven = complete;
        best
    }

    /// Discrete descent from `start`: move to the best neighbour (every multiple changed by
    /// −1, 0 or +1, not all 0: up to 26 neighbours for four levels) while it is strictly
    /// better. Diagonal moves matter: trading one multiple for the next (`[3, 13, 2]` →
    /// `[4, 12, 2]`) keeps the upper periods and escapes minima along the axes.
    fn descend(&self, start: Vec<u32>) -> Option<Plan> {
        let mut cur = self.plan_for(&start)?;
        let k = cur.factors.len();
        let moves = 3usize.pow(k as u32);
        // Each step strictly decreases the overhead over a finite set; the bound is a guard.
        for _ in 0..100_000 {
            let mut next: Option<Plan> = None;
            for code in 0..moves {
                let mut f = cur.factors.clone();
                let mut c = code;
                let mut valid = code != (moves - 1) / 2; // all zero: the point itself
                for n in f.iter_mut() {
                    match c % 3 {
                        0 => *n = n.saturating_sub(1),
                        2 => *n = n.saturating_add(1),
                        _ => {}
                    }
                    valid &= *n > 0;
                    c /= 3;
                }
                if !valid {
                    continue;
                }
                if let Some(p) = self.plan_for(&f) {
                    let better_than = next.as_ref().map_or(cur.overhead, |n| n.overhead);
                    if p.overhead < better_than {
                        next = Some(p);
                    }
                }
            }
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        Some(cur)
    }
}

/// State of [`MultiLevel::plan`]'s branch-and-bound search.
struct Search<'a> {
    model: &'a MultiLevel,
    /// Per level, the periods (seconds) a plan better than the incumbent can have.
    bounds: Vec<(f64, f64)>,
    /// `Σ_{i≥j} √(2·c_i·λ_i)` for each level `j` (and 0 past the top): the least the levels
    /// from `j` up can add to the first-order lower bound, whatever their periods.
    rest: Vec<f64>,
    /// `Σ λ_j·R_j`: what restarts add to the overhead at least.
    restarts: f64,
    /// Schedules still allowed to be evaluated.
    budget: u64,
    /// The best plan so far.
    best: Plan,
}

impl Search<'_> {
    /// Tries every multiple of the level after `factors` (cumulative count `m`) whose
    /// period can fall in its bounds for some `τ` in `[tau_lo, tau_hi]`, narrowing the `τ`
    /// range level by level; at the top, evaluates the schedule. `a = Σ c_i/m_i` and
    /// `b = Σ λ_i·m_i/2` over the levels chosen so far: their first-order terms are at
    /// least `2·√(a·b)` for any `τ`, and a branch whose bound with [`Search::rest`] is not
    /// below the best overhead is cut. False when the budget ran out.
    fn branch(
        &mut self,
        factors: &mut Vec<u32>,
        m: u64,
        tau_lo: f64,
        tau_hi: f64,
        a: f64,
        b: f64,
    ) -> bool {
        let level = factors.len() + 1;
        if 2.0 * (a * b).sqrt() + self.rest[level] + self.restarts >= self.best.overhead {
            return true;
        }
        if level == self.model.levels.len() {
            if self.budget == 0 {
                return false;
            }
            self.budget -= 1;
            if let Some(p) = self.model.plan_for(factors) {
                if p.overhead < self.best.overhead {
                    self.best = p;
                }
            }
            return true;
        }
        let (lo, hi) = self.bounds[level];
        let slack = 1e-9;
        let m_f = m as f64;
        let n_min = ((lo / (m_f * tau_hi)) * (1.0 - slack)).ceil().max(1.0);
        let n_max = ((hi / (m_f * tau_lo)) * (1.0 + slack))
            .floor()
            .min((u64::from(MAX_FACTOR) / m) as f64);
        if n_min.is_nan() || n_max.is_nan() || n_min > n_max {
            return true;
        }
        for n in n_min as u64..=n_max as u64 {
            let p = m_f * n as f64;
            let t_lo = tau_lo.max(lo / p * (1.0 - slack));
            let t_hi = tau_hi.min(hi / p * (1.0 + slack));
            if t_lo > t_hi {
                continue;
            }
            let l = &self.model.levels[level];
            factors.push(n as u32);
            let complete = self.branch(
                factors,
                m * n,
                t_lo,
                t_hi,
                a + l.cost / p,
                b + l.rate * p / 2.0,
            );
            factors.pop();
            if !complete {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_level_is_daly() {
        let ml = MultiLevel::new(vec![Level::new(300.0, 600.0, 86_400.0).unwrap()]).unwrap();
        let m = Model::new(300.0, 86_400.0, 600.0).unwrap();
        let p = ml.plan();
        assert!(p.factors.is_empty());
        assert_eq!(p.interval_s, m.optimal());
        assert!((p.overhead - m.overhead(m.optimal())).abs() < 1e-12);
    }

    #[test]
    fn brief_example_is_nested_and_sensible() {
        // 0.2 s to L1 (process crash every 4 h), +0.5 s to L2 (host loss every day),
        // +2 s to L4 (everything else every 7 days).
        let ml = MultiLevel::new(vec![
            Level::new(0.2, 1.0, 4.0 * 3600.0).unwrap(),
            Level::new(0.5, 5.0, 86_400.0).unwrap(),
            Level::new(2.0, 30.0, 7.0 * 86_400.0).unwrap(),
        ])
        .unwrap();
        let p = ml.plan();
        let y = ml.young_periods();
        let periods = p.periods_s();
        for (got, young) in periods.iter().zip(&y) {
            // First order and exact agree to within a rounding of the multiples.
            assert!(got / young > 0.5 && got / young < 2.0, "{periods:?} {y:?}");
        }
        assert!(p.overhead > 0.0 && p.overhead < 0.05, "{p:?}");
    }

    #[test]
    fn wrong_factors_are_infinite() {
        let ml = MultiLevel::new(vec![
            Level::new(1.0, 0.0, 100.0).unwrap(),
            Level::new(1.0, 0.0, 1000.0).unwrap(),
        ])
        .unwrap();
        assert_eq!(ml.overhead(10.0, &[]), f64::INFINITY);
        assert_eq!(ml.overhead(10.0, &[0]), f64::INFINITY);
        assert_eq!(ml.overhead(0.0, &[1]), f64::INFINITY);
        assert!(ml.best_interval(&[0]).is_none());
        assert!(MultiLevel::new(vec![]).is_err());
    }

    #[test]
    fn bad_parameters_are_named() {
        for (e, name) in [
            (Level::new(-1.0, 0.0, 1.0).unwrap_err(), "cost"),
            (Level::new(1.0, -1.0, 1.0).unwrap_err(), "restart"),
            (Level::new(1.0, 0.0, 0.0).unwrap_err(), "mtbf"),
        ] {
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }
}
