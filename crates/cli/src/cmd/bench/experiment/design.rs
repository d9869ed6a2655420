//! The experiment's statistics, before any run: how noisy is one trial under Daly's own
//! assumptions, so how many trials (and which δ, M, work) make the two targets decidable.
//!
//! Daly's model (docs/POLICY.md): failures form a Poisson process of rate 1/M over the
//! whole wall time, also during checkpoints and restarts; the job is T_s/τ segments of
//! τ work + δ checkpoint; a failure loses the segment so far, costs a restart of length R
//! (itself exposed to failures) and the segment starts again. Its expected wall time is
//! T_w. The segments are independent (memorylessness), so the job's variance is the sum of
//! the segments' variances, which this module computes exactly (no normal approximation
//! inside a segment): a segment is L = τ + δ plus a geometric number of failed attempts,
//! each costing a truncated-exponential time to the failure plus a recovery; a recovery is
//! R plus a geometric number of failed recoveries. [`segment`]'s mean equals Daly's
//! T_w per segment, M·e^{R/M}·(e^{L/M} − 1) (unit test), and its variance matches a
//! seeded Monte Carlo simulation of the same process (unit test).

/// Mean and variance of a random time, seconds and seconds².
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Moments {
    /// expectation
    pub mean: f64,
    /// variance
    pub var: f64,
}

/// Time to a failure given that it falls in `[0, a)` (exponential with mean `m`).
fn truncated_exp(a: f64, m: f64) -> Moments {
    let x = a / m;
    if x < 1e-4 {
        // Series: uniform on [0, a) to first order (the closed form cancels here).
        let mean = a / 2.0 - a * x / 12.0;
        return Moments {
            mean,
            var: a * a / 12.0,
        };
    }
    let q = (-x).exp();
    let p = -(-x).exp_m1();
    let mean = m - a * q / p;
    let second = (2.0 * m * m - q * (a * a + 2.0 * a * m + 2.0 * m * m)) / p;
    Moments {
        mean,
        var: (second - mean * mean).max(0.0),
    }
}

/// Sum of a geometric number G of iid copies of `z`, where each attempt fails with
/// probability `p = 1 − e^{−a/M}` (G = failures before the first success).
fn compound_geometric(a: f64, m: f64, z: Moments) -> Moments {
    let x = a / m;
    // E[G] = p/q = e^x − 1, Var[G] = p/q² = e^x·(e^x − 1).
    let eg = x.exp_m1();
    let vg = x.exp() * eg;
    Moments {
        mean: eg * z.mean,
        var: eg * z.var + vg * z.mean * z.mean,
    }
}

/// One segment of `length` seconds (τ + δ) under failures of mean `mtbf` and restarts of
/// `restart` seconds, both exposed to failures: Daly's process, exactly.
pub(super) fn segment(length: f64, mtbf: f64, restart: f64) -> Moments {
    let lost_in_restart = truncated_exp(restart, mtbf);
    let recovery_extra = compound_geometric(restart, mtbf, lost_in_restart);
    let recovery = Moments {
        mean: restart + recovery_extra.mean,
        var: recovery_extra.var,
    };
    let lost = truncated_exp(length, mtbf);
    let per_failure = Moments {
        mean: lost.mean + recovery.mean,
        var: lost.var + recovery.var,
    };
    let failures = compound_geometric(length, mtbf, per_failure);
    Moments {
        mean: length + failures.mean,
        var: failures.var,
    }
}

/// A job of `work` seconds checkpointed every `interval` seconds at `cost` each: Daly's
/// T_s/τ segments (a fractional count, as in T_w).
pub(super) fn job(interval: f64, cost: f64, mtbf: f64, restart: f64, work: f64) -> Moments {
    let s = segment(interval + cost, mtbf, restart);
    let n = work / interval;
    Moments {
        mean: n * s.mean,
        var: n * s.var,
    }
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26 for erf, |error| < 1.5e-7).
pub(super) fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The plan of one interval: what the model expects and how precisely `trials` trials
/// can measure it.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct IntervalPlan {
    /// multiple of Daly's interval
    pub multiple: f64,
    /// the interval, seconds
    pub interval_s: f64,
    /// T_w, seconds
    pub expected_s: f64,
    /// expected number of failures, T_w / M
    pub expected_failures: f64,
    /// standard deviation of one trial, as a fraction of T_w
    pub trial_rel_sd: f64,
    /// standard error of the mean of the trials, as a fraction of T_w
    pub mean_rel_se: f64,
}

/// The whole design: per-interval precision, the expected duration and, if the model
/// were exact, the chance that each target is met (normal approximation of the means).
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct Plan {
    /// one entry per swept interval
    pub intervals: Vec<IntervalPlan>,
    /// expected duration of the trials and the per-round failure-free runs, seconds
    pub expected_duration_s: f64,
    /// P(every interval's mean within 10 % of T_w) if the model is exact
    pub p_target1: f64,
    /// P(1×Daly's mean within 5 % of the best mean) if the model is exact (the means
    /// taken as independent: common random numbers only make it likelier)
    pub p_target2: f64,
}

/// Target 1's margin (measured/model − 1, every interval).
pub(super) const TARGET1: f64 = 0.10;
/// Target 2's margin (1×Daly over the best measured interval).
pub(super) const TARGET2: f64 = 0.05;

