//! The adaptive policy and policy specs, driven by an injected clock (no sleeps).

use lazarus_policy::{
    Adaptive, ErrorKind, FailureHistory, Formula, Model, MtbfSource, Opportunity, Policy,
    PolicySpec,
};
use proptest::prelude::*;
use std::time::{Duration, Instant};

/// A fake clock: opportunities at `t0 + offset`.
struct Clock {
    t0: Instant,
    step: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            t0: Instant::now(),
            step: 0,
        }
    }
    fn at(&mut self, secs: f64) -> Opportunity {
        self.step += 1;
        Opportunity {
            step: self.step,
            now: self.t0 + Duration::from_secs_f64(secs),
        }
    }
}

fn s(x: f64) -> Duration {
    Duration::from_secs_f64(x)
}

#[test]
fn probes_then_follows_daly() {
    let mut c = Clock::new();
    let mut p = Adaptive::new(Formula::DalyHigherOrder, MtbfSource::Fixed(s(86_400.0)));
    // Unknown cost: the first opportunity starts the clock, the second probes.
    assert!(!p.should_checkpoint(c.at(0.0)));
    assert_eq!(p.current_interval(), None);
    assert!(p.should_checkpoint(c.at(1.0)));
    p.checkpoint_taken(c.at(301.0), s(300.0));
    let want = Model::new(300.0, 86_400.0, 0.0)
        .unwrap()
        .daly_higher_order();
    let got = p.current_interval().unwrap().as_secs_f64();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    // Counts from the end of the last checkpoint.
    assert!(!p.should_checkpoint(c.at(301.0 + want - 1.0)));
    assert!(p.should_checkpoint(c.at(301.0 + want + 1e-3)));
}

#[test]
fn initial_cost_skips_the_probe_and_is_replaced_by_the_first_measurement() {
    let mut c = Clock::new();
    let mut p = Adaptive::new(Formula::Young, MtbfSource::Fixed(s(1800.0)))
        .initial_cost(s(1.0))
        .smoothing(0.5);
    assert!(!p.should_checkpoint(c.at(0.0)));
    assert!(!p.should_checkpoint(c.at(1.0)));
    assert_eq!(p.current_interval(), Some(s(60.0))); // sqrt(2·1·1800)
    assert!(p.should_checkpoint(c.at(60.0)));
    p.checkpoint_taken(c.at(64.0), s(4.0));
    assert_eq!(p.cost_estimate(), Some(s(4.0)));
    p.checkpoint_taken(c.at(200.0), s(2.0));
    assert_eq!(p.cost_estimate(), Some(s(3.0))); // EWMA 0.5
}

#[test]
fn bounds_clamp_the_interval() {
    let mut c = Clock::new();
    let mut p = Adaptive::new(Formula::Optimal, MtbfSource::Fixed(s(1e6)))
        .initial_cost(s(100.0))
        .max_interval(s(10.0));
    assert!(!p.should_checkpoint(c.at(0.0)));
    assert!(p.should_checkpoint(c.at(10.0)));
    let mut q = Adaptive::new(Formula::Optimal, MtbfSource::Fixed(s(10.0)))
        .initial_cost(Duration::ZERO)
        .min_interval(s(5.0));
    assert!(!q.should_checkpoint(c.at(10.0)));
    assert!(!q.should_checkpoint(c.at(14.9)));
    assert!(q.should_checkpoint(c.at(15.0)));
}

#[test]
fn failure_history_shortens_the_interval() {
    let prior = s(86_400.0);
    let quiet = FailureHistory::new(0.0, vec![], 3600.0).unwrap();
    let stormy =
        FailureHistory::new(0.0, (1..=20).map(|i| i as f64 * 150.0).collect(), 3600.0).unwrap();
    let interval = |h: FailureHistory| {
        let mut c = Clock::new();
        let mut p = Adaptive::new(
            Formula::DalyHigherOrder,
            MtbfSource::Estimated {
                history: Some(h),
                prior,
                prior_weight: 1.0,
            },
        )
        .initial_cost(s(10.0));
        p.should_checkpoint(c.at(0.0));
        (p.current_interval().unwrap(), p.mtbf_estimate(c.t0))
    };
    let (iq, mq) = interval(quiet);
    let (is, ms) = interval(stormy);
    assert_eq!(mq, s(3600.0 + 86_400.0));
    assert!((ms.as_secs_f64() - (3600.0 + 86_400.0) / 21.0).abs() < 1e-6);
    assert!(is < iq, "{is:?} vs {iq:?}");
}

