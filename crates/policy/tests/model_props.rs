//! Property tests of the interval models: the exact optimum minimises Daly's T_w, every
//! formula agrees as δ/M → 0, and Lambert W₀ inverts w·eʷ.

use lazarus_policy::{lambert_w0, Formula, Model};
use proptest::prelude::*;

/// (δ, M, R) spanning δ/M from 1e-8 to ~2, seconds to weeks.
fn params() -> impl Strategy<Value = (f64, f64, f64)> {
    (-8.0f64..0.3, 0.0f64..6.0, 0.0f64..1.0).prop_map(|(log_ratio, log_m, r_frac)| {
        let m = 10f64.powf(log_m);
        (m * 10f64.powf(log_ratio), m, r_frac * m)
    })
}

proptest! {
    #[test]
    fn optimum_minimises_expected_wall_time((d, m, r) in params(), eps in 1e-3f64..0.5) {
        let model = Model::new(d, m, r).unwrap();
        let t = model.optimal();
        prop_assert!(t > 0.0 && t < m, "τ*={t} M={m}");
        let best = model.expected_wall_time(t, 1.0);
        let slack = best * 1e-12;
        for other in [t * (1.0 + eps), t * (1.0 - eps)] {
            prop_assert!(best <= model.expected_wall_time(other, 1.0) + slack);
        }
        for f in Formula::ALL {
            let tau = model.interval(f);
            prop_assert!(best <= model.expected_wall_time(tau, 1.0) + slack, "{f}");
        }
    }

    #[test]
    fn optimum_solves_the_stationarity_equation((d, m, r) in params()) {
        // e^{(τ+δ)/M}(τ/M − 1) + 1 = 0, checked in the form (1 − y)e^{y} = e^{−δ/M}
        // to avoid the cancellation of the original form.
        let y = Model::new(d, m, r).unwrap().optimal() / m;
        let lhs = (1.0 - y).ln() + y;
        prop_assert!((lhs + d / m).abs() <= 1e-12 * (d / m).max(1e-4), "y={y} d/M={}", d / m);
    }

    #[test]
    fn optimum_matches_lambert_closed_form(log_ratio in -3.0f64..1.0, m in 1.0f64..1e6) {
        let d = m * 10f64.powf(log_ratio);
        let w = lambert_w0(-(-1.0 - d / m).exp()).unwrap();
        let closed = m * (1.0 + w);
        let t = Model::new(d, m, 0.0).unwrap().optimal();
        // 1 + W cancels near the branch point; 1e-6 is what the closed form can deliver at
        // δ/M = 1e-3, far better when δ/M is larger.
        prop_assert!((closed - t).abs() <= 1e-6 * t, "{closed} vs {t}");
    }

    #[test]
    fn formulas_agree_as_cost_over_mtbf_vanishes(log_ratio in -12.0f64..-4.0, m in 1.0f64..1e7) {
        let d = m * 10f64.powf(log_ratio);
        let model = Model::new(d, m, 0.0).unwrap();
        let opt = model.optimal();
        // All are sqrt(2δM)·(1 + O(sqrt(δ/M))).
        let bound = 2.0 * (d / m).sqrt();
        for f in Formula::ALL {
            let rel = (model.interval(f) - opt).abs() / opt;
            prop_assert!(rel <= bound, "{f}: rel {rel} bound {bound}");
        }
    }

    #[test]
    fn lambert_inverts(x in -0.367_879_441_171_442f64..1e12) {
        let w = lambert_w0(x).unwrap();
        prop_assert!(w >= -1.0);
        let back = w * w.exp();
        prop_assert!((back - x).abs() <= 1e-12 * x.abs().max(1e-3), "W({x})={w}: {back}");
    }

    #[test]
    fn overhead_is_expected_time_over_work((d, m, r) in params(), tau_frac in 0.01f64..2.0, work in 1.0f64..1e7) {
        let model = Model::new(d, m, r).unwrap();
        let tau = tau_frac * m;
        let t = model.expected_wall_time(tau, work);
        prop_assume!(t.is_finite());
        prop_assert!(t >= work);
        prop_assert!(((t / work - 1.0) - model.overhead(tau)).abs() <= 1e-9 * (1.0 + model.overhead(tau)));
    }
}
