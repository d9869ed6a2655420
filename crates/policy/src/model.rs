//! Checkpoint-interval models: Young, Daly (first and higher order) and the exact minimiser
//! of Daly's expected wall time. All quantities are seconds as `f64`. See docs/POLICY.md
//! for the derivations and which formula reproduces which published number.

use crate::error::PolicyError;
use std::fmt;
use std::time::Duration;

/// Which formula picks the checkpoint interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Formula {
    /// Young (1974): `sqrt(2 δ M)`.
    Young,
    /// Daly's first-order estimate: `sqrt(2 δ (M + R))`.
    DalyFirstOrder,
    /// Daly's higher-order estimate (2006):
    /// `sqrt(2δM)·[1 + ⅓·sqrt(δ/2M) + ⅑·(δ/2M)] − δ` for `δ < 2M`, else `M`.
    DalyHigherOrder,
    /// The exact minimiser of Daly's expected wall time `T_w(τ)`.
    Optimal,
}

impl Formula {
    /// Every formula, in the order the CLI prints them.
    pub const ALL: [Formula; 4] = [
        Formula::Young,
        Formula::DalyFirstOrder,
        Formula::DalyHigherOrder,
        Formula::Optimal,
    ];

    /// A short stable name (`young`, `daly1`, `daly`, `optimal`), as accepted in policy specs.
    pub fn name(self) -> &'static str {
        match self {
            Formula::Young => "young",
            Formula::DalyFirstOrder => "daly1",
            Formula::DalyHigherOrder => "daly",
            Formula::Optimal => "optimal",
        }
    }
}

impl fmt::Display for Formula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Formula::Young => "Young",
            Formula::DalyFirstOrder => "Daly (first order)",
            Formula::DalyHigherOrder => "Daly (higher order)",
            Formula::Optimal => "exact optimum",
        })
    }
}

/// The failure model's parameters: checkpoint cost `δ`, mean time between failures `M` and
/// restart time `R`, in seconds. Construction validates them, so every method is total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    cost: f64,
    mtbf: f64,
    restart: f64,
}

/// `value` when finite and > 0 (or == 0 with `allow_zero`); else the error naming `name`.
pub(crate) fn check(name: &'static str, value: f64, allow_zero: bool) -> Result<f64, PolicyError> {
    let ok = value.is_finite() && (value > 0.0 || (allow_zero && value == 0.0));
    if ok {
        Ok(value)
    } else {
        Err(PolicyError::Parameter {
            name,
            expected: if allow_zero {
                "finite and >= 0 seconds"
            } else {
                "finite and > 0 seconds"
            },
            value,
        })
    }
}

impl Model {
    /// A model from seconds. `cost` and `mtbf` must be finite and > 0, `restart` finite
    /// and >= 0; otherwise the error names the parameter.
    pub fn new(cost_s: f64, mtbf_s: f64, restart_s: f64) -> Result<Model, PolicyError> {
        Ok(Model {
            cost: check("cost", cost_s, false)?,
            mtbf: check("mtbf", mtbf_s, false)?,
            restart: check("restart", restart_s, true)?,
        })
    }

    /// Like [`Model::new`] from durations.
    pub fn from_durations(
        cost: Duration,
        mtbf: Duration,
        restart: Duration,
    ) -> Result<Model, PolicyError> {
        Model::new(
            cost.as_secs_f64(),
            mtbf.as_secs_f64(),
            restart.as_secs_f64(),
        )
    }

    /// Checkpoint cost `δ` in seconds.
    pub fn cost(&self) -> f64 {
        self.cost
    }
    /// Mean time between failures `M` in seconds.
    pub fn mtbf(&self) -> f64 {
        self.mtbf
    }
    /// Restart time `R` in seconds.
    pub fn restart(&self) -> f64 {
        self.restart
    }

    /// Young's interval `sqrt(2 δ M)`.
    pub fn young(&self) -> f64 {
        (2.0 * self.cost * self.mtbf).sqrt()
    }

    /// Daly's first-order interval `sqrt(2 δ (M + R))`.
    pub fn daly_first_order(&self) -> f64 {
        (2.0 * self.cost * (self.mtbf + self.restart)).sqrt()
    }

