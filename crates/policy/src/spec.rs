//! Policy specs: one string that selects and configures a policy, for flags and
//! environment variables. Grammar:
//!
//! ```text
//! steps:N                      every N steps            (EverySteps)
//! every:DURATION               every DURATION           (EveryInterval)
//! never                        no checkpoint of its own (Never)
//! FORMULA[,KEY=VALUE]...       adaptive by a model      (Adaptive)
//!   FORMULA: young | daly (higher order) | daly1 (first order) | optimal
//!   KEY: mtbf (fixed MTBF; otherwise estimated from the failure history),
//!        prior (prior MTBF, default 24h), restart, cost (initial cost), min, max:
//!        durations (mtbf, prior, max and every: > 0; min <= max); smoothing: a number
//!        in [0.01, 1]
//! ```

use crate::adaptive::{Adaptive, MtbfSource, MIN_SMOOTHING};
use crate::duration::parse_duration;
use crate::error::PolicyError;
use crate::history::{FailureHistory, DEFAULT_PRIOR_MTBF_S};
use crate::model::Formula;
use crate::{EveryInterval, EverySteps, Never, Policy};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A parsed policy spec; [`PolicySpec::build`] turns it into a policy.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicySpec {
    /// `steps:N`.
    EverySteps(u64),
    /// `every:DURATION`.
    EveryInterval(Duration),
    /// `young|daly|daly1|optimal[,key=value]...`.
    Model(ModelSpec),
    /// `never`: no checkpoint unless the program asks for one explicitly.
    Never,
}

/// The configuration of an adaptive, model-driven policy.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The formula picking the interval.
    pub formula: Formula,
    /// A fixed MTBF; `None` estimates it from the failure history with `prior`.
    pub mtbf: Option<Duration>,
    /// The prior MTBF for the estimate.
    pub prior: Duration,
    /// Restart time.
    pub restart: Duration,
    /// Initial cost estimate; `None` takes a probe checkpoint.
    pub cost: Option<Duration>,
    /// Lower bound on the interval.
    pub min: Duration,
    /// Upper bound on the interval.
    pub max: Option<Duration>,
    /// EWMA weight of each cost sample.
    pub smoothing: f64,
}

impl ModelSpec {
    /// Defaults for `formula`: estimated MTBF with a one-day prior, no restart cost,
    /// probe checkpoint, no bounds, smoothing 0.3.
    pub fn new(formula: Formula) -> ModelSpec {
        ModelSpec {
            formula,
            mtbf: None,
            prior: Duration::from_secs_f64(DEFAULT_PRIOR_MTBF_S),
            restart: Duration::ZERO,
            cost: None,
            min: Duration::ZERO,
            max: None,
            smoothing: 0.3,
        }
    }
}

impl PolicySpec {
    /// Builds the policy. `history` (usually [`FailureHistory::from_env`]) feeds the MTBF
    /// estimate when the spec has no fixed `mtbf`; other policies ignore it.
    pub fn build(&self, history: Option<FailureHistory>) -> Box<dyn Policy> {
        match self {
            PolicySpec::EverySteps(n) => Box::new(EverySteps::new(*n)),
            PolicySpec::EveryInterval(d) => Box::new(EveryInterval::new(*d)),
            PolicySpec::Never => Box::new(Never),
            PolicySpec::Model(m) => {
                let source = match m.mtbf {
                    Some(d) => MtbfSource::Fixed(d),
                    None => MtbfSource::Estimated {
                        history,
                        prior: m.prior,
                        prior_weight: 1.0,
                    },
                };
                let mut p = Adaptive::new(m.formula, source)
                    .restart(m.restart)
                    .min_interval(m.min)
                    .smoothing(m.smoothing);
                if let Some(c) = m.cost {
                    p = p.initial_cost(c);
                }
                if let Some(max) = m.max {
                    p = p.max_interval(max);
                }
                Box::new(p)
            }
        }
    }
}

impl FromStr for PolicySpec {
    type Err = PolicyError;

