//! `lazarus bench experiment`: Young/Daly in practice. The distributed heat example runs
//! under `lazarus run` (the supervisor) while a seeded Poisson process SIGKILLs a random
//! rank; the measured wall time is compared with the failure-free run and with
//! `Model::expected_wall_time`, for a sweep of fixed intervals around Daly's.
//!
//! Pipeline (docs/EXPERIMENT.md has the reasoning, the variance arithmetic behind the
//! defaults, and the measured results):
//! 1. calibrate, every run under `lazarus run` exactly as the trials run: the start-up cost
//!    O (a 0-step run), the time per step (a run without checkpoints), the checkpoint cost
//!    δ (pairs of runs with and without ~20 checkpoints, median of the differences), and
//!    the restart cost R as the supervisor pays it: a run with planned SIGKILLs, R = median
//!    of the supervisor's own "kill → every rank resumed" times;
//! 2. the failure-free baseline T_s: the full run (steps chosen for `--work`) without
//!    checkpoints and without kills; its checksum is the reference every trial must print;
//! 3. the model `Model::new(δ, M, R)`, Daly's higher-order interval τ_D, and the design
//!    (`design.rs`): each interval's expected run time, its trial-to-trial spread under
//!    Daly's own failure process, the standard error of the mean of `--trials` trials, and
//!    the chance that each target is met if the model is exact;
//! 4. rounds: each re-measures the failure-free run (the machine's speed drifts), turns
//!    each multiple of τ_D into a step count with that round's time per step (so the
//!    intervals are the intended ones in seconds), runs the intervals in a seeded shuffled
//!    order, all with kill seed `--seed + round` (common random numbers), and predicts each
//!    trial from its round's T_s and time per step;
//! 5. a markdown table, a JSON file and an SVG (measured points over the model's curve).
//!
//! The kills are real: `lazarus run --repo DIR --inject-kill-mtbf M --seed S` (the
//! supervisor's seeded Poisson fault injection) SIGKILLs a random rank at exponentially
//! distributed times after every (re)start, and the supervisor restarts all ranks from the
//! newest committed checkpoint. Each trial's checksum must equal the failure-free run's.

use super::{load_average, median, Scratch};
use crate::cmd::CmdResult;
use lazarus::policy::{format_seconds, parse_duration, Formula, Model};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod design;
mod plot;
mod report;

/// Flags of `lazarus bench experiment`. The defaults come from the variance arithmetic
/// in docs/EXPERIMENT.md ("Choosing the defaults"): about 25 minutes on a quiet 2-core
/// machine, with each interval's mean known to a few percent.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ranks of the heat job (`lazarus run -n`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ranks: u32,
    /// Failure-free solve time to aim for; the step count is derived from the calibration.
    #[arg(long, default_value = "50s")]
    pub work: String,
    /// Mean time between injected SIGKILLs of the whole job.
    #[arg(long, default_value = "8s")]
    pub mtbf: String,
    /// Seed of the kill schedules and of the interval order; round t uses kill seed
    /// seed + t for every interval.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trials per interval (one per round).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trials: u32,
    /// Intervals as multiples of Daly's, comma-separated (`0.25x,0.5x,1x,2x,3x`).
    #[arg(long, default_value = "0.25x,0.5x,1x,2x,3x")]
    pub intervals: String,
    /// Edge of the heat grid (cells); the checkpoint holds size² f64 over all ranks.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(3..=16384))]
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
    /// Planned kills of the restart calibration (R is their median).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub restart_samples: u32,
    /// Stop after the calibration, the baseline, the model and the design (no kills in
    /// trials; the restart calibration still kills).
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
    /// The figure could not be drawn.
    #[error("walltime.svg: {0}")]
    Plot(String),
}

/// One finished job: wall time, injected failures, recoveries, checksum.
#[derive(Clone, Debug, Serialize)]
struct RunOutcome {
    wall_s: f64,
    failures: u32,
    /// The supervisor's kill → every rank resumed time of each failure (the R paid).
    recoveries_s: Vec<f64>,
    /// The supervisor's kill → next ranks spawned time of each failure (the part of R
    /// that no failure can hit: the kill clock restarts at the spawn).
    spawn_latencies_s: Vec<f64>,
    checksum: String,
}

