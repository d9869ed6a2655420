//! The failure history a supervisor hands to restarted ranks, and the MTBF estimate made
//! from it.
//!
//! Hand-off format (environment of every rank the supervisor starts):
//! - `LAZARUS_JOB_START`: the job's first launch, unix seconds (decimal allowed, e.g.
//!   `1795000000.250`).
//! - `LAZARUS_FAILURES`: comma-separated unix seconds of every job failure so far (a rank
//!   died and the job was restarted), in any order; empty or unset means none. Whitespace
//!   around items is ignored; an empty item (`1,,2`) is an error.
//!
//! Failures are counted per job, not per rank: any rank's death restarts the job, which is
//! the `M` of the model.

use crate::error::PolicyError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Failures of this job so far, and how long it has been exposed to failure.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureHistory {
    job_start: f64,
    failures: Vec<f64>,
    observed_at: f64,
}

/// How far in the future (seconds) a failure time may lie before it is rejected; absorbs
/// small clock differences between the supervisor and a rank's host.
const FUTURE_SLACK_S: f64 = 300.0;

/// 2000-01-01T00:00:00Z in unix seconds. Observed by a clock past it (a real one), a job
/// start before it is no job's start but an unset default (`0`) or a time in another
/// unit, and would silently mean decades of exposure: an MTBF estimate so large that the
/// policy all but stops checkpointing. Injected clocks before it (tests) are not judged.
const EARLIEST_JOB_START_S: f64 = 946_684_800.0;

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse_time(var: &'static str, item: &str) -> Result<f64, PolicyError> {
    let t: f64 = item.trim().parse().map_err(|_| PolicyError::Env {
        var,
        input: item.to_string(),
        reason: "not a number of unix seconds".to_string(),
    })?;
    if !t.is_finite() || t < 0.0 {
        return Err(PolicyError::Env {
            var,
            input: item.to_string(),
            reason: "unix seconds must be finite and >= 0".to_string(),
        });
    }
    Ok(t)
}

impl FailureHistory {
    /// Name of the variable holding the job's start time.
    pub const JOB_START_VAR: &'static str = "LAZARUS_JOB_START";
    /// Name of the variable holding the failure times.
    pub const FAILURES_VAR: &'static str = "LAZARUS_FAILURES";

    /// A history observed at `observed_at` (unix seconds). Errors if any time is not
    /// finite, negative, a failure precedes `job_start`, or the start or a failure lies
    /// more than 5 minutes after `observed_at`. Failures are kept sorted.
    pub fn new(
        job_start: f64,
        mut failures: Vec<f64>,
        observed_at: f64,
    ) -> Result<FailureHistory, PolicyError> {
        let js = job_start.to_string();
        parse_time(Self::JOB_START_VAR, &js)?;
        if observed_at >= EARLIEST_JOB_START_S && job_start < EARLIEST_JOB_START_S {
            return Err(PolicyError::Env {
                var: Self::JOB_START_VAR,
                input: js,
                reason: "before 2000-01-01: an unset default or not unix seconds (the job's \
                         first launch, e.g. 1795000000.250)"
                    .to_string(),
            });
        }
        if job_start > observed_at + FUTURE_SLACK_S {
            // E.g. milliseconds given for seconds: the exposure would silently be 0.
            return Err(PolicyError::Env {
                var: Self::JOB_START_VAR,
                input: js,
                reason: format!("job start in the future (now is {observed_at:.3})"),
            });
        }
        for &f in &failures {
            let item = f.to_string();
            parse_time(Self::FAILURES_VAR, &item)?;
            if f < job_start {
                return Err(PolicyError::Env {
                    var: Self::FAILURES_VAR,
                    input: item,
                    reason: format!("failure before the job started at {job_start}"),
                });
            }
            if f > observed_at + FUTURE_SLACK_S {
                return Err(PolicyError::Env {
                    var: Self::FAILURES_VAR,
                    input: item,
                    reason: format!("failure in the future (now is {observed_at:.3})"),
                });
            }
        }
        failures.sort_by(f64::total_cmp);
        Ok(FailureHistory {
            job_start,
            failures,
            observed_at,
        })
    }