#[test]
fn never_spec_builds_a_policy_that_never_fires() {
    let spec: PolicySpec = "never".parse().unwrap();
    assert_eq!(spec, PolicySpec::Never);
    assert_eq!(spec.to_string(), "never");
    let mut p = spec.build(None);
    assert!(p.is_step_only(), "every rank can ask its own copy");
    let t0 = Instant::now();
    for step in 0..10_000u64 {
        let now = t0 + Duration::from_secs(step * 3600);
        assert!(
            !p.should_checkpoint(Opportunity { step, now }),
            "fired at {step}"
        );
    }
    // The steps policy is step-only, the time-based and adaptive ones are not.
    assert!("steps:5"
        .parse::<PolicySpec>()
        .unwrap()
        .build(None)
        .is_step_only());
    assert!(!"every:1s"
        .parse::<PolicySpec>()
        .unwrap()
        .build(None)
        .is_step_only());
    assert!(!"daly"
        .parse::<PolicySpec>()
        .unwrap()
        .build(None)
        .is_step_only());
}

#[test]
fn specs_parse_and_build() {
    let cases = [
        "steps:100",
        "every:30s",
        "daly",
        "young,mtbf=6h",
        "optimal,mtbf=1d,restart=10m,cost=5s,min=1s,max=2h,smoothing=0.5",
        "daly1,prior=12h",
        "never",
        " never ",
    ];
    for c in cases {
        let spec: PolicySpec = c.parse().unwrap();
        let again: PolicySpec = spec.to_string().parse().unwrap();
        assert_eq!(spec, again, "{c}");
        let mut p = spec.build(None);
        let now = Instant::now();
        p.should_checkpoint(Opportunity { step: 1, now });
    }
    for bad in [
        "",
        "steps:0",
        "steps:x",
        "every:5",
        "dally",
        "daly,mtbf",
        "daly,foo=1s",
        "daly,mtbf=0s",
        "daly,smoothing=2",
        // Regression: accepted, printed back as given, but the policy used 0.01.
        "daly,smoothing=0.001",
        "never,mtbf=1h",
        "nevermore",
        "never:1",
    ] {
        let e = bad.parse::<PolicySpec>().unwrap_err();
        assert!(
            matches!(
                e.kind(),
                ErrorKind::InvalidSpec | ErrorKind::InvalidDuration
            ),
            "{bad}: {e}"
        );
    }
}

/// `Display` wrote fractional durations as f64 milliseconds, which did not parse back to
/// the same nanoseconds (`every:79190.010m` printed `every:4751400600ms`, which parsed as
/// 4751400.600000001 s): the "canonical spec that parses back to the same value" did not.
#[test]
fn display_round_trips_fractional_durations() {
    for c in [
        "every:79190.010m",
        "every:97794.126m",
        "daly,mtbf=75140.06m,cost=1.1s,min=0.3s,max=99819.101m",
    ] {
        let spec: PolicySpec = c.parse().unwrap();
        let again: PolicySpec = spec.to_string().parse().unwrap();
        assert_eq!(spec, again, "{c} -> {spec}");
    }
}

proptest! {
    #[test]
    fn display_round_trips_every_parsed_and_every_sub_97_day_duration(
        whole in 0u64..10_000_000,
        frac in 0u32..1000,
        unit in 0usize..5,
        secs in 0u64..1 << 23,
        nanos in 0u32..1_000_000_000,
    ) {
        let unit = ["ms", "s", "m", "h", "d"][unit];
        let text = format!("daly,max={}.{frac:03}{unit}", whole + 1);
        if let Ok(spec) = text.parse::<PolicySpec>() {
            let again: PolicySpec = spec.to_string().parse().unwrap();
            prop_assert_eq!(&spec, &again, "{} -> {}", text, spec);
        }
        let spec = PolicySpec::EveryInterval(Duration::new(secs, nanos.max(1)));
        let again: PolicySpec = spec.to_string().parse().unwrap();
        prop_assert_eq!(&spec, &again);
    }
}