/// One trial: a job with one interval in one round, and the model's prediction for it.
#[derive(Clone, Debug, Serialize)]
struct Trial {
    round: u32,
    /// kill seed (`--seed` + round)
    seed: u64,
    /// position of this interval in its round's shuffled order
    order: usize,
    every_steps: u64,
    /// every_steps × the round's time per step
    interval_s: f64,
    /// T_w(interval_s, the round's T_s)
    predicted_s: f64,
    #[serde(flatten)]
    run: RunOutcome,
}

/// What the calibration measured, all seconds.
#[derive(Clone, Debug, Serialize)]
struct Calibration {
    startup_s: f64,
    step_s: f64,
    cal_steps: u64,
    cal_checkpoints: u64,
    /// every (with − without)/checkpoints sample; δ is their median
    cost_samples_s: Vec<f64>,
    cost_s: f64,
    /// every kill → resumed sample of the restart calibration; R is their median
    restart_samples_s: Vec<f64>,
    restart_s: f64,
    /// median kill → spawn of the same kills (the failure-immune part of R)
    spawn_latency_s: f64,
}

/// One interval of the sweep with its trials.
#[derive(Clone, Debug, Serialize)]
struct IntervalResult {
    multiple: f64,
    trials: Vec<Trial>,
    /// means over the trials
    every_steps: f64,
    interval_s: f64,
    predicted_s: f64,
    mean_s: f64,
    stderr_s: f64,
    mean_failures: f64,
    /// the model's T_w / M at the mean interval and T_s
    expected_failures: f64,
    /// mean kill → resumed over every failure of these trials
    mean_recovery_s: f64,
    error_pct: f64,
}

/// One round: its failure-free run and the order its intervals ran in.
#[derive(Clone, Debug, Serialize)]
struct Round {
    seed: u64,
    failure_free_s: f64,
    step_s: f64,
    /// multiples in the order they ran
    order: Vec<f64>,
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
    design: design::Plan,
    sweep: Vec<IntervalResult>,
    rounds: Vec<Round>,
    /// wall time of the whole bench, seconds
    elapsed_s: f64,
    /// /proc/loadavg (1, 5, 15 min) at the start and at the end ("" where unavailable)
    load_start: String,
    load_end: String,
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

/// The faults of one run.
#[derive(Clone, Debug)]
enum Kills {
    /// None.
    None,
    /// The supervisor's Poisson process (`--inject-kill-mtbf`).
    Poisson { mtbf: Duration, seed: u64 },
    /// One kill per incarnation, right after that incarnation's `commits`-th committed
    /// checkpoint (`--inject-kill-after Kc`): tied to progress, not to wall time, so a
    /// loaded machine cannot let the job finish before every planned kill landed.
    AfterCommits { commits: u32, count: u32, seed: u64 },
}

/// A scratch repository removed on drop (also on error paths).
fn fresh_dir(p: PathBuf) -> Result<Scratch, ExperimentError> {
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).map_err(|source| ExperimentError::Io {
        what: format!("creating {}", p.display()),
        source,
    })?;
    Ok(Scratch(p))
}