    /// Daly's higher-order interval; `M` when `δ >= 2M`. Always > 0 for `δ < 2M`.
    pub fn daly_higher_order(&self) -> f64 {
        let (d, m) = (self.cost, self.mtbf);
        if d >= 2.0 * m {
            return m;
        }
        let r = d / (2.0 * m);
        (2.0 * d * m).sqrt() * (1.0 + r.sqrt() / 3.0 + r / 9.0) - d
    }

    /// The exact minimiser `τ*` of [`Model::expected_wall_time`]; always in `(0, M)`.
    ///
    /// `τ* = M·(1 + W₀(−e^{−1−δ/M}))`; computed as the root `y = τ*/M` of
    /// `−ln(1−y) − y = δ/M`, which stays accurate when `δ/M` is tiny, where `1 + W₀`
    /// would cancel catastrophically.
    pub fn optimal(&self) -> f64 {
        self.mtbf * optimal_fraction(self.cost / self.mtbf)
    }

    /// The interval chosen by `formula`.
    pub fn interval(&self, formula: Formula) -> f64 {
        match formula {
            Formula::Young => self.young(),
            Formula::DalyFirstOrder => self.daly_first_order(),
            Formula::DalyHigherOrder => self.daly_higher_order(),
            Formula::Optimal => self.optimal(),
        }
    }

    /// Daly's expected wall time to complete `work_s` seconds of failure-free work when
    /// checkpointing every `interval_s` seconds of work:
    /// `T_w(τ) = M·e^{R/M}·(e^{(τ+δ)/M} − 1)·T_s/τ`.
    /// Returns `+inf` for `τ <= 0` or NaN inputs, and when the value overflows (the job is
    /// not expected to finish). Valid for any fixed interval, so a measured run can be
    /// compared with its prediction.
    pub fn expected_wall_time(&self, interval_s: f64, work_s: f64) -> f64 {
        if interval_s.is_nan() || interval_s <= 0.0 || work_s.is_nan() {
            return f64::INFINITY;
        }
        let m = self.mtbf;
        let v = m
            * (self.restart / m).exp()
            * ((interval_s + self.cost) / m).exp_m1()
            * (work_s / interval_s);
        if v.is_nan() {
            f64::INFINITY
        } else {
            v
        }
    }

    /// The expected wall time to complete `work_s` seconds of work taking no checkpoint:
    /// every failure restarts the job from its beginning, `M·e^{R/M}·(e^{T_s/M} − 1)`
    /// (Daly's segment formula for one segment of the whole work, without a checkpoint
    /// at its end). What a job whose interval is at least its work costs: its first
    /// checkpoint would come after its end. `+inf` on overflow or NaN.
    pub fn expected_wall_time_without_checkpoints(&self, work_s: f64) -> f64 {
        let m = self.mtbf;
        let v = m * (self.restart / m).exp() * (work_s / m).exp_m1();
        if v.is_nan() {
            f64::INFINITY
        } else {
            v
        }
    }

    /// Fractional overhead `T_w(τ)/T_s − 1` at interval `τ` (independent of `T_s`).
    pub fn overhead(&self, interval_s: f64) -> f64 {
        self.expected_wall_time(interval_s, 1.0) - 1.0
    }
}

/// `g(y) = −ln(1−y) − y = Σ_{k≥2} yᵏ/k`, accurate for small `y` (series) and near 1.
fn neg_log1m_minus_id(y: f64) -> f64 {
    if y < 0.1 {
        // 0.1^26/26 is far below an ulp of y²/2, so 25 terms are exact to rounding.
        let mut acc = 0.0;
        for k in (2..=25).rev() {
            acc = acc * y + 1.0 / k as f64;
        }
        acc * y * y
    } else {
        -(-y).ln_1p() - y
    }
}

