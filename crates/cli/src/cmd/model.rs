//! `lazarus model`: the optimal checkpoint interval by Young, Daly and the exact minimiser
//! of Daly's expected wall time, with the expected run time and overhead at each, as a
//! table, JSON, or a plot of expected run time against the interval.

use super::CmdResult;
use lazarus::policy::{format_seconds, parse_duration, Formula, Model};
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) mod levels;
pub(crate) mod plot;

/// Flags of `lazarus model`. Durations take units: `250ms`, `90s`, `5m`, `1.5h`, `2d`;
/// they are kept as strings here and validated in `validate`, so errors name the flag.
/// `lazarus model levels ...` is the multi-level variant (its own flags).
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    sub: Option<Sub>,
    /// Time to take one checkpoint (δ).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        required = true
    )]
    cost: Option<String>,
    /// Time to restart from a checkpoint after a failure (R).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "0s",
        allow_hyphen_values = true
    )]
    restart: String,
    /// Mean time between failures of the whole job (M).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        required = true
    )]
    mtbf: Option<String>,
    /// Failure-free work the job has to do (T_s).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        required = true
    )]
    work: Option<String>,
    /// Print JSON: young_s, daly_s (higher order), optimal_s, expected_runtime_s (at the
    /// optimum), and more, all in seconds.
    #[arg(long)]
    json: bool,
    /// Write a plot of expected run time against interval, optima marked (.svg or .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Linear instead of logarithmic interval axis in the plot.
    #[arg(long)]
    linear: bool,
}

/// Subcommands of `lazarus model`.
#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Per-level periods of a multi-level schedule (L1 … L4) and the base interval that
    /// minimise the expected run time (docs/POLICY.md, "Multi-level schedules").
    Levels(levels::Args),
}

/// A flag clap already made mandatory (without a subcommand).
fn required<'a>(flag: &str, v: &'a Option<String>) -> Result<&'a str, String> {
    v.as_deref().ok_or_else(|| format!("{flag} is required"))
}

/// Validated inputs, seconds.
struct Inputs {
    model: Model,
    work: f64,
}

fn validate(a: &Args) -> Result<Inputs, Box<dyn std::error::Error + Send + Sync>> {
    let cost = parse_duration("--cost", required("--cost", &a.cost)?)?;
    let restart = parse_duration("--restart", &a.restart)?;
    let mtbf = parse_duration("--mtbf", required("--mtbf", &a.mtbf)?)?;
    let work = parse_duration("--work", required("--work", &a.work)?)?;
    if cost.is_zero() {
        return Err("--cost must be > 0 (a free checkpoint makes every interval optimal)".into());
    }
    if mtbf.is_zero() {
        return Err("--mtbf must be > 0".into());
    }
    if work.is_zero() {
        return Err("--work must be > 0".into());
    }
    let model = Model::from_durations(cost, mtbf, restart)?;
    Ok(Inputs {
        model,
        work: work.as_secs_f64(),
    })
}

/// One row of the result: a formula's interval and what it costs.
struct Row {
    formula: Formula,
    interval: f64,
    runtime: f64,
    overhead: f64,
}

/// The expected run time with checkpoints every `interval` of work: Daly's `T_w`, or,
/// for an interval at least as long as the work, the run time without checkpoints (the
/// first would come after the job's end; Daly's formula would charge one anyway).
pub(crate) fn runtime_at(model: &Model, work: f64, interval: f64) -> f64 {
    if interval >= work {
        model.expected_wall_time_without_checkpoints(work)
    } else {
        model.expected_wall_time(interval, work)
    }
}

/// True when the optimal interval is shorter than the work: at least one checkpoint is
/// due before the job ends. (Near τ* ≈ T_s, Daly's continuous T_w charges a checkpoint
/// at the very end that a job never takes, so it cannot tell a job that gains little
/// from one that loses little; only the clear case is claimed.)
fn checkpoints_pay(i: &Inputs) -> bool {
    i.model.optimal() < i.work
}