impl Launch {
    /// Runs heat for `steps` steps, checkpointing every `every` steps into `repo`.
    fn run(
        &self,
        what: &str,
        repo: &Path,
        steps: u64,
        every: u64,
        kills: &Kills,
        timeout: Duration,
    ) -> Result<RunOutcome, ExperimentError> {
        let mut cmd = Command::new(&self.lazarus);
        // Every run, also without kills, goes through the supervisor, so the calibration
        // measures the same path (output commit, repository lock) as the trials.
        cmd.arg("run").arg("-n").arg(self.ranks.to_string());
        cmd.arg("--repo").arg(repo);
        cmd.arg("--max-restarts").arg(self.max_restarts.to_string());
        match kills {
            Kills::None => {}
            Kills::Poisson { mtbf, seed } => {
                cmd.arg("--inject-kill-mtbf")
                    .arg(format!("{:.3}ms", mtbf.as_secs_f64() * 1e3));
                cmd.arg("--seed").arg(seed.to_string());
            }
            Kills::AfterCommits {
                commits,
                count,
                seed,
            } => {
                for _ in 0..*count {
                    cmd.arg("--inject-kill-after").arg(format!("{commits}c"));
                }
                cmd.arg("--seed").arg(seed.to_string());
            }
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
        let (recoveries_s, spawn_latencies_s) = parse_recoveries(&stderr);
        Ok(RunOutcome {
            wall_s,
            failures: count_failures(&stderr),
            recoveries_s,
            spawn_latencies_s,
            checksum,
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

/// The supervisor's `lazarus: recovered from the failure of incarnation I in X s (ranks
/// spawned after Y s)` lines: (X, Y) of each. Lines that do not parse are skipped.
fn parse_recoveries(stderr: &str) -> (Vec<f64>, Vec<f64>) {
    let mut rec = Vec::new();
    let mut spawn = Vec::new();
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix("lazarus: recovered from the failure of incarnation ")
        else {
            continue;
        };
        let num = |after: &str| -> Option<f64> {
            let (_, tail) = rest.split_once(after)?;
            tail.split_whitespace().next()?.parse().ok()
        };
        if let (Some(x), Some(y)) = (num(" in "), num("spawned after ")) {
            rec.push(x);
            spawn.push(y);
        }
    }
    (rec, spawn)
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

/// The failure-free run time trials are compared with: the mean of the rounds' own
/// failure-free runs, or the baseline when there were no rounds (calibration only).
fn failure_free_s(rounds: &[Round], baseline_s: f64) -> f64 {
    if rounds.is_empty() {
        baseline_s
    } else {
        mean(&rounds.iter().map(|r| r.failure_free_s).collect::<Vec<_>>())
    }
}

/// Checkpoint every this many steps for an interval of `multiple` x Daly's, at least 1.
fn every_steps(multiple: f64, daly_s: f64, step_s: f64) -> u64 {
    ((multiple * daly_s / step_s).round() as u64).max(1)
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

/// splitmix64 step: a fixed, documented generator, so a seed gives the same interval
/// order with every build (no dependence on a library's generator choice).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The order in which round `round` runs its `n` intervals: a Fisher–Yates shuffle seeded
/// by (seed, round), so a monotone drift of the machine's speed does not line up with the
/// interval.
fn round_order(n: usize, seed: u64, round: u32) -> Vec<usize> {
    let mut state = seed ^ (u64::from(round) + 1).wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Calibration runs, under the same `lazarus run` path as the trials.
fn calibrate(
    launch: &Launch,
    scratch: &Path,
    target_s: f64,
    restart_samples: u32,
    seed: u64,
) -> Result<Calibration, ExperimentError> {
    let never = u64::MAX;
    let timeout = Duration::from_secs(300);
    let fresh = |name: &str| fresh_dir(scratch.join(name));
    // Start-up: median of three 0-step runs (process start, rendezvous, repository open).
    let mut starts = Vec::new();
    for i in 0..3 {
        let repo = fresh(&format!("cal-start-{i}"))?;
        starts.push(
            launch
                .run(
                    "calibration (0 steps)",
                    &repo.0,
                    0,
                    never,
                    &Kills::None,
                    timeout,
                )?
                .wall_s,
        );
    }
    let startup_s = median(&starts);
    // Steps: grow until the computing part reaches the target.
    let mut steps = 16u64;
    loop {
        let repo = fresh("cal-steps")?;
        let w = launch.run(
            "calibration (steps)",
            &repo.0,
            steps,
            never,
            &Kills::None,
            timeout,
        )?;
        let compute = w.wall_s - startup_s;
        if compute >= target_s || steps >= 1 << 28 {
            break;
        }
        let factor = if compute > target_s / 30.0 {
            (1.2 * target_s / compute.max(1e-9)).ceil()
        } else {
            8.0
        };
        steps = steps.saturating_mul((factor as u64).clamp(2, 64));
    }
    // Checkpoint cost: three pairs of runs without and with ~20 checkpoints (at every,
    // 2·every, ... < steps), interleaved so a drift of the machine's speed hits both
    // sides of a pair alike; δ is the median of (with − without) / count.
    let every = (steps / 20).max(1);
    let n_ck = (steps - 1) / every;
    if n_ck == 0 {
        return Err(ExperimentError::Calibration(
            "the calibration run is too short to take a checkpoint".into(),
        ));
    }
    let mut plain = Vec::new();
    let mut cost_samples = Vec::new();
    for _ in 0..3 {
        let repo = fresh("cal-plain")?;
        let p = launch
            .run(
                "calibration (no checkpoints)",
                &repo.0,
                steps,
                never,
                &Kills::None,
                timeout,
            )?
            .wall_s;
        let repo = fresh("cal-ckpt")?;
        let w = launch
            .run(
                "calibration (checkpoints)",
                &repo.0,
                steps,
                every,
                &Kills::None,
                timeout,
            )?
            .wall_s;
        plain.push(p);
        cost_samples.push((w - p) / n_ck as f64);
    }
    let cost_s = median(&cost_samples);
    let step_s = ((median(&plain) - startup_s) / steps as f64).max(1e-9);
    if cost_s.is_nan() || cost_s <= 0.0 {
        return Err(ExperimentError::Calibration(format!(
            "{n_ck} checkpoints took no measurable time (per-checkpoint samples {cost_samples:.4?} s); \
             use a larger --size or a longer --calibration"
        )));
    }
    // Restart cost as the supervisor pays it: kill → detection → stop → respawn →
    // rendezvous → restore, timed by the supervisor itself. Each incarnation is killed
    // right after its second commit, so it restores a real checkpoint of the run's size,
    // and every planned kill lands whatever the machine's speed (the run has n_ck
    // checkpoints; each kill uses two of them).
    if n_ck < 2 * restart_samples as u64 + 1 {
        return Err(ExperimentError::Calibration(format!(
            "the calibration run takes {n_ck} checkpoints, too few for {restart_samples} \
             restart samples (two each); use a longer --calibration"
        )));
    }
    let repo = fresh("cal-restart")?;
    let r = launch.run(
        "calibration (restart)",
        &repo.0,
        steps,
        every,
        &Kills::AfterCommits {
            commits: 2,
            count: restart_samples,
            seed,
        },
        timeout,
    )?;
    if r.recoveries_s.is_empty() {
        return Err(ExperimentError::Calibration(format!(
            "the restart calibration saw {} failure(s) but no `recovered ... in` line from \
             the supervisor (does the rank program restore through lazarus::Job?)",
            r.failures
        )));
    }
    Ok(Calibration {
        startup_s,
        step_s,
        cal_steps: steps,
        cal_checkpoints: n_ck,
        cost_s,
        restart_s: median(&r.recoveries_s),
        spawn_latency_s: median(&r.spawn_latencies_s),
        cost_samples_s: cost_samples,
        restart_samples_s: r.recoveries_s,
    })
}

/// Runs `lazarus bench experiment`.
pub fn main(args: Args) -> CmdResult {
    let started = Instant::now();
    let load_start = load_average().unwrap_or_default();
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
    let scratch =
        fresh_dir(scratch_root.join(format!("lazarus-experiment-{}", std::process::id())))?;
    std::fs::create_dir_all(&args.out).map_err(|source| ExperimentError::Io {
        what: format!("creating --out {}", args.out.display()),
        source,
    })?;

    errln!(
        "experiment: {} rank(s), grid {}², MTBF {}, seed {}, {} trial(s); calibrating...",
        args.ranks,
        args.size,
        format_seconds(mtbf),
        args.seed,
        args.trials
    );
    let cal = calibrate(
        &launch,
        &scratch.0,
        calibration,
        args.restart_samples,
        args.seed,
    )?;
    errln!(
        "experiment: start-up {:.3} s, {:.4} ms/step, checkpoint δ = {:.4} s (samples {:.4?}), \
         restart R = {:.3} s (kill → resumed, samples {:.3?}; kill → spawn {:.3} s)",
        cal.startup_s,
        cal.step_s * 1e3,
        cal.cost_s,
        cal.cost_samples_s,
        cal.restart_s,
        cal.restart_samples_s,
        cal.spawn_latency_s
    );
    let steps = (((work - cal.startup_s) / cal.step_s).round() as u64).max(1);
    let baseline = {
        let repo = fresh_dir(scratch.0.join("baseline"))?;
        launch.run(
            "failure-free baseline",
            &repo.0,
            steps,
            u64::MAX,
            &Kills::None,
            Duration::from_secs_f64(work * 10.0 + 60.0),
        )?
    };
    let t_s = baseline.wall_s;
    errln!(
        "experiment: baseline {steps} steps without checkpoints or failures: {t_s:.2} s \
         (checksum {})",
        baseline.checksum
    );
    let model = Model::new(cal.cost_s, mtbf, cal.restart_s)
        .map_err(|e| ExperimentError::Calibration(e.to_string()))?;
    let daly = model.daly_higher_order();
    let plan = design::plan(
        &multiples,
        daly,
        cal.cost_s,
        mtbf,
        cal.restart_s,
        t_s,
        args.trials,
    );
    errln!(
        "experiment: Young {}, Daly {}, optimum {}; expected run time at Daly {:.2} s",
        format_seconds(model.young()),
        format_seconds(daly),
        format_seconds(model.optimal()),
        model.expected_wall_time(daly, t_s)
    );
    err!("{}", report::design_text(&plan, args.trials));

    let mut sweep: Vec<IntervalResult> = multiples
        .iter()
        .map(|&multiple| IntervalResult {
            multiple,
            trials: Vec::new(),
            every_steps: f64::NAN,
            interval_s: f64::NAN,
            predicted_s: f64::NAN,
            mean_s: f64::NAN,
            stderr_s: f64::NAN,
            mean_failures: f64::NAN,
            expected_failures: f64::NAN,
            mean_recovery_s: f64::NAN,
            error_pct: f64::NAN,
        })
        .collect();
    let mut rounds = Vec::new();
    if !args.calibrate_only {
        for t in 0..args.trials {
            let seed = args.seed.wrapping_add(u64::from(t));
            // The machine's speed drifts: each round re-measures the failure-free run,
            // derives its time per step, sets the step counts so each interval is the
            // intended multiple of τ_D in seconds, and predicts its trials from that T_s.
            let b = {
                let repo = fresh_dir(scratch.0.join(format!("baseline-t{t}")))?;
                launch.run(
                    &format!("failure-free run of round {t}"),
                    &repo.0,
                    steps,
                    u64::MAX,
                    &Kills::None,
                    Duration::from_secs_f64(t_s * 10.0 + 60.0),
                )?
            };
            let round_step = ((b.wall_s - cal.startup_s) / steps as f64).max(1e-9);
            let order = round_order(sweep.len(), args.seed, t);
            errln!(
                "experiment: round {t}: failure-free {:.2} s ({:.4} ms/step); order {:?}",
                b.wall_s,
                round_step * 1e3,
                order.iter().map(|&i| multiples[i]).collect::<Vec<_>>()
            );
            for (pos, &i) in order.iter().enumerate() {
                let r = &mut sweep[i];
                let every = every_steps(r.multiple, daly, round_step);
                let interval_s = every as f64 * round_step;
                let predicted = model.expected_wall_time(interval_s, b.wall_s);
                let repo = fresh_dir(scratch.0.join(format!("i{i}-t{t}")))?;
                let what = format!(
                    "round {t}: interval {}x (every {every} steps), kill seed {seed}",
                    r.multiple
                );
                let timeout = if predicted.is_finite() {
                    Duration::from_secs_f64((predicted * 5.0).min(1e6) + 120.0)
                } else {
                    Duration::from_secs_f64(work * 20.0 + 120.0)
                };
                let o = launch.run(
                    &what,
                    &repo.0,
                    steps,
                    every,
                    &Kills::Poisson {
                        mtbf: Duration::from_secs_f64(mtbf),
                        seed,
                    },
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
                errln!(
                    "experiment: {what}: {:.2} s, {} failure(s), mean R {:.3} s (model {:.2} s, {:+.1} %)",
                    o.wall_s,
                    o.failures,
                    mean(&o.recoveries_s),
                    predicted,
                    (o.wall_s / predicted - 1.0) * 100.0
                );
                r.trials.push(Trial {
                    round: t,
                    seed,
                    order: pos,
                    every_steps: every,
                    interval_s,
                    predicted_s: predicted,
                    run: o,
                });
            }
            rounds.push(Round {
                seed,
                failure_free_s: b.wall_s,
                step_s: round_step,
                order: order.iter().map(|&i| multiples[i]).collect(),
            });
        }
    }
    let ff = failure_free_s(&rounds, t_s);
    for r in sweep.iter_mut() {
        if r.trials.is_empty() {
            // Calibration only: the design's intervals at the calibration's speed.
            let every = every_steps(r.multiple, daly, cal.step_s);
            r.every_steps = every as f64;
            r.interval_s = every as f64 * cal.step_s;
            r.predicted_s = model.expected_wall_time(r.interval_s, t_s);
            r.expected_failures = r.predicted_s / mtbf;
            continue;
        }
        let of = |f: fn(&Trial) -> f64| r.trials.iter().map(f).collect::<Vec<f64>>();
        let walls = of(|o| o.run.wall_s);
        r.every_steps = mean(&of(|o| o.every_steps as f64));
        r.interval_s = mean(&of(|o| o.interval_s));
        r.predicted_s = mean(&of(|o| o.predicted_s));
        r.mean_s = mean(&walls);
        r.stderr_s = std_err(&walls);
        r.mean_failures = mean(&of(|o| f64::from(o.run.failures)));
        r.expected_failures = model.expected_wall_time(r.interval_s, ff) / mtbf;
        let recs: Vec<f64> = r
            .trials
            .iter()
            .flat_map(|o| o.run.recoveries_s.iter().copied())
            .collect();
        r.mean_recovery_s = mean(&recs);
        r.error_pct = (r.mean_s / r.predicted_s - 1.0) * 100.0;
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
        design: plan,
        sweep,
        rounds,
        elapsed_s: started.elapsed().as_secs_f64(),
        load_start,
        load_end: load_average().unwrap_or_default(),
    };
    let table = report::render(&results, args.calibrate_only);
    outln!("{table}")?;
    write_file(&args.out.join("results.md"), table.as_bytes())?;
    let json = serde_json::to_string_pretty(&results)?;
    write_file(&args.out.join("results.json"), json.as_bytes())?;
    let svg = plot::figure(&model, &report::points(&results), ff)
        .svg()
        .map_err(|e| ExperimentError::Plot(e.to_string()))?;
    write_file(&args.out.join("walltime.svg"), svg.as_bytes())?;
    errln!(
        "experiment: wrote results.md, results.json and walltime.svg to {} ({:.1} min)",
        args.out.display(),
        results.elapsed_s / 60.0
    );
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExperimentError> {
    std::fs::write(path, bytes).map_err(|source| ExperimentError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
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
    fn recovery_times_are_parsed_from_the_supervisor_lines() {
        let err = "lazarus: recovered from the failure of incarnation 0 in 0.2510 s (ranks \
                   spawned after 0.0120 s)\n\
                   [rank 0] lazarus: recovered from the failure of incarnation 9 in 7 s\n\
                   lazarus: recovered from the failure of incarnation 1 in 0.3000 s (ranks \
                   spawned after 0.0200 s)\n\
                   lazarus: recovered from the failure of incarnation 2 in x s (ranks \
                   spawned after 0.0200 s)\n";
        let (r, s) = parse_recoveries(err);
        assert_eq!(r, vec![0.251, 0.3]);
        assert_eq!(s, vec![0.012, 0.02]);
    }

    #[test]
    fn standard_error_median_and_mean() {
        assert_eq!(std_err(&[5.0]), 0.0);
        assert!((std_err(&[1.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((mean(&[1.0, 2.0, 3.0]) - 2.0).abs() < 1e-12);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn round_orders_are_seeded_permutations_that_differ_between_rounds() {
        let seed = 1;
        let orders: Vec<Vec<usize>> = (0..6).map(|t| round_order(5, seed, t)).collect();
        for o in &orders {
            let mut s = o.clone();
            s.sort_unstable();
            assert_eq!(s, vec![0, 1, 2, 3, 4]);
        }
        assert_eq!(orders[0], round_order(5, seed, 0), "same seed, same order");
        assert!(
            orders.iter().any(|o| o != &orders[0]),
            "rounds must not all share one order: {orders:?}"
        );
        assert_eq!(round_order(1, seed, 3), vec![0]);
        assert!(round_order(0, seed, 3).is_empty());
    }
}