    /// Parses the two variables' values as read at `now_unix`. `Ok(None)` when neither is
    /// set; an error when failures are given without a start, or any item is malformed
    /// (the error names the variable and shows the item).
    pub fn parse(
        job_start: Option<&str>,
        failures: Option<&str>,
        now_unix: f64,
    ) -> Result<Option<FailureHistory>, PolicyError> {
        let failures = failures.map(str::trim).filter(|s| !s.is_empty());
        let Some(start) = job_start.map(str::trim).filter(|s| !s.is_empty()) else {
            return match failures {
                None => Ok(None),
                Some(f) => Err(PolicyError::Env {
                    var: Self::FAILURES_VAR,
                    input: f.to_string(),
                    reason: format!("set, but {} is not", Self::JOB_START_VAR),
                }),
            };
        };
        let start = parse_time(Self::JOB_START_VAR, start)?;
        let times = match failures {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|item| {
                    if item.trim().is_empty() {
                        Err(PolicyError::Env {
                            var: Self::FAILURES_VAR,
                            input: list.to_string(),
                            reason: "empty item in comma-separated list".to_string(),
                        })
                    } else {
                        parse_time(Self::FAILURES_VAR, item)
                    }
                })
                .collect::<Result<Vec<f64>, PolicyError>>()?,
        };
        FailureHistory::new(start, times, now_unix).map(Some)
    }

    /// Reads `LAZARUS_JOB_START` and `LAZARUS_FAILURES` from the environment, observed now.
    /// A variable that is not valid UTF-8 is an error naming it.
    pub fn from_env() -> Result<Option<FailureHistory>, PolicyError> {
        let read = |var: &'static str| match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(PolicyError::Env {
                var,
                input: v.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".to_string(),
            }),
        };
        let start = read(Self::JOB_START_VAR)?;
        let failures = read(Self::FAILURES_VAR)?;
        FailureHistory::parse(start.as_deref(), failures.as_deref(), now_unix())
    }

    /// A fresh history for a job starting at `job_start` (unix seconds), for supervisors.
    pub fn starting_at(job_start: f64) -> Result<FailureHistory, PolicyError> {
        FailureHistory::new(job_start, Vec::new(), job_start)
    }

    /// Records a failure at `t` (unix seconds) and advances the observation time to it.
    /// Errors (leaving the history unchanged) if `t` is not finite, negative, or before
    /// the job's start.
    pub fn record_failure(&mut self, t: f64) -> Result<(), PolicyError> {
        let item = t.to_string();
        parse_time(Self::FAILURES_VAR, &item)?;
        if t < self.job_start {
            return Err(PolicyError::Env {
                var: Self::FAILURES_VAR,
                input: item,
                reason: format!("failure before the job started at {}", self.job_start),
            });
        }
        let at = self.failures.partition_point(|&f| f <= t);
        self.failures.insert(at, t);
        self.observed_at = self.observed_at.max(t);
        Ok(())
    }

    /// The `(name, value)` pairs a supervisor sets in a restarted rank's environment.
    /// Times are written with millisecond precision; `parse` reads them back.
    pub fn env_vars(&self) -> [(&'static str, String); 2] {
        let list: Vec<String> = self.failures.iter().map(|t| format!("{t:.3}")).collect();
        [
            (Self::JOB_START_VAR, format!("{:.3}", self.job_start)),
            (Self::FAILURES_VAR, list.join(",")),
        ]
    }

    /// The job's start, unix seconds.
    pub fn job_start(&self) -> f64 {
        self.job_start
    }
    /// Failure times, unix seconds, sorted ascending.
    pub fn failures(&self) -> &[f64] {
        &self.failures
    }
    /// When the history was read, unix seconds.
    pub fn observed_at(&self) -> f64 {
        self.observed_at
    }

    /// Seconds the job has been exposed to failure: from its start to the observation,
    /// plus `since_observed` (the time this process has run since reading the history).
    pub fn exposure(&self, since_observed: Duration) -> f64 {
        (self.observed_at - self.job_start).max(0.0) + since_observed.as_secs_f64()
    }

    /// The MTBF estimate in seconds: `(E + w·M₀) / (n + w)` where `E` is the exposure,
    /// `n` the number of failures, `M₀` the prior MTBF and `w > 0` the prior's weight in
    /// pseudo-failures. This is the reciprocal of the posterior mean failure rate under a
    /// Gamma(w, w·M₀) prior: with no data it is `M₀`; with many failures it tends to `E/n`.
    /// A non-finite or non-positive `w` or `M₀` falls back to weight 1 and `M₀` = 1 day.
    pub fn mtbf_estimate(&self, prior_mtbf: Duration, prior_weight: f64, since: Duration) -> f64 {
        let m0 = prior_mtbf.as_secs_f64();
        let m0 = if m0 > 0.0 { m0 } else { DEFAULT_PRIOR_MTBF_S };
        let w = if prior_weight.is_finite() && prior_weight > 0.0 {
            prior_weight
        } else {
            1.0
        };
        (self.exposure(since) + w * m0) / (self.failures.len() as f64 + w)
    }
}

