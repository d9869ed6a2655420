//! `lazarus model levels`: the multi-level schedule (base interval and each level's
//! multiple) minimising the expected run time of the nested-Daly model
//! (`lazarus::policy::MultiLevel`, docs/POLICY.md "Multi-level schedules"), printed with
//! the `lazarus run` flags that apply it.

use crate::cmd::CmdResult;
use lazarus::policy::{format_seconds, parse_duration, Level, MultiLevel, Plan, SEARCH_BUDGET};
use std::process::ExitCode;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags of `lazarus model levels`. Lists are comma-separated, one entry per level of
/// `--levels`, cheapest first.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Lazarus levels the job writes, cheapest first: a subset of 1,2,3,4 with at most
    /// one of 2 and 3 (both recover host losses). Process crashes are recovered from the
    /// first, host losses from the first of 2, 3, 4, everything else from 4.
    #[arg(long, value_name = "LIST", default_value = "1,2,4")]
    levels: String,
    /// Time writing each level adds to a checkpoint (`lazarus bench levels` times each level),
    /// e.g. 0.2s,0.5s,2s.
    #[arg(long, value_name = "DURATIONS", allow_hyphen_values = true)]
    cost: String,
    /// Time to restart from each level [default: 0s for each].
    #[arg(long, value_name = "DURATIONS", allow_hyphen_values = true)]
    restart: Option<String>,
    /// Mean time between process crashes of the whole job (recovered from the cheapest level).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    mtbf_process: Option<String>,
    /// Mean time between host losses of the whole job (recovered from L2, L3 or else L4).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    mtbf_host: Option<String>,
    /// Mean time between failures only the durable level L4 recovers (several hosts, a
    /// site, a power cut).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    mtbf_system: Option<String>,
    /// Failure-free work, to print the expected run time as well.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    work: Option<String>,
    /// Print JSON (all durations in seconds).
    #[arg(long)]
    json: bool,
}

/// The failure classes, each recovered from the cheapest listed level that can.
const CLASSES: [(&str, &str, u8); 3] = [
    ("--mtbf-process", "process crashes", 1),
    ("--mtbf-host", "host losses", 2),
    ("--mtbf-system", "system failures", 4),
];

/// Validated inputs: the Lazarus level numbers, the model, and what each level recovers.
struct Inputs {
    lazarus_levels: Vec<u8>,
    model: MultiLevel,
    recovers: Vec<Vec<&'static str>>,
    work: Option<f64>,
}

fn split_durations(flag: &str, list: &str, n: usize) -> Result<Vec<f64>, Error> {
    let items: Vec<&str> = list.split(',').collect();
    if items.len() != n {
        return Err(format!(
            "{flag} {list:?}: {} value(s) for {n} level(s) of --levels (one per level, comma-separated)",
            items.len()
        )
        .into());
    }
    items
        .into_iter()
        .map(|s| Ok(parse_duration(flag, s)?.as_secs_f64()))
        .collect()
}