/// `every:0s` and `max=0s` were accepted and checkpointed at every opportunity (while
/// `steps:0` was refused), and `min` above `max` was accepted with `max` silently winning.
#[test]
fn zero_intervals_and_min_above_max_are_refused() {
    for (bad, names) in [
        ("every:0s", ["every", "0s"]),
        ("every: 0ms", ["every", "0ms"]),
        ("daly,max=0s", ["max", "0s"]),
        ("optimal,min=1h,max=1m", ["min", "max"]),
    ] {
        let e = bad.parse::<PolicySpec>().unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e.kind(),
                ErrorKind::InvalidSpec | ErrorKind::InvalidDuration
            ),
            "{bad}: {msg}"
        );
        for name in names {
            assert!(msg.contains(name), "{bad}: {msg}");
        }
    }
    // Equal bounds pin the interval; a zero min is the default.
    for ok in ["daly,min=1m,max=1m", "daly,min=0s,max=1s", "every:1ms"] {
        let spec: PolicySpec = ok.parse().unwrap();
        assert_eq!(spec.to_string().parse::<PolicySpec>().unwrap(), spec);
    }
}

proptest! {
    /// Whatever the costs, the policy fires exactly when the time since the last
    /// checkpoint reaches the model's interval for the EWMA cost.
    #[test]
    fn fires_exactly_at_the_model_interval(
        costs in proptest::collection::vec(1e-3f64..100.0, 1..20),
        mtbf in 60.0f64..1e6,
        alpha in 0.05f64..1.0,
    ) {
        let mut c = Clock::new();
        let mut p = Adaptive::new(Formula::Optimal, MtbfSource::Fixed(s(mtbf))).smoothing(alpha);
        let mut now = 0.0;
        prop_assert!(!p.should_checkpoint(c.at(now)));
        now += 1.0;
        prop_assert!(p.should_checkpoint(c.at(now)));
        let mut ewma: Option<f64> = None;
        for cost in costs {
            now += cost;
            p.checkpoint_taken(c.at(now), s(cost));
            let e = match ewma { None => cost, Some(old) => old + alpha * (cost - old) };
            ewma = Some(e);
            let tau = Model::new(e, mtbf, 0.0).unwrap().optimal();
            let got = p.current_interval().unwrap().as_secs_f64();
            prop_assert!((got - tau).abs() <= 1e-6 * tau + 1e-9, "{got} vs {tau}");
            prop_assert!(!p.should_checkpoint(c.at(now + got * 0.999)));
            prop_assert!(p.should_checkpoint(c.at(now + got + 1e-6)));
            now += got;
        }
    }

    #[test]
    fn env_history_round_trips(start in 1e9f64..2e9, gaps in proptest::collection::vec(0.0f64..1e5, 0..30)) {
        let start = (start * 1000.0).round() / 1000.0;
        let mut h = FailureHistory::starting_at(start).unwrap();
        let mut t = start;
        for g in gaps {
            t = ((t + g) * 1000.0).round() / 1000.0;
            h.record_failure(t).unwrap();
        }
        let [(_, a), (_, b)] = h.env_vars();
        let back = FailureHistory::parse(Some(&a), Some(&b), h.observed_at()).unwrap().unwrap();
        prop_assert_eq!(back.failures().len(), h.failures().len());
        for (x, y) in back.failures().iter().zip(h.failures()) {
            prop_assert!((x - y).abs() < 1e-3);
        }
    }
}

