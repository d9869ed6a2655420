//! `lazarus bench experiment`: Young/Daly in practice. The distributed heat example runs
//! under `lazarus run` (the supervisor) while a seeded Poisson process SIGKILLs a random
//! rank; the measured wall time is compared with the failure-free run and with
//! `Model::expected_wall_time`, for a sweep of fixed intervals around Daly's.
//!
//! Pipeline (docs/EXPERIMENT.md has the reasoning and the measured results):
//! 1. calibrate, every run under `lazarus run` exactly as the trials run: the start-up cost
//!    O (a 0-step run), the time per step (a run without checkpoints), the checkpoint cost
//!    δ (the same run with ~10 checkpoints, minus the first, divided by their number) and
//!    the restart cost R (a run that restores the newest checkpoint and exits at once:
//!    process start, rendezvous, restore);
//! 2. the failure-free baseline T_s: the full run (steps chosen for `--work`) without
//!    checkpoints and without kills; its checksum is the reference every trial must print;
//! 3. the model: `Model::new(δ, M, R)`, Daly's higher-order interval τ_D; the sweep turns
//!    each multiple of τ_D into a step count K (`heat --every K`), the interval actually
//!    used is K × time-per-step;
//! 4. trials: trial t of every interval uses seed `--seed + t` (common random numbers: the
//!    intervals are compared under the same failure schedules);
//! 5. a markdown table, a JSON file and an SVG (measured points over the model's curve).
//!
//! The kills are real: `lazarus run --repo DIR --inject-kill-mtbf M --seed S` (the
//! supervisor's seeded Poisson fault injection) SIGKILLs a random rank at exponentially
//! distributed times after every (re)start, and the supervisor restarts all ranks from the
//! newest committed checkpoint. Each trial's checksum must equal the failure-free run's.

use crate::cmd::CmdResult;
use lazarus::policy::{format_seconds, parse_duration, Formula, Model};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod plot;

/// Flags of `lazarus bench experiment`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ranks of the heat job (`lazarus run -n`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ranks: u32,
    /// Failure-free solve time to aim for; the step count is derived from the calibration.
    #[arg(long, default_value = "120s")]
    pub work: String,
    /// Mean time between injected SIGKILLs of the whole job.
    #[arg(long, default_value = "20s")]
    pub mtbf: String,
    /// Seed of the kill schedule; trial t uses seed + t for every interval.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trials per interval.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trials: u32,
    /// Intervals as multiples of Daly's, comma-separated (`0.25x,0.5x,1x,2x,4x`).
    #[arg(long, default_value = "0.25x,0.5x,1x,2x,4x")]
    pub intervals: String,
    /// Edge of the heat grid (cells); the checkpoint holds size² f64.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(3..=16384))]
    pub size: u64,
    /// Where the table (results.md), results.json and walltime.svg are written.
    #[arg(long, default_value = "docs/experiment")]
    pub out: PathBuf,
    /// A heat binary taking `--steps N --size N --every K` (e.g. target/release/examples/heat)
    /// [default: this executable's built-in copy of examples/heat.rs, `lazarus __heat-rank`].
    #[arg(long)]
    pub heat: Option<PathBuf>,
    /// Directory for the scratch repositories [default: the system temp dir].
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Restart budget per trial (`lazarus run --max-restarts`).
    #[arg(long, default_value_t = 10_000)]
    pub max_restarts: u32,
    /// Computing time of each calibration run (longer: a steadier δ and time per step).
    #[arg(long, default_value = "3s")]
    pub calibration: String,
    /// Stop after the calibration, the baseline and the model (no kills).
    #[arg(long)]
    pub calibrate_only: bool,
}