/// The root `y ∈ (0, 1)` of `g(y) = d` for `d > 0`: the optimum interval as a fraction of M.
fn optimal_fraction(d: f64) -> f64 {
    // g is increasing and convex on (0,1), so Newton started right of the root decreases
    // monotonically onto it. Both starts are upper bounds: g(y) >= y²/2, and
    // g(1 − e^{−d−1}) = d + 1 − y >= d.
    let mut y = (2.0 * d).sqrt().min(-(-d - 1.0).exp_m1());
    if y >= 1.0 {
        // δ/M beyond ~36: the root is 1 to double precision.
        return 1.0;
    }
    for _ in 0..200 {
        let g = neg_log1m_minus_id(y) - d;
        let step = g * (1.0 - y) / y;
        let next = y - step;
        // Stop when Newton no longer descends (converged to rounding) or on NaN.
        if next.is_nan() || next >= y || next <= 0.0 {
            break;
        }
        y = next;
    }
    y
}

/// The principal branch `W₀(x)` of the Lambert W function (`w·eʷ = x`, `w >= −1`) for
/// `x >= −1/e`; `None` below `−1/e` or for NaN. Halley iterations from a branch-point
/// series or a logarithmic start; residual within a few ulps away from the branch point.
pub fn lambert_w0(x: f64) -> Option<f64> {
    const INV_E: f64 = 0.367_879_441_171_442_33;
    if x.is_nan() || x < -INV_E {
        return None;
    }
    if x == f64::INFINITY {
        return Some(f64::INFINITY);
    }
    if x == 0.0 {
        return Some(0.0);
    }
    let mut w = if x < -0.25 {
        // Series at the branch point in p = sqrt(2(ex + 1)).
        let p = (2.0 * (std::f64::consts::E * x + 1.0)).max(0.0).sqrt();
        -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p * p * p
    } else if x < 3.0 {
        x.ln_1p() * (1.0 - x.ln_1p() / (2.0 + x.ln_1p()))
    } else {
        let l = x.ln();
        l - l.ln()
    };
    for _ in 0..64 {
        let ew = w.exp();
        let f = w * ew - x;
        let wp1 = w + 1.0;
        if wp1 == 0.0 || f == 0.0 {
            break;
        }
        let denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1);
        let next = w - f / denom;
        if !next.is_finite() {
            break;
        }
        let done = (next - w).abs() <= 4.0 * f64::EPSILON * (1.0 + next.abs());
        w = next.max(-1.0);
        if done {
            break;
        }
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: f64 = 60.0;
    const HOUR: f64 = 3600.0;

    fn daly_case(mtbf: f64) -> Model {
        Model::new(5.0 * MIN, mtbf, 10.0 * MIN).unwrap()
    }

    #[test]
    fn daly_published_cases() {
        // Daly 2006: T_s = 500 h, R = 10 min, δ = 5 min.
        let cases = [(24.0 * HOUR, 117.0), (6.0 * HOUR, 57.0), (15.0 * MIN, 9.1)];
        for (mtbf, published_min) in cases {
            let m = daly_case(mtbf);
            let ho = m.daly_higher_order() / MIN;
            let opt = m.optimal() / MIN;
            // Published numbers are rounded to the digits shown.
            let tol = if published_min < 10.0 { 0.05 } else { 0.5 };
            assert!(
                (ho - published_min).abs() <= tol,
                "mtbf {mtbf}: daly {ho} min"
            );
            assert!(
                (opt - published_min).abs() <= 2.0 * tol,
                "mtbf {mtbf}: optimum {opt} min"
            );
        }
    }

    #[test]
    fn daly_cases_to_high_precision() {
        // Reference values computed in closed form (see docs/POLICY.md).
        let m = daly_case(24.0 * HOUR);
        assert!((m.young() - 7200.0).abs() < 1e-9);
        let r: f64 = 300.0 / (2.0 * 86400.0);
        let ho = 7200.0 * (1.0 + r.sqrt() / 3.0 + r / 9.0) - 300.0;
        assert!((m.daly_higher_order() - ho).abs() < 1e-9);
        // Exact optimum satisfies e^{(τ+δ)/M}(τ/M − 1) + 1 = 0.
        for mtbf in [24.0 * HOUR, 6.0 * HOUR, 15.0 * MIN] {
            let m = daly_case(mtbf);
            let t = m.optimal();
            let y = t / mtbf;
            let lhs = neg_log1m_minus_id(y);
            assert!((lhs - 300.0 / mtbf).abs() <= 1e-15 * (300.0 / mtbf).max(1e-300) * 8.0);
            let w = lambert_w0(-(-1.0 - 300.0 / mtbf).exp()).unwrap();
            assert!(
                ((mtbf * (1.0 + w)) - t).abs() / t < 1e-9,
                "{mtbf}: {t} vs W"
            );
        }
    }

    #[test]
    fn lambert_known_values() {
        let cases = [
            (0.0, 0.0),
            (1.0, 0.567_143_290_409_783_8),
            (std::f64::consts::E, 1.0),
            (-std::f64::consts::LN_2 / 2.0, -std::f64::consts::LN_2),
            (-1.0 / std::f64::consts::E, -1.0),
            (10.0, 1.745_528_002_740_699_4),
            (1e10, 20.028_685_413_304_286),
        ];
        for (x, w) in cases {
            let got = lambert_w0(x).unwrap();
            assert!(
                (got - w).abs() <= 1e-12 * w.abs().max(1.0),
                "W({x}) = {got}, want {w}"
            );
        }
        assert_eq!(lambert_w0(-0.5), None);
        assert_eq!(lambert_w0(f64::NAN), None);
    }

    #[test]
    fn optimum_for_tiny_and_huge_ratios() {
        let tiny = Model::new(1e-9, 1e9, 0.0).unwrap();
        let rel = (tiny.optimal() - tiny.young()).abs() / tiny.young();
        assert!(rel < 1e-6, "{rel}");
        let huge = Model::new(1e6, 1.0, 0.0).unwrap();
        assert!(huge.optimal() > 0.999 && huge.optimal() <= 1.0);
        assert_eq!(huge.daly_higher_order(), 1.0);
    }

    #[test]
    fn optimum_matches_the_small_ratio_series() {
        // y = s − s²/3 + s³/36 + O(s⁴) with s = sqrt(2δ/M) solves Σ_{k≥2} yᵏ/k = δ/M.
        for d in [1e-8f64, 1e-10, 1e-14, 1e-20] {
            let s = (2.0 * d).sqrt();
            let series = s - s * s / 3.0 + s * s * s / 36.0;
            let y = Model::new(d, 1.0, 0.0).unwrap().optimal();
            assert!(
                (y - series).abs() <= 1e-13 * series,
                "δ/M={d}: {y} vs {series}"
            );
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = Model::new(-1.0, 1.0, 0.0).unwrap_err();
        assert!(e.to_string().contains("cost"), "{e}");
        let e = Model::new(1.0, f64::NAN, 0.0).unwrap_err();
        assert!(e.to_string().contains("mtbf"), "{e}");
        let e = Model::new(1.0, 1.0, -2.0).unwrap_err();
        assert!(e.to_string().contains("restart"), "{e}");
    }

    #[test]
    fn expected_wall_time_edges() {
        let m = daly_case(HOUR);
        assert_eq!(m.expected_wall_time(0.0, 10.0), f64::INFINITY);
        // Without checkpoints: no failure (M huge) costs nothing extra; the formula is
        // Daly's for one segment without the checkpoint's cost.
        let calm = Model::new(60.0, 1e12, 0.0).unwrap();
        assert!((calm.expected_wall_time_without_checkpoints(1800.0) - 1800.0).abs() < 1e-3);
        let m2 = Model::new(60.0, 36_000.0, 30.0).unwrap();
        let direct = 36_000.0 * (30.0f64 / 36_000.0).exp() * ((1800.0f64 / 36_000.0).exp() - 1.0);
        assert!((m2.expected_wall_time_without_checkpoints(1800.0) - direct).abs() < 1e-6);
        assert_eq!(m.expected_wall_time(f64::NAN, 10.0), f64::INFINITY);
        let extreme = Model::new(1.0, 1.0, 1e6).unwrap();
        assert_eq!(extreme.expected_wall_time(1.0, 1.0), f64::INFINITY);
    }
}