fn validate(a: &Args) -> Result<Inputs, Error> {
    let mut lazarus_levels = Vec::new();
    for item in a.levels.split(',') {
        let l: u8 = item
            .trim()
            .parse()
            .ok()
            .filter(|l| (1..=4).contains(l))
            .ok_or_else(|| format!("--levels {:?}: {item:?} is not a level 1 to 4", a.levels))?;
        if lazarus_levels.last().is_some_and(|&p| p >= l) {
            return Err(format!(
                "--levels {:?}: list each level once, cheapest (lowest) first",
                a.levels
            )
            .into());
        }
        lazarus_levels.push(l);
    }
    if lazarus_levels.contains(&2) && lazarus_levels.contains(&3) {
        return Err(format!(
            "--levels {:?}: L2 and L3 both recover host losses; the model keeps one of them",
            a.levels
        )
        .into());
    }
    let n = lazarus_levels.len();
    let costs = split_durations("--cost", &a.cost, n)?;
    if let Some(i) = costs.iter().position(|&c| c == 0.0) {
        return Err(format!(
            "--cost: L{}'s cost must be > 0 (a free level would be written continuously)",
            lazarus_levels[i]
        )
        .into());
    }
    let restarts = match &a.restart {
        Some(list) => split_durations("--restart", list, n)?,
        None => vec![0.0; n],
    };
    let mut rates = vec![0.0f64; n];
    let mut recovers: Vec<Vec<&'static str>> = vec![Vec::new(); n];
    let given = [&a.mtbf_process, &a.mtbf_host, &a.mtbf_system];
    for ((flag, what, lowest), value) in CLASSES.into_iter().zip(given) {
        let Some(value) = value else { continue };
        let mtbf = parse_duration(flag, value)?.as_secs_f64();
        if mtbf == 0.0 {
            return Err(format!("{flag} must be > 0").into());
        }
        let i = lazarus_levels
            .iter()
            .position(|&l| l >= lowest)
            .ok_or_else(|| {
                let from = if lowest == 4 {
                    "L4".to_string()
                } else {
                    format!("L{lowest} or higher")
                };
                format!(
                    "{flag}: {what} are recovered only from {from}, and --levels {:?} has none",
                    a.levels
                )
            })?;
        rates[i] += 1.0 / mtbf;
        recovers[i].push(what);
    }
    if let Some(i) = rates.iter().position(|&r| r == 0.0) {
        return Err(format!(
            "--levels {:?}: L{} would be the cheapest level for no failure class given \
             (--mtbf-process, --mtbf-host, --mtbf-system): give its failures' MTBF or leave the level out",
            a.levels, lazarus_levels[i]
        )
        .into());
    }
    let levels = (0..n)
        .map(|i| Level::new(costs[i], restarts[i], 1.0 / rates[i]))
        .collect::<Result<Vec<_>, _>>()?;
    let work = match &a.work {
        Some(w) => {
            let w = parse_duration("--work", w)?.as_secs_f64();
            if w == 0.0 {
                return Err("--work must be > 0".into());
            }
            Some(w)
        }
        None => None,
    };
    Ok(Inputs {
        lazarus_levels,
        model: MultiLevel::new(levels)?,
        recovers,
        work,
    })
}

/// The `lazarus run` flags applying `plan` (every level as a count of checkpoints).
fn run_flags(i: &Inputs, plan: &Plan) -> String {
    let every = plan.every();
    let mut flags: Vec<String> = Vec::new();
    for l in 1..=4u8 {
        let n = i
            .lazarus_levels
            .iter()
            .position(|&x| x == l)
            .and_then(|p| every.get(p).copied())
            .unwrap_or(0);
        // L4 defaults to every checkpoint; other levels to never.
        if n != 0 || l == 4 {
            flags.push(format!("--l{l}-every {n}"));
        }
    }
    flags.join(" ")
}

/// The base interval as a policy spec (`every:75.9s`), milliseconds at least.
fn policy_spec(interval_s: f64) -> String {
    let ms = (interval_s * 1e3).round().max(1.0);
    format!("every:{ms}ms")
}

fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn json(i: &Inputs, plan: &Plan, all_every: &Plan) -> serde_json::Value {
    let every = plan.every();
    let periods = plan.periods_s();
    let young = i.model.young_periods();
    let levels: Vec<serde_json::Value> = i
        .model
        .levels()
        .iter()
        .enumerate()
        .map(|(j, l)| {
            serde_json::json!({
                "level": i.lazarus_levels[j],
                "recovers": i.recovers[j],
                "cost_s": l.cost(),
                "restart_s": l.restart(),
                "mtbf_s": l.mtbf(),
                "every": every.get(j),
                "period_s": finite(periods.get(j).copied().unwrap_or(f64::NAN)),
                "young_period_s": young[j],
                "written_in_job": i.work.map(|w| periods.get(j).is_some_and(|p| *p < w)),
            })
        })
        .collect();
    serde_json::json!({
        "levels": levels,
        "interval_s": finite(plan.interval_s),
        "factors": plan.factors,
        "overhead": finite(plan.overhead),
        "proven": plan.proven,
        "expected_runtime_s": i.work.map(|w| finite(w * (1.0 + plan.overhead))),
        "every_level_every_checkpoint": {
            "interval_s": finite(all_every.interval_s),
            "overhead": finite(all_every.overhead),
        },
        "run_flags": run_flags(i, plan),
        "policy": policy_spec(plan.interval_s),
    })
}