/// Errors of the experiment, each naming the run or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A flag's value is unusable.
    #[error("--{flag}: {reason}")]
    Flag {
        /// the flag without dashes
        flag: &'static str,
        /// why
        reason: String,
    },
    /// The `--heat` binary is missing.
    #[error("--heat {0}: no such file")]
    NoHeat(PathBuf),
    /// A run could not be started or watched.
    #[error("{what}: {source}")]
    Io {
        /// which run or file
        what: String,
        /// the I/O error
        source: std::io::Error,
    },
    /// A run failed, timed out or printed no checksum.
    #[error("{what}: {reason}\n--- stderr (last lines) ---\n{stderr}")]
    Run {
        /// which run
        what: String,
        /// what went wrong
        reason: String,
        /// the end of its stderr
        stderr: String,
    },
    /// The measurements cannot feed the model.
    #[error("calibration: {0}")]
    Calibration(String),
}

/// One finished job: wall time, injected failures, checksum.
#[derive(Clone, Debug, Serialize)]
struct RunOutcome {
    wall_s: f64,
    failures: u32,
    checksum: String,
    /// The model's prediction for this trial, from its round's baseline (0 outside trials).
    predicted_s: f64,
}

/// What the calibration measured, all seconds.
#[derive(Clone, Debug, Serialize)]
struct Calibration {
    startup_s: f64,
    step_s: f64,
    cal_steps: u64,
    cal_checkpoints: u64,
    cost_s: f64,
    restart_s: f64,
}

/// One interval of the sweep with its trials.
#[derive(Clone, Debug, Serialize)]
struct IntervalResult {
    multiple: f64,
    every_steps: u64,
    interval_s: f64,
    predicted_s: f64,
    trials: Vec<RunOutcome>,
    mean_s: f64,
    stderr_s: f64,
    mean_failures: f64,
    error_pct: f64,
}

/// Everything written to results.json.
#[derive(Clone, Debug, Serialize)]
struct Results {
    ranks: u32,
    size: u64,
    steps: u64,
    seed: u64,
    trials: u32,
    mtbf_s: f64,
    calibration: Calibration,
    baseline_s: f64,
    baseline_checksum: String,
    young_s: f64,
    daly_s: f64,
    optimal_s: f64,
    sweep: Vec<IntervalResult>,
    /// The failure-free run repeated before each round of trials (load drift).
    round_baselines_s: Vec<f64>,
}

/// How to start a job under `lazarus run`.
struct Launch {
    lazarus: PathBuf,
    /// The rank program and the arguments before heat's own flags.
    heat: PathBuf,
    heat_prefix: Vec<&'static str>,
    ranks: u32,
    size: u64,
    max_restarts: u32,
}

/// A kill schedule for one run.
#[derive(Clone, Copy)]
struct Kills {
    mtbf: Duration,
    seed: u64,
}