    fn from_str(input: &str) -> Result<PolicySpec, PolicyError> {
        let err = |reason: String| PolicyError::Spec {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if let Some(n) = s.strip_prefix("steps:") {
            let n: u64 = n
                .trim()
                .parse()
                .map_err(|_| err(format!("steps:N needs a positive integer, got {n:?}")))?;
            if n == 0 {
                return Err(err("steps:N needs N >= 1".to_string()));
            }
            return Ok(PolicySpec::EverySteps(n));
        }
        if let Some(d) = s.strip_prefix("every:") {
            return Ok(PolicySpec::EveryInterval(positive("every", d)?));
        }
        let mut parts = s.split(',');
        let name = parts.next().unwrap_or("").trim();
        if name == "never" {
            return match parts.next() {
                None => Ok(PolicySpec::Never),
                Some(p) => Err(err(format!("never takes no options, got {p:?}"))),
            };
        }
        let formula = Formula::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                err(format!(
                    "unknown policy {name:?}; expected steps:N, every:DURATION, never, young, \
                     daly, daly1 or optimal"
                ))
            })?;
        let mut spec = ModelSpec::new(formula);
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("expected key=value, got {part:?}")))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "mtbf" => spec.mtbf = Some(positive(key, value)?),
                "prior" => spec.prior = positive(key, value)?,
                "restart" => spec.restart = parse_duration(key, value)?,
                "cost" => spec.cost = Some(parse_duration(key, value)?),
                "min" => spec.min = parse_duration(key, value)?,
                "max" => spec.max = Some(positive(key, value)?),
                "smoothing" => {
                    spec.smoothing = value
                        .parse::<f64>()
                        .ok()
                        .filter(|a| (MIN_SMOOTHING..=1.0).contains(a))
                        .ok_or_else(|| {
                            err(format!(
                                "smoothing must be in [{MIN_SMOOTHING}, 1], got {value:?}"
                            ))
                        })?
                }
                _ => return Err(err(format!("unknown key {key:?}"))),
            }
        }
        if let Some(max) = spec.max.filter(|&max| max < spec.min) {
            return Err(err(format!(
                "min={:?} is above max={max:?}: no interval satisfies both",
                spec.min
            )));
        }
        Ok(PolicySpec::Model(spec))
    }
}

fn positive(key: &str, value: &str) -> Result<Duration, PolicyError> {
    let d = parse_duration(key, value)?;
    if d.is_zero() {
        Err(PolicyError::Duration {
            flag: key.to_string(),
            input: value.to_string(),
            reason: "must be > 0",
        })
    } else {
        Ok(d)
    }
}

impl fmt::Display for PolicySpec {
    /// The canonical spec string; parsing it gives back an equal spec for every spec that
    /// was parsed (durations are written as exact decimal seconds; a spec built in code
    /// that the parser refuses, such as `every:0s`, prints but does not parse back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn dur(d: Duration) -> String {
            // Exact decimal seconds. Below 2^23 s (97 days) doubles are spaced under 1 ns,
            // so the parser's nearest double rounds back to `d`; above, a fraction can be
            // off by a nanosecond (property test: spec-parsed durations still round-trip).
            let nanos = format!("{:09}", d.subsec_nanos());
            let nanos = nanos.trim_end_matches('0');
            if nanos.is_empty() {
                format!("{}s", d.as_secs())
            } else {
                format!("{}.{nanos}s", d.as_secs())
            }
        }
        match self {
            PolicySpec::EverySteps(n) => write!(f, "steps:{n}"),
            PolicySpec::EveryInterval(d) => write!(f, "every:{}", dur(*d)),
            PolicySpec::Never => f.write_str("never"),
            PolicySpec::Model(m) => {
                write!(f, "{}", m.formula.name())?;
                if let Some(d) = m.mtbf {
                    write!(f, ",mtbf={}", dur(d))?;
                }
                write!(f, ",prior={},restart={}", dur(m.prior), dur(m.restart))?;
                if let Some(d) = m.cost {
                    write!(f, ",cost={}", dur(d))?;
                }
                write!(f, ",min={}", dur(m.min))?;
                if let Some(d) = m.max {
                    write!(f, ",max={}", dur(d))?;
                }
                write!(f, ",smoothing={}", m.smoothing)
            }
        }
    }
}