proptest! {
    #[test]
    fn durations_parse_with_every_unit(v in 0.0f64..1e6, unit in 0usize..5) {
        let (name, scale) = [("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0)][unit];
        let text = format!("{v}{name}");
        let got = lazarus_policy::parse_duration("--x", &text).unwrap().as_secs_f64();
        prop_assert!((got - v * scale).abs() <= 1e-9 * (v * scale).max(1.0), "{text}: {got}");
    }

    #[test]
    fn duration_parser_never_panics(s in "\\PC{0,12}") {
        let _ = lazarus_policy::parse_duration("--x", &s);
    }

    #[test]
    fn spec_parser_never_panics(s in "[a-z0-9:,=.]{0,30}") {
        let _ = s.parse::<PolicySpec>();
    }
}

#[test]
fn background_flush_time_is_a_lower_bound_on_the_interval() {
    // Asynchronous checkpoints (issue #16 item 5): the cost is the 10 ms stall, so Young's
    // interval is √(2·0.01·1800) = 6 s; but a flush takes 20 s, and a checkpoint taken
    // before it completes would only wait for it.
    let mut c = Clock::new();
    let mut p = Adaptive::new(Formula::Young, MtbfSource::Fixed(s(1800.0))).smoothing(0.5);
    assert!(!p.should_checkpoint(c.at(0.0)));
    assert!(p.should_checkpoint(c.at(1.0)));
    p.checkpoint_taken(c.at(1.01), s(0.01));
    let tau = p.current_interval().unwrap().as_secs_f64();
    assert!((tau - 6.0).abs() < 1e-6, "{tau}");
    p.flush_completed(s(20.0));
    assert_eq!(p.flush_estimate(), Some(s(20.0)));
    assert!(!p.should_checkpoint(c.at(1.01 + 6.5)));
    assert_eq!(p.current_interval(), Some(s(20.0)));
    assert!(!p.should_checkpoint(c.at(1.01 + 19.9)));
    assert!(p.should_checkpoint(c.at(1.01 + 20.0)));
    p.checkpoint_taken(c.at(21.02), s(0.01));
    // Smoothed like the cost: 20 + 0.5·(4 − 20) = 12 s, still above 6 s.
    p.flush_completed(s(4.0));
    assert_eq!(p.flush_estimate(), Some(s(12.0)));
    assert!(!p.should_checkpoint(c.at(21.02 + 11.9)));
    assert!(p.should_checkpoint(c.at(21.02 + 12.0)));
    // A flush shorter than the model's interval changes nothing; min/max still apply.
    let mut q = Adaptive::new(Formula::Young, MtbfSource::Fixed(s(1800.0)))
        .initial_cost(s(0.01))
        .max_interval(s(15.0));
    q.flush_completed(s(1.0));
    assert!(!q.should_checkpoint(c.at(100.0)));
    assert_eq!(q.current_interval(), Some(s(6.0)));
    q.flush_completed(s(30.0));
    q.flush_completed(s(30.0));
    assert!(!q.should_checkpoint(c.at(101.0)));
    assert_eq!(q.current_interval(), Some(s(15.0)));
}

#[test]
fn a_failed_background_flush_makes_the_next_opportunity_checkpoint() {
    // Young: √(2·0.5·1800) ≈ 42.4 s. A checkpoint reported taken at capture whose flush
    // then fails must not push the next one a whole interval later: nothing committed.
    let mut c = Clock::new();
    let mut p = Adaptive::new(Formula::Young, MtbfSource::Fixed(s(1800.0))).initial_cost(s(0.5));
    assert!(!p.should_checkpoint(c.at(0.0)));
    assert!(p.should_checkpoint(c.at(43.0)));
    p.checkpoint_taken(c.at(43.5), s(0.5));
    assert!(!p.should_checkpoint(c.at(44.0)));
    p.checkpoint_failed(c.at(45.0));
    assert!(p.should_checkpoint(c.at(45.5)), "retries at once");
    assert!(
        p.should_checkpoint(c.at(46.0)),
        "until a checkpoint is taken"
    );
    // The stall it cost was measured all the same: δ stays the measured 0.5 s.
    assert_eq!(p.cost_estimate(), Some(s(0.5)));
    p.checkpoint_taken(c.at(46.5), s(0.5));
    assert!(
        !p.should_checkpoint(c.at(47.0)),
        "then the model's interval again"
    );
    assert!(p.should_checkpoint(c.at(46.5 + 42.5)));
    // Through a Box (how a Job holds its policy) too.
    let mut b: Box<dyn Policy> = Box::new(p);
    b.checkpoint_failed(c.at(90.0));
    assert!(b.should_checkpoint(c.at(90.5)));
}