/// The prior MTBF used when none is configured: one day.
pub const DEFAULT_PRIOR_MTBF_S: f64 = 86400.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn unset_is_none_and_empty_failures_are_zero() {
        assert_eq!(FailureHistory::parse(None, None, 100.0).unwrap(), None);
        let h = FailureHistory::parse(Some("10"), Some(""), 100.0)
            .unwrap()
            .unwrap();
        assert!(h.failures().is_empty());
        assert_eq!(h.exposure(Duration::from_secs(5)), 95.0);
    }

    #[test]
    fn parses_and_sorts() {
        let h = FailureHistory::parse(Some("1000.5"), Some(" 1200, 1100.25 "), 1300.0)
            .unwrap()
            .unwrap();
        assert_eq!(h.failures(), &[1100.25, 1200.0]);
        assert_eq!(h.job_start(), 1000.5);
    }

    #[test]
    fn malformed_inputs_name_the_variable() {
        let cases = [
            (None, Some("5")),
            (Some("x"), None),
            (Some("10"), Some("20,,30")),
            (Some("10"), Some("5")),
            (Some("10"), Some("1e9")),
            (Some("10"), Some("nan")),
            (Some("-1"), None),
        ];
        for (start, failures) in cases {
            let e = FailureHistory::parse(start, failures, 100.0).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEnvironment);
            assert!(e.to_string().starts_with("LAZARUS_"), "{e}");
        }
    }

    /// `LAZARUS_JOB_START=0` (an unset default) was accepted and meant 56 years of
    /// exposure: an MTBF estimate so large that a failing job all but stopped
    /// checkpointing. Now refused, naming the variable and the value.
    #[test]
    fn a_job_start_of_0_is_refused() {
        let now = 1_795_000_000.0;
        for start in ["0", "1795000", "946684799.9"] {
            let e = FailureHistory::parse(Some(start), Some(""), now).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEnvironment);
            let msg = e.to_string();
            assert!(
                msg.starts_with("LAZARUS_JOB_START") && msg.contains(start),
                "{msg}"
            );
            assert!(msg.contains("2000-01-01"), "{msg}");
        }
        assert!(FailureHistory::parse(Some("946684800"), None, now).is_ok());
        assert!(
            FailureHistory::starting_at(0.0).is_ok(),
            "an injected clock"
        );
    }

    #[test]
    fn a_job_start_in_the_future_is_refused() {
        // Milliseconds instead of seconds: silently an exposure of 0 (the MTBF estimate
        // never grew past the prior), now an error naming the variable and the value.
        let e = FailureHistory::parse(Some("1795000000250"), None, 1_795_000_000.0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidEnvironment);
        let msg = e.to_string();
        assert!(
            msg.starts_with("LAZARUS_JOB_START") && msg.contains("1795000000250"),
            "{msg}"
        );
        assert!(msg.contains("future"), "{msg}");
        // Within the clock-skew slack it is accepted (exposure 0).
        let h = FailureHistory::parse(Some("1100"), None, 1000.0)
            .unwrap()
            .unwrap();
        assert_eq!(h.exposure(Duration::ZERO), 0.0);
    }

    #[test]
    fn env_round_trip() {
        let mut h = FailureHistory::starting_at(1_795_000_000.25).unwrap();
        h.record_failure(1_795_000_100.5).unwrap();
        h.record_failure(1_795_000_050.0).unwrap();
        let [(a, va), (b, vb)] = h.env_vars();
        assert_eq!((a, b), ("LAZARUS_JOB_START", "LAZARUS_FAILURES"));
        let back = FailureHistory::parse(Some(&va), Some(&vb), h.observed_at())
            .unwrap()
            .unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn estimator_prior_and_limit() {
        let h = FailureHistory::new(0.0, vec![], 0.0).unwrap();
        let day = Duration::from_secs(86400);
        assert_eq!(h.mtbf_estimate(day, 1.0, Duration::ZERO), 86400.0);
        let short: Vec<f64> = (1..=1000).map(|i| i as f64 * 10.0).collect();
        let h = FailureHistory::new(0.0, short, 10000.0).unwrap();
        let m = h.mtbf_estimate(day, 1.0, Duration::ZERO);
        assert!((m - (10000.0 + 86400.0) / 1001.0).abs() < 1e-9, "{m}");
        // With exposure far beyond the prior, the estimate tends to E/n.
        let long: Vec<f64> = (1..=1000).map(|i| i as f64 * 1e4).collect();
        let h = FailureHistory::new(0.0, long, 1e7).unwrap();
        let m = h.mtbf_estimate(day, 1.0, Duration::ZERO);
        assert!((m / 1e4 - 1.0).abs() < 0.01, "{m}");
    }
}