fn table(i: &Inputs, plan: &Plan, all_every: &Plan) -> String {
    let every = plan.every();
    let periods = plan.periods_s();
    let young = i.model.young_periods();
    let mut out = format!(
        "{:<6}{:<34}{:>10}{:>10}{:>10}{:>7}{:>11}{:>14}\n",
        "level", "recovers", "cost", "restart", "MTBF", "every", "period", "Young period"
    );
    for (j, l) in i.model.levels().iter().enumerate() {
        out.push_str(&format!(
            "{:<6}{:<34}{:>10}{:>10}{:>10}{:>7}{:>11}{:>14}\n",
            format!("L{}", i.lazarus_levels[j]),
            i.recovers[j].join(", "),
            format_seconds(l.cost()),
            format_seconds(l.restart()),
            format_seconds(l.mtbf()),
            every.get(j).copied().unwrap_or(0),
            format_seconds(periods.get(j).copied().unwrap_or(f64::NAN)),
            format_seconds(young[j]),
        ));
    }
    out.push_str(&format!(
        "\ncheckpoint every {} of work ({:.3} s); expected overhead {:.3}%",
        format_seconds(plan.interval_s),
        plan.interval_s,
        plan.overhead * 100.0
    ));
    if let Some(w) = i.work {
        out.push_str(&format!(
            ", expected run time {}",
            format_seconds(w * (1.0 + plan.overhead))
        ));
    }
    if let Some(w) = i.work {
        for (j, p) in periods.iter().enumerate().filter(|(_, p)| **p >= w) {
            out.push_str(&format!(
                "\nnote: L{}'s period ({}) is at least the work ({}): it is never written in this job, \
                 and a failure only it recovers restarts the job from its beginning; the overhead \
                 and run time above are the schedule's steady state, which counts its cost",
                i.lazarus_levels[j],
                format_seconds(*p),
                format_seconds(w),
            ));
        }
    }
    if !plan.proven {
        out.push_str(&format!(
            "\nnote: the search stopped after {SEARCH_BUDGET} schedules; this is the best found, \
             not proven optimal (overheads this large make the model's bound loose)"
        ));
    }
    if i.model.levels().len() > 1 {
        out.push_str(&format!(
            "\n(every level on every checkpoint, at its best interval {}: {:.3}%)",
            format_seconds(all_every.interval_s),
            all_every.overhead * 100.0
        ));
    }
    out.push_str(&format!(
        "\n\nrun with:  lazarus run {} ... -- PROG\n\
         and the program checkpointing every {:.3} s of work \
         (JobBuilder::every, or the policy spec {})\n",
        run_flags(i, plan),
        plan.interval_s,
        policy_spec(plan.interval_s)
    ));
    out.push_str(
        "\nmodel: nested Daly, E_1 = D(λ_1, R_1, τ + c_1), E_j = D(λ_j, R_j, n_j·E_(j−1) + c_j), \
         D(λ, R, L) = e^(λR)·(e^(λL) − 1)/λ; overhead = E_k/(m_k·τ) − 1.\n\
         Young period: √(2·c_j·M_j), the first-order optimum of each level alone\n",
    );
    out
}

/// Runs `lazarus model levels`.
pub fn main(args: Args) -> CmdResult {
    let inputs = validate(&args)?;
    let plan = inputs.model.plan();
    if !plan.overhead.is_finite() {
        return Err(
            "no schedule is expected to finish: the checkpoint costs or restarts are comparable to the MTBFs"
                .into(),
        );
    }
    let ones = vec![1u32; plan.factors.len()];
    let all_every = inputs.model.plan_for(&ones).unwrap_or_else(|| plan.clone());
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json(&inputs, &plan, &all_every))?
        )?;
    } else {
        out!("{}", table(&inputs, &plan, &all_every))?;
    }
    Ok(ExitCode::SUCCESS)
}
