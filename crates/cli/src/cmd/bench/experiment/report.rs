//! The experiment's markdown report (results.md, also printed) and the figure's points.

use super::design::{Plan, TARGET1, TARGET2};
use super::{plot, std_err, IntervalResult, Results};
use lazarus::policy::format_seconds;

/// The design in a few lines: per interval the expected run time and failures, the spread
/// of one trial and the standard error of the mean, then the expected duration and the
/// chance of meeting each target if the model is exact.
pub(super) fn design_text(p: &Plan, trials: u32) -> String {
    let mut s = format!(
        "Design (Daly's failure process, before any trial; {trials} trial(s) per interval):\n\n\
         | interval | τ (s) | model T_w (s) | failures | SD of one trial | SE of the mean |\n\
         |---|---|---|---|---|---|\n"
    );
    for i in &p.intervals {
        s.push_str(&format!(
            "| {}×Daly | {:.3} | {:.2} | {:.1} | {:.1} % | {:.1} % |\n",
            i.multiple,
            i.interval_s,
            i.expected_s,
            i.expected_failures,
            i.trial_rel_sd * 100.0,
            i.mean_rel_se * 100.0
        ));
    }
    s.push_str(&format!(
        "\nExpected duration of the rounds: {:.1} min. If the model were exact, target 1 \
         (every |measured/model − 1| ≤ {:.0} %) would be met with probability {:.2} and \
         target 2 (1×Daly within {:.0} % of the best) with probability {:.2}.\n\n",
        p.expected_duration_s / 60.0,
        TARGET1 * 100.0,
        p.p_target1,
        TARGET2 * 100.0,
        p.p_target2
    ));
    s
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{v:+.1} %")
    } else {
        "—".to_string()
    }
}