fn rows(i: &Inputs) -> Vec<Row> {
    Formula::ALL
        .into_iter()
        .map(|formula| {
            let interval = i.model.interval(formula);
            let runtime = runtime_at(&i.model, i.work, interval);
            Row {
                formula,
                interval,
                runtime,
                overhead: runtime / i.work - 1.0,
            }
        })
        .collect()
}

fn json(i: &Inputs, rows: &[Row]) -> serde_json::Value {
    let get = |f: Formula| rows.iter().find(|r| r.formula == f);
    let interval = |f| get(f).map_or(f64::NAN, |r| r.interval);
    let runtime = |f| get(f).map_or(f64::NAN, |r| r.runtime);
    let per: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .map(|r| {
            (
                r.formula.name().to_string(),
                serde_json::json!({
                    "interval_s": r.interval,
                    "expected_runtime_s": finite(r.runtime),
                    "overhead": finite(r.overhead),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "cost_s": i.model.cost(),
        "restart_s": i.model.restart(),
        "mtbf_s": i.model.mtbf(),
        "work_s": i.work,
        "young_s": interval(Formula::Young),
        "daly_first_order_s": interval(Formula::DalyFirstOrder),
        "daly_s": interval(Formula::DalyHigherOrder),
        "optimal_s": interval(Formula::Optimal),
        "expected_runtime_s": finite(runtime(Formula::Optimal)),
        "no_checkpoint_runtime_s": finite(i.model.expected_wall_time_without_checkpoints(i.work)),
        "checkpoints_pay": checkpoints_pay(i),
        "formulas": per,
    })
}

/// JSON has no infinity: an overflowing prediction (the job never finishes) is `null`.
fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn table(i: &Inputs, rows: &[Row]) -> String {
    let m = &i.model;
    let mut out = format!(
        "checkpoint cost {}, restart {}, MTBF {}, work {}\n\n",
        format_seconds(m.cost()),
        format_seconds(m.restart()),
        format_seconds(m.mtbf()),
        format_seconds(i.work),
    );
    out.push_str(&format!(
        "{:<22}{:>14}{:>12}{:>20}{:>11}\n",
        "formula", "interval (s)", "", "expected run time", "overhead"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<22}{:>14.3}{:>12}{:>20}{:>10.3}%\n",
            r.formula.to_string(),
            r.interval,
            format_seconds(r.interval),
            format_seconds(r.runtime),
            r.overhead * 100.0,
        ));
    }
    out.push_str(
        "\nexpected run time: Daly's T_w(τ) = M·e^(R/M)·(e^((τ+δ)/M) − 1)·T_s/τ; \
         overhead = T_w/T_s − 1; an interval of at least the work takes no checkpoint: \
         M·e^(R/M)·(e^(T_s/M) − 1)\n",
    );
    let none = m.expected_wall_time_without_checkpoints(i.work);
    if !checkpoints_pay(i) && none.is_finite() {
        out.push_str(&format!(
            "checkpointing does not pay for this job: the optimal interval ({}) is at least the work ({}); \
             expected run time without checkpoints {} (overhead {:.3}%)\n",
            format_seconds(m.optimal()),
            format_seconds(i.work),
            format_seconds(none),
            (none / i.work - 1.0) * 100.0,
        ));
    }
    if m.cost() >= 2.0 * m.mtbf() {
        out.push_str("note: cost >= 2·MTBF: Daly's higher-order estimate is defined as M here\n");
    }
    out
}

/// Runs `lazarus model`.
pub fn main(args: Args) -> CmdResult {
    if let Some(Sub::Levels(a)) = args.sub {
        return levels::main(a);
    }
    let inputs = validate(&args)?;
    let rows = rows(&inputs);
    if let Some(path) = &args.plot {
        plot::write(path, &inputs.model, inputs.work, !args.linear)?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&json(&inputs, &rows))?)?;
    } else {
        out!("{}", table(&inputs, &rows))?;
        if let Some(path) = &args.plot {
            outln!("plot written to {}", path.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