/// A scratch repository removed on drop (also on error paths).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Launch {
    /// Runs heat for `steps` steps, checkpointing every `every` steps into `repo`.
    fn run(
        &self,
        what: &str,
        repo: &Path,
        steps: u64,
        every: u64,
        kills: Option<Kills>,
        timeout: Duration,
    ) -> Result<RunOutcome, ExperimentError> {
        let mut cmd = Command::new(&self.lazarus);
        // Every run, also without kills, goes through the supervisor, so the calibration
        // measures the same path (output commit, repository lock) as the trials.
        cmd.arg("run").arg("-n").arg(self.ranks.to_string());
        cmd.arg("--repo").arg(repo);
        cmd.arg("--max-restarts").arg(self.max_restarts.to_string());
        if let Some(k) = kills {
            cmd.arg("--inject-kill-mtbf")
                .arg(format!("{}ms", k.mtbf.as_millis()));
            cmd.arg("--seed").arg(k.seed.to_string());
        }
        cmd.arg("--").arg(&self.heat).args(&self.heat_prefix);
        for (flag, v) in [
            ("--steps", steps),
            ("--size", self.size),
            ("--every", every),
        ] {
            cmd.arg(flag).arg(v.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let child = cmd.spawn().map_err(|source| ExperimentError::Io {
            what: format!("{what}: starting {}", self.lazarus.display()),
            source,
        })?;
        let (status, stdout, stderr) =
            wait_with_timeout(child, timeout).map_err(|source| ExperimentError::Io {
                what: format!("{what}: waiting for lazarus run"),
                source,
            })?;
        let wall_s = t0.elapsed().as_secs_f64();
        let tail = tail_lines(&stderr, 15);
        let fail = |reason: String| ExperimentError::Run {
            what: what.to_string(),
            reason,
            stderr: tail.clone(),
        };
        let Some(status) = status else {
            return Err(fail(format!(
                "timed out after {} (stopped)",
                format_seconds(timeout.as_secs_f64())
            )));
        };
        if !status.success() {
            return Err(fail(format!("lazarus run exited with {status}")));
        }
        let checksum = stdout
            .lines()
            .rev()
            .find_map(|l| l.split_once("checksum=").map(|(_, c)| c.trim().to_string()))
            .ok_or_else(|| fail("no `checksum=` line on stdout".into()))?;
        Ok(RunOutcome {
            wall_s,
            failures: count_failures(&stderr),
            checksum,
            predicted_s: 0.0,
        })
    }
}

/// Injected failures the supervisor reported (one `(injected)` progress line each).
fn count_failures(stderr: &str) -> u32 {
    stderr
        .lines()
        .filter(|l| l.starts_with("lazarus: ") && l.contains("(injected)"))
        .count() as u32
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits for `child`, reading its output on two threads; on timeout stops it (SIGTERM so
/// `lazarus run` stops its ranks, then SIGKILL) and returns `None` as the status.
fn wait_with_timeout(
    mut child: Child,
    timeout: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, String, String)> {
    fn reader(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    }
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let grace = Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Parses `0.25x,0.5x,1x` (the `x` is optional) into positive multiples, deduplicated.
fn parse_multiples(s: &str) -> Result<Vec<f64>, ExperimentError> {
    let bad = |reason: String| ExperimentError::Flag {
        flag: "intervals",
        reason,
    };
    let mut out: Vec<f64> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = part.strip_suffix(['x', 'X']).unwrap_or(part);
        let v: f64 = num
            .parse()
            .map_err(|_| bad(format!("{part:?} is not a multiple like 0.5x")))?;
        if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
            return Err(bad(format!("{part:?} must be in (0, 1000]")));
        }
        if !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Err(bad("no interval given".into()));
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn duration_flag(flag: &'static str, v: &str) -> Result<f64, ExperimentError> {
    let d = parse_duration(&format!("--{flag}"), v).map_err(|e| ExperimentError::Flag {
        flag,
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(ExperimentError::Flag {
            flag,
            reason: "must be positive".into(),
        });
    }
    Ok(d.as_secs_f64())
}

/// The rank program: `--heat PATH`, else this executable's hidden `__heat-rank` (the same
/// examples/heat.rs, compiled into the CLI), so the bench needs nothing but `lazarus`.
fn heat_program(
    lazarus: &Path,
    flag: Option<&Path>,
) -> Result<(PathBuf, Vec<&'static str>), ExperimentError> {
    match flag {
        Some(p) if p.is_file() => Ok((p.to_path_buf(), Vec::new())),
        Some(p) => Err(ExperimentError::NoHeat(p.to_path_buf())),
        None => Ok((lazarus.to_path_buf(), vec!["__heat-rank"])),
    }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Standard error of the mean (0 for a single sample).
fn std_err(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    (var / xs.len() as f64).sqrt()
}

/// Calibration runs, under the same `lazarus run` path as the trials.
fn calibrate(
    launch: &Launch,
    scratch: &Path,
    target_s: f64,
) -> Result<Calibration, ExperimentError> {
    let never = u64::MAX;
    let timeout = Duration::from_secs(300);
    let fresh = |name: &str| -> Result<Scratch, ExperimentError> {
        let p = scratch.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|source| ExperimentError::Io {
            what: format!("creating {}", p.display()),
            source,
        })?;
        Ok(Scratch(p))
    };
    // Start-up: median of three 0-step runs (process start, rendezvous, repository open).
    let mut starts = Vec::new();
    for i in 0..3 {
        let repo = fresh(&format!("cal-start-{i}"))?;
        starts.push(
            launch
                .run("calibration (0 steps)", &repo.0, 0, never, None, timeout)?
                .wall_s,
        );
    }
    starts.sort_by(f64::total_cmp);
    let startup_s = starts.get(1).copied().unwrap_or(0.0);
    // Steps: grow until the computing part reaches the target.
    let mut steps = 16u64;
    let step_s = loop {
        let repo = fresh("cal-steps")?;
        let w = launch.run("calibration (steps)", &repo.0, steps, never, None, timeout)?;
        let compute = w.wall_s - startup_s;
        if compute >= target_s || steps >= 1 << 24 {
            break compute.max(1e-9) / steps as f64;
        }
        let factor = if compute > target_s / 30.0 {
            (1.2 * target_s / compute).ceil()
        } else {
            8.0
        };
        steps = steps.saturating_mul((factor as u64).clamp(2, 64));
    };
    let plain = startup_s + step_s * steps as f64;
    // Checkpoint cost: the same run with ~10 checkpoints (at every, 2·every, ... < steps).
    let every = (steps / 10).max(1);
    let n_ck = (steps - 1) / every;
    let repo = fresh("cal-ckpt")?;
    let w = launch.run(
        "calibration (checkpoints)",
        &repo.0,
        steps,
        every,
        None,
        timeout,
    )?;
    if n_ck == 0 {
        return Err(ExperimentError::Calibration(
            "the calibration run is too short to take a checkpoint".into(),
        ));
    }
    let cost_s = (w.wall_s - plain) / n_ck as f64;
    if cost_s <= 0.0 {
        return Err(ExperimentError::Calibration(format!(
            "{n_ck} checkpoints took no measurable time ({:.3} s with, {plain:.3} s without); \
             use a larger --size",
            w.wall_s
        )));
    }
    // Restart: restore the newest checkpoint (step n_ck·every) and stop at once.
    let mut restarts = Vec::new();
    for _ in 0..3 {
        restarts.push(
            launch
                .run(
                    "calibration (restart)",
                    &repo.0,
                    n_ck * every,
                    never,
                    None,
                    timeout,
                )?
                .wall_s,
        );
    }
    restarts.sort_by(f64::total_cmp);
    let restart_s = restarts.get(1).copied().unwrap_or(0.0);
    Ok(Calibration {
        startup_s,
        step_s,
        cal_steps: steps,
        cal_checkpoints: n_ck,
        cost_s,
        restart_s,
    })
}

/// Runs `lazarus bench experiment`.
pub fn main(args: Args) -> CmdResult {
    let work = duration_flag("work", &args.work)?;
    let mtbf = duration_flag("mtbf", &args.mtbf)?;
    let calibration = duration_flag("calibration", &args.calibration)?;
    let multiples = parse_multiples(&args.intervals)?;
    let lazarus = std::env::current_exe().map_err(|source| ExperimentError::Io {
        what: "locating this executable".into(),
        source,
    })?;
    let (heat, heat_prefix) = heat_program(&lazarus, args.heat.as_deref())?;
    let launch = Launch {
        lazarus,
        heat,
        heat_prefix,
        ranks: args.ranks,
        size: args.size,
        max_restarts: args.max_restarts,
    };
    let scratch_root = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(scratch_root.join(format!("lazarus-experiment-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|source| ExperimentError::Io {
        what: format!("creating {}", scratch.0.display()),
        source,
    })?;
    std::fs::create_dir_all(&args.out).map_err(|source| ExperimentError::Io {
        what: format!("creating --out {}", args.out.display()),
        source,
    })?;

    eprintln!(
        "experiment: {} rank(s), grid {}², MTBF {}, seed {}, {} trial(s); calibrating...",
        args.ranks,
        args.size,
        format_seconds(mtbf),
        args.seed,
        args.trials
    );
    let cal = calibrate(&launch, &scratch.0, calibration)?;
    eprintln!(
        "experiment: start-up {:.3} s, {:.3} ms/step, checkpoint δ = {:.3} s, restart R = {:.3} s",
        cal.startup_s,
        cal.step_s * 1e3,
        cal.cost_s,
        cal.restart_s
    );
    let steps = (((work - cal.startup_s) / cal.step_s).round() as u64).max(1);
    let repo = Scratch(scratch.0.join("baseline"));
    let baseline = launch.run(
        "failure-free baseline",
        &repo.0,
        steps,
        u64::MAX,
        None,
        Duration::from_secs_f64(work * 10.0 + 60.0),
    )?;
    drop(repo);
    let t_s = baseline.wall_s;
    eprintln!(
        "experiment: baseline {steps} steps without checkpoints or failures: {t_s:.2} s \
         (checksum {})",
        baseline.checksum
    );
    let model = Model::new(cal.cost_s, mtbf, cal.restart_s)
        .map_err(|e| ExperimentError::Calibration(e.to_string()))?;
    let daly = model.daly_higher_order();
    eprintln!(
        "experiment: Young {}, Daly {}, optimum {}; expected run time at Daly {:.2} s",
        format_seconds(model.young()),
        format_seconds(daly),
        format_seconds(model.optimal()),
        model.expected_wall_time(daly, t_s)
    );

    let mut sweep: Vec<IntervalResult> = Vec::new();
    for &mult in &multiples {
        let every = ((mult * daly / cal.step_s).round() as u64).max(1);
        if sweep.iter().any(|r| r.every_steps == every) {
            continue;
        }
        let interval_s = every as f64 * cal.step_s;
        sweep.push(IntervalResult {
            multiple: mult,
            every_steps: every,
            interval_s,
            predicted_s: model.expected_wall_time(interval_s, t_s),
            trials: Vec::new(),
            mean_s: f64::NAN,
            stderr_s: f64::NAN,
            mean_failures: f64::NAN,
            error_pct: f64::NAN,
        });
    }
    let mut round_baselines = Vec::new();
    if !args.calibrate_only {
        for t in 0..args.trials {
            let seed = args.seed.wrapping_add(t as u64);
            // The machine's speed drifts (shared cores): each round re-measures the
            // failure-free run, and its trials are predicted from that T_s and the time per
            // step it implies, so a slower or faster machine moves model and measurement
            // together.
            let repo = Scratch(scratch.0.join(format!("baseline-t{t}")));
            let b = launch.run(
                &format!("failure-free run of round {t}"),
                &repo.0,
                steps,
                u64::MAX,
                None,
                Duration::from_secs_f64(t_s * 10.0 + 60.0),
            )?;
            drop(repo);
            let round_step = ((b.wall_s - cal.startup_s) / steps as f64).max(1e-9);
            eprintln!(
                "experiment: round {t}: failure-free {:.2} s ({:.3} ms/step)",
                b.wall_s,
                round_step * 1e3
            );
            round_baselines.push(b.wall_s);
            for r in sweep.iter_mut() {
                let predicted =
                    model.expected_wall_time(r.every_steps as f64 * round_step, b.wall_s);
                let repo = Scratch(scratch.0.join(format!("k{}-t{t}", r.every_steps)));
                let what = format!(
                    "interval {}x (every {} steps), seed {seed}",
                    r.multiple, r.every_steps
                );
                let timeout = if r.predicted_s.is_finite() {
                    Duration::from_secs_f64((r.predicted_s * 5.0).min(1e6) + 120.0)
                } else {
                    Duration::from_secs_f64(work * 20.0 + 120.0)
                };
                let mut o = launch.run(
                    &what,
                    &repo.0,
                    steps,
                    r.every_steps,
                    Some(Kills {
                        mtbf: Duration::from_secs_f64(mtbf),
                        seed,
                    }),
                    timeout,
                )?;
                if o.checksum != baseline.checksum {
                    return Err(ExperimentError::Run {
                        what,
                        reason: format!(
                            "checksum {} differs from the failure-free run's {}",
                            o.checksum, baseline.checksum
                        ),
                        stderr: String::new(),
                    }
                    .into());
                }
                o.predicted_s = predicted;
                eprintln!(
                    "experiment: {what}: {:.2} s, {} failure(s) (model {:.2} s)",
                    o.wall_s, o.failures, predicted
                );
                r.trials.push(o);
            }
        }
        // The plot and table show the intervals at the rounds' mean speed.
        let mean_step = (mean(&round_baselines) - cal.startup_s) / steps as f64;
        for r in sweep.iter_mut() {
            r.interval_s = r.every_steps as f64 * mean_step;
            let walls: Vec<f64> = r.trials.iter().map(|o| o.wall_s).collect();
            r.mean_s = mean(&walls);
            r.stderr_s = std_err(&walls);
            r.mean_failures = mean(
                &r.trials
                    .iter()
                    .map(|o| o.failures as f64)
                    .collect::<Vec<_>>(),
            );
            r.predicted_s = mean(&r.trials.iter().map(|o| o.predicted_s).collect::<Vec<_>>());
            r.error_pct = (r.mean_s / r.predicted_s - 1.0) * 100.0;
        }
    }
    let results = Results {
        ranks: args.ranks,
        size: args.size,
        steps,
        seed: args.seed,
        trials: args.trials,
        mtbf_s: mtbf,
        calibration: cal,
        baseline_s: t_s,
        baseline_checksum: baseline.checksum.clone(),
        young_s: model.interval(Formula::Young),
        daly_s: daly,
        optimal_s: model.optimal(),
        sweep,
        round_baselines_s: round_baselines,
    };
    let table = render_table(&results, &model, args.calibrate_only);
    println!("{table}");
    write_file(&args.out.join("results.md"), table.as_bytes())?;
    let json = serde_json::to_string_pretty(&results)?;
    write_file(&args.out.join("results.json"), json.as_bytes())?;
    let work_plot = if results.round_baselines_s.is_empty() {
        t_s
    } else {
        mean(&results.round_baselines_s)
    };
    let svg = plot::svg(&model, &results_points(&results), work_plot);
    write_file(&args.out.join("walltime.svg"), svg.as_bytes())?;
    eprintln!(
        "experiment: wrote results.md, results.json and walltime.svg to {}",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExperimentError> {
    std::fs::write(path, bytes).map_err(|source| ExperimentError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

fn results_points(r: &Results) -> Vec<plot::Point> {
    r.sweep
        .iter()
        .map(|s| plot::Point {
            interval_s: s.interval_s,
            trials: s.trials.iter().map(|o| o.wall_s).collect(),
        })
        .collect()
}

/// The markdown report: inputs, calibration, the sweep table and the two targets.
fn render_table(r: &Results, model: &Model, calibrate_only: bool) -> String {
    let c = &r.calibration;
    let mut s = String::new();
    s.push_str(&format!(
        "Heat {size}×{size} on {ranks} rank(s), {steps} steps; injected SIGKILL MTBF M = {m}; \
         seeds {seed}..{last}; {trials} trial(s) per interval.\n\n",
        size = r.size,
        ranks = r.ranks,
        steps = r.steps,
        m = format_seconds(r.mtbf_s),
        seed = r.seed,
        last = r.seed + r.trials.saturating_sub(1) as u64,
        trials = r.trials
    ));
    s.push_str(&format!(
        "Calibration: start-up {:.3} s, {:.3} ms/step, checkpoint cost δ = {:.3} s \
         ({} checkpoints over {} steps), restart R = {:.3} s. Failure-free baseline \
         T_s = {:.2} s (no checkpoints). Young {}, Daly {}, optimum {}.\n\n",
        c.startup_s,
        c.step_s * 1e3,
        c.cost_s,
        c.cal_checkpoints,
        c.cal_steps,
        c.restart_s,
        r.baseline_s,
        format_seconds(r.young_s),
        format_seconds(r.daly_s),
        format_seconds(r.optimal_s),
    ));
    if !r.round_baselines_s.is_empty() {
        let b: Vec<String> = r
            .round_baselines_s
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect();
        s.push_str(&format!(
            "Failure-free run repeated before each round of trials: {} s; each trial is \
             predicted from its round's (T_s and time per step), the model column is the \
             mean of those predictions.\n\n",
            b.join(", ")
        ));
    }
    s.push_str(
        "| interval | every (steps) | τ (s) | failures (mean) | measured (s) | model (s) | \
         measured/model − 1 | vs failure-free |\n|---|---|---|---|---|---|---|---|\n",
    );
    let ff = if r.round_baselines_s.is_empty() {
        r.baseline_s
    } else {
        mean(&r.round_baselines_s)
    };
    for i in &r.sweep {
        let measured = if i.trials.is_empty() {
            "—".to_string()
        } else {
            format!("{:.2} ± {:.2}", i.mean_s, i.stderr_s)
        };
        let pct = |v: f64| {
            if v.is_finite() {
                format!("{v:+.1} %")
            } else {
                "—".to_string()
            }
        };
        s.push_str(&format!(
            "| {}×Daly | {} | {:.2} | {} | {} | {:.2} | {} | {} |\n",
            i.multiple,
            i.every_steps,
            i.interval_s,
            if i.trials.is_empty() {
                "—".to_string()
            } else {
                format!("{:.1}", i.mean_failures)
            },
            measured,
            i.predicted_s,
            pct(i.error_pct),
            pct((i.mean_s / ff - 1.0) * 100.0),
        ));
    }
    if calibrate_only {
        s.push_str("\nCalibration only: no kill trials were run.\n");
        return s;
    }
    let worst = r
        .sweep
        .iter()
        .map(|i| i.error_pct.abs())
        .fold(0.0f64, f64::max);
    let best = r.sweep.iter().min_by(|a, b| a.mean_s.total_cmp(&b.mean_s));
    let daly_row = r.sweep.iter().min_by(|a, b| {
        (a.multiple - 1.0)
            .abs()
            .total_cmp(&(b.multiple - 1.0).abs())
    });
    s.push_str(&format!(
        "\nTarget 1 (measured within 10 % of the model, every interval): worst {worst:.1} % — {}.\n",
        if worst <= 10.0 { "met" } else { "NOT met" }
    ));
    if let (Some(b), Some(d)) = (best, daly_row) {
        let gap = (d.mean_s / b.mean_s - 1.0) * 100.0;
        s.push_str(&format!(
            "Target 2 (Daly's interval within 5 % of the best fixed interval): best is {}×Daly \
             ({:.2} s), {}×Daly measured {:.2} s, {gap:+.1} % — {}.\n",
            b.multiple,
            b.mean_s,
            d.multiple,
            d.mean_s,
            if gap <= 5.0 { "met" } else { "NOT met" }
        ));
    }
    let _ = model;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiples_parse_sort_and_dedupe() {
        assert_eq!(
            parse_multiples("2x, 0.5x,1,0.5X").unwrap(),
            vec![0.5, 1.0, 2.0]
        );
        for bad in ["", "0x", "-1x", "abc", "nanx", "1e9x"] {
            let e = parse_multiples(bad).unwrap_err().to_string();
            assert!(e.starts_with("--intervals"), "{bad}: {e}");
        }
    }

    #[test]
    fn injected_failures_are_counted_from_progress_lines() {
        let err = "lazarus: incarnation 0: rank 2 killed by signal 9 (injected); newest\n\
                   [rank 1] heat: restored\n\
                   lazarus: restarting all 4 ranks\n\
                   lazarus: incarnation 1: rank 0 killed by signal 9 (injected); x\n";
        assert_eq!(count_failures(err), 2);
    }

    #[test]
    fn standard_error_of_the_mean() {
        assert_eq!(std_err(&[5.0]), 0.0);
        assert!((std_err(&[1.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((mean(&[1.0, 2.0, 3.0]) - 2.0).abs() < 1e-12);
    }
}