/// Plans `trials` rounds of the intervals `multiples × daly` for a job of `work` seconds.
pub(super) fn plan(
    multiples: &[f64],
    daly: f64,
    cost: f64,
    mtbf: f64,
    restart: f64,
    work: f64,
    trials: u32,
) -> Plan {
    let n = f64::from(trials.max(1));
    let intervals: Vec<IntervalPlan> = multiples
        .iter()
        .map(|&m| {
            let tau = m * daly;
            let j = job(tau, cost, mtbf, restart, work);
            let rel_sd = j.var.sqrt() / j.mean;
            IntervalPlan {
                multiple: m,
                interval_s: tau,
                expected_s: j.mean,
                expected_failures: j.mean / mtbf,
                trial_rel_sd: rel_sd,
                mean_rel_se: rel_sd / n.sqrt(),
            }
        })
        .collect();
    let within = |se: f64, margin: f64| {
        if se <= 0.0 || !se.is_finite() {
            return 1.0;
        }
        normal_cdf(margin / se) - normal_cdf(-margin / se)
    };
    let p_target1 = intervals
        .iter()
        .map(|i| within(i.mean_rel_se, TARGET1))
        .product();
    let p_target2 = match intervals.iter().min_by(|a, b| {
        (a.multiple - 1.0)
            .abs()
            .total_cmp(&(b.multiple - 1.0).abs())
    }) {
        None => 1.0,
        Some(d) => intervals
            .iter()
            .filter(|i| !std::ptr::eq(*i, d))
            .map(|i| {
                // P(mean_D − (1 + margin)·mean_i < 0)
                let mu = d.expected_s - (1.0 + TARGET2) * i.expected_s;
                let sd = ((d.mean_rel_se * d.expected_s).powi(2)
                    + ((1.0 + TARGET2) * i.mean_rel_se * i.expected_s).powi(2))
                .sqrt();
                if sd > 0.0 {
                    normal_cdf(-mu / sd)
                } else if mu < 0.0 {
                    1.0
                } else {
                    0.0
                }
            })
            .product(),
    };
    let per_round: f64 = work + intervals.iter().map(|i| i.expected_s).sum::<f64>();
    Plan {
        intervals,
        expected_duration_s: n * per_round,
        p_target1,
        p_target2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus::policy::Model;

    /// splitmix64: a tiny seeded generator, enough for a Monte Carlo check.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn exp(&mut self, mean: f64) -> f64 {
            -mean * self.next().ln()
        }
    }

    /// Simulates one segment: attempts of `length`, each failure followed by a recovery
    /// of `restart` that is itself restarted when a failure hits it.
    fn simulate(rng: &mut Rng, length: f64, mtbf: f64, restart: f64) -> f64 {
        let mut t = 0.0;
        loop {
            let f = rng.exp(mtbf);
            if f >= length {
                return t + length;
            }
            t += f;
            loop {
                let g = rng.exp(mtbf);
                if g >= restart {
                    t += restart;
                    break;
                }
                t += g;
            }
        }
    }

    #[test]
    fn segment_mean_is_dalys_expected_time() {
        for (l, m, r) in [
            (1.0, 10.0, 0.4),
            (0.1, 5.0, 0.3),
            (8.0, 10.0, 2.0),
            (1e-5, 3.0, 0.0),
        ] {
            let cost = 0.05;
            let model = Model::new(cost, m, r).unwrap();
            // T_w with T_s = τ is exactly one segment of length τ + δ.
            let want = model.expected_wall_time(l, l);
            let got = segment(l + cost, m, r).mean;
            assert!(
                (got / want - 1.0).abs() < 1e-9,
                "{l} {m} {r}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn segment_variance_matches_a_seeded_simulation() {
        let seed = 0x5eed_u64;
        errln!("seed {seed}");
        let mut rng = Rng(seed);
        for (l, m, r) in [(1.0, 4.0, 0.5), (3.0, 4.0, 1.0), (0.3, 10.0, 0.2)] {
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| simulate(&mut rng, l, m, r)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let want = segment(l, m, r);
            assert!(
                (mean / want.mean - 1.0).abs() < 0.01,
                "{l}: mean {mean} vs {want:?}"
            );
            assert!(
                (var / want.var - 1.0).abs() < 0.05,
                "{l}: var {var} vs {want:?}"
            );
        }
    }

    #[test]
    fn truncated_exponential_is_continuous_at_the_series_switch() {
        let a = truncated_exp(0.99e-4, 1.0);
        let b = truncated_exp(1.01e-4, 1.0);
        assert!((a.mean / b.mean - 1.0).abs() < 0.03);
        assert!((a.var / b.var - 1.0).abs() < 0.05);
    }

    #[test]
    fn more_trials_give_a_tighter_mean_and_likelier_targets() {
        let m = [0.25, 0.5, 1.0, 2.0, 4.0];
        let a = plan(&m, 1.0, 0.05, 10.0, 0.4, 60.0, 2);
        let b = plan(&m, 1.0, 0.05, 10.0, 0.4, 60.0, 8);
        for (x, y) in a.intervals.iter().zip(&b.intervals) {
            assert!((x.mean_rel_se / y.mean_rel_se - 2.0).abs() < 1e-9);
        }
        assert!(b.p_target1 > a.p_target1 && b.p_target2 >= a.p_target2);
        assert!(a.p_target1 > 0.0 && b.p_target1 <= 1.0);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
    }
}