/// The markdown report: inputs, calibration, design, the sweep table and both targets.
pub(super) fn render(r: &Results, calibrate_only: bool) -> String {
    let c = &r.calibration;
    let mut s = String::new();
    s.push_str(&format!(
        "Heat {size}×{size} on {ranks} rank(s), {steps} steps; injected SIGKILL MTBF M = {m}; \
         kill seeds {seed}..{last}; {trials} trial(s) per interval; bench wall time {el:.1} min; \
         load average (1/5/15 min) {ls} at the start, {le} at the end.\n\n",
        size = r.size,
        ranks = r.ranks,
        steps = r.steps,
        m = format_seconds(r.mtbf_s),
        seed = r.seed,
        last = r.seed + u64::from(r.trials.saturating_sub(1)),
        trials = r.trials,
        el = r.elapsed_s / 60.0,
        ls = if r.load_start.is_empty() {
            "?"
        } else {
            &r.load_start
        },
        le = if r.load_end.is_empty() {
            "?"
        } else {
            &r.load_end
        },
    ));
    s.push_str(&format!(
        "Calibration: start-up {:.3} s, {:.4} ms/step; checkpoint cost δ = {:.4} s (median of \
         {:?} s per checkpoint, {} checkpoints over {} steps); restart R = {:.3} s (median \
         kill → every rank resumed, as timed by the supervisor, of {:?} s; of which kill → \
         ranks spawned {:.3} s). Failure-free baseline T_s = {:.2} s (no checkpoints). \
         Young {}, Daly {}, optimum {}.\n\n",
        c.startup_s,
        c.step_s * 1e3,
        c.cost_s,
        c.cost_samples_s
            .iter()
            .map(|v| (v * 1e4).round() / 1e4)
            .collect::<Vec<_>>(),
        c.cal_checkpoints,
        c.cal_steps,
        c.restart_s,
        c.restart_samples_s
            .iter()
            .map(|v| (v * 1e3).round() / 1e3)
            .collect::<Vec<_>>(),
        c.spawn_latency_s,
        r.baseline_s,
        format_seconds(r.young_s),
        format_seconds(r.daly_s),
        format_seconds(r.optimal_s),
    ));
    s.push_str(&design_text(&r.design, r.trials));
    if !r.rounds.is_empty() {
        let b: Vec<String> = r
            .rounds
            .iter()
            .map(|x| format!("{:.2}", x.failure_free_s))
            .collect();
        s.push_str(&format!(
            "Failure-free run at the start of each round: {} s. Each round sets its step \
             counts from its own time per step (so τ is the intended multiple of Daly's \
             interval in seconds), runs the intervals in a seeded shuffled order, and each \
             trial is predicted by T_w from its round's T_s; the model column is the mean \
             of those predictions (unconditioned: the observed failures are not used).\n\n",
            b.join(", ")
        ));
    }
    s.push_str(
        "| interval | every (steps) | τ (s) | failures (measured / model) | R in trials (s) | \
         measured (s) | model (s) | measured/model − 1 | vs failure-free |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let ff = super::failure_free_s(&r.rounds, r.baseline_s);
    for i in &r.sweep {
        let measured = if i.trials.is_empty() {
            "—".to_string()
        } else {
            format!("{:.2} ± {:.2}", i.mean_s, i.stderr_s)
        };
        let failures = if i.trials.is_empty() {
            format!("— / {:.1}", i.expected_failures)
        } else {
            format!("{:.1} / {:.1}", i.mean_failures, i.expected_failures)
        };
        let rec = if i.mean_recovery_s.is_finite() {
            format!("{:.3}", i.mean_recovery_s)
        } else {
            "—".to_string()
        };
        s.push_str(&format!(
            "| {}×Daly | {:.0} | {:.3} | {} | {} | {} | {:.2} | {} | {} |\n",
            i.multiple,
            i.every_steps,
            i.interval_s,
            failures,
            rec,
            measured,
            i.predicted_s,
            pct(i.error_pct),
            pct((i.mean_s / ff - 1.0) * 100.0),
        ));
    }
    s.push_str("\n(measured: mean ± standard error over the trials.)\n");
    if calibrate_only {
        s.push_str("\nCalibration only: no kill trials were run.\n");
        return s;
    }
    s.push_str(&observed_mtbf(r));
    s.push_str(&targets(&r.sweep));
    s
}

/// The injected failure process as it happened: failures over the time they could
/// strike (wall time minus each kill → respawn gap, when the supervisor's kill clock is
/// stopped), against the M the model was given. Taken from one interval only, the one
/// with the longest expected run (most exposure, chosen by the model, not by the data):
/// the intervals of a round share their kill draws (common random numbers), so pooling
/// them would count the same draws several times and overstate the precision.
fn observed_mtbf(r: &Results) -> String {
    let Some(i) = r
        .sweep
        .iter()
        .filter(|i| i.predicted_s.is_finite())
        .max_by(|a, b| a.predicted_s.total_cmp(&b.predicted_s))
    else {
        return String::new();
    };
    let (mut failures, mut exposure) = (0u64, 0.0f64);
    for t in &i.trials {
        failures += u64::from(t.run.failures);
        exposure += t.run.wall_s - t.run.spawn_latencies_s.iter().sum::<f64>();
    }
    if failures == 0 {
        return format!(
            "\nInjected failures at {}×Daly: none in {exposure:.1} s of exposure (M = {:.2} s \
             given).\n",
            i.multiple, r.mtbf_s
        );
    }
    let f = failures as f64;
    // Normal approximation of the Poisson count: ±1.96·√F.
    let (lo, hi) = (f + 1.96 * f.sqrt(), (f - 1.96 * f.sqrt()).max(0.5));
    format!(
        "\nInjected failures at {}×Daly (the longest expected run; the intervals of a round \
         share their kill draws, so they are not pooled): {failures} in {exposure:.1} s of \
         exposure (wall time minus the kill → respawn gaps, when no kill can be drawn): \
         observed MTBF {:.2} s (95 % range {:.2}–{:.2} s) for M = {:.2} s given.\n",
        i.multiple,
        exposure / f,
        exposure / lo,
        exposure / hi,
        r.mtbf_s
    )
}

/// Both targets, each with its statistical uncertainty so a miss can be told from noise.
fn targets(sweep: &[IntervalResult]) -> String {
    let mut s = String::new();
    let worst = sweep
        .iter()
        .filter(|i| i.error_pct.is_finite())
        .max_by(|a, b| a.error_pct.abs().total_cmp(&b.error_pct.abs()));
    if let Some(w) = worst {
        let se = w.stderr_s / w.predicted_s * 100.0;
        s.push_str(&format!(
            "\nTarget 1 (measured within {:.0} % of the model, every interval): worst {}×Daly \
             {:+.1} % (± {:.1} % standard error) — {}.\n",
            TARGET1 * 100.0,
            w.multiple,
            w.error_pct,
            se,
            if w.error_pct.abs() <= TARGET1 * 100.0 {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    let best = sweep
        .iter()
        .filter(|i| i.mean_s.is_finite())
        .min_by(|a, b| a.mean_s.total_cmp(&b.mean_s));
    let daly_row = sweep.iter().min_by(|a, b| {
        (a.multiple - 1.0)
            .abs()
            .total_cmp(&(b.multiple - 1.0).abs())
    });
    if let (Some(b), Some(d)) = (best, daly_row) {
        let gap = (d.mean_s / b.mean_s - 1.0) * 100.0;
        // Trials of one round share the kill seed: the paired differences carry the
        // comparison's real uncertainty (common random numbers).
        let diffs: Vec<f64> = d
            .trials
            .iter()
            .zip(&b.trials)
            .map(|(x, y)| x.run.wall_s - y.run.wall_s)
            .collect();
        let se = std_err(&diffs) / b.mean_s * 100.0;
        s.push_str(&format!(
            "Target 2 (Daly's interval within {:.0} % of the best fixed interval): best is \
             {}×Daly ({:.2} s), {}×Daly measured {:.2} s, {gap:+.1} % (± {se:.1} % standard \
             error of the paired difference) — {}.\n",
            TARGET2 * 100.0,
            b.multiple,
            b.mean_s,
            d.multiple,
            d.mean_s,
            if gap <= TARGET2 * 100.0 {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    s
}

/// The figure's points: each interval at the mean τ its trials used, with the mean of
/// their predictions.
pub(super) fn points(r: &Results) -> Vec<plot::Point> {
    r.sweep
        .iter()
        .map(|s| plot::Point {
            interval_s: s.interval_s,
            predicted_s: s.predicted_s,
            trials: s.trials.iter().map(|o| o.run.wall_s).collect(),
        })
        .collect()
}
