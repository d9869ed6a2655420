//! `lazarus bench balance`: data-parallel load balancing, migration and N -> M restore.
//!
//! Ranks are threads of this process (`lazarus::local`). One rank is slowed by the
//! `LAZARUS_SLOWDOWN` knob (default `1:3`: rank 1 takes 3x per element). Printed ratios:
//! throughput without and with balancing against the ideal (the sum of the ranks' own
//! rates, measured in the same run); migration cost split into a fixed part (a
//! redistribution that moves nothing: the collectives and wake-ups) and a per-MiB slope
//! (from two sizes), against memcpy and first-touch copies of the same bytes.
//!
//! Restart (`--restore-from N --restore-on M`, default 4 -> 3): the same DVec of
//! `--restore-mib` MiB is checkpointed through the Job API into two scratch repositories,
//! once by N ranks and once by M ranks; then `Job::open` + `restore_or_init` on M ranks is
//! timed from each, alternating, `--restore-reps` times (median; the slowest rank counts).
//! Both read warm page cache (no root to drop it), verify every chunk digest and agree
//! across ranks the same way, so the ratio isolates what redistribution adds: reading N
//! manifests, ranged reads of the overlapping old parts, comparing replicated fields.
//! `--restore-only` skips the balancing and migration phases.
//!
//! Methodology of the balanced phase: `balance()` is called after every step until the
//! first rebalance (one step is enough to measure rates), then every `--every` steps. The
//! steady-state figure covers the `--steps` steps after the first rebalance; the whole-run
//! figure adds the warm-up steps and the migration.

use super::Scratch;
use crate::cmd::CmdResult;
use lazarus::dist::{Decision, Distribution, SLOWDOWN_ENV};
use lazarus::{Comm, DVec, Job};
use std::path::Path;
use std::time::Instant;

/// Flags of `lazarus bench balance`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ranks (threads).
    #[arg(short = 'n', long, default_value_t = 2)]
    ranks: u32,
    /// Elements (f64) of the vector.
    #[arg(long, default_value_t = 1 << 20)]
    len: u64,
    /// Steps per phase (the balanced phase's steady state; warm-up steps come on top).
    #[arg(long, default_value_t = 40)]
    steps: u32,
    /// Call `balance()` every this many steps in the balanced phase (after the first
    /// rebalance; before it, after every step).
    #[arg(long, default_value_t = 4)]
    every: u32,
    /// Ranks N that write the checkpoint of the restart measurement.
    #[arg(long, default_value_t = 4)]
    restore_from: u32,
    /// Ranks M that restore it (compared with a checkpoint written by M ranks).
    #[arg(long, default_value_t = 3)]
    restore_on: u32,
    /// Size of the restored DVec, MiB.
    #[arg(long, default_value_t = 48)]
    restore_mib: u64,
    /// Timed restores of each kind (median reported).
    #[arg(long, default_value_t = 11)]
    restore_reps: u32,
    /// Only the restart measurement.
    #[arg(long)]
    restore_only: bool,
    /// Directory for the scratch repositories (default: system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn kernel(x: &mut f64) {
    // ~80 dependent flops per element: compute-bound, so rates reflect CPU speed.
    let mut y = *x;
    for _ in 0..40 {
        y = y * 0.999_999 + 1e-7;
    }
    *x = y;
}

type Err = Box<dyn std::error::Error + Send + Sync>;

/// Most steps run before giving up on the first rebalance.
const WARMUP_MAX: u32 = 4;
/// Repetitions of each migration measurement (best kept: noise only adds time).
const REPS: u32 = 3;

/// One rank's measurements.
struct Row {
    /// own rate in the static phase
    rate: f64,
    /// own rate in the balanced steady state
    rate_steady: f64,
    t_static: f64,
    t_warm: f64,
    t_steady: f64,
    warm: u32,
    same: bool,
    final_range: std::ops::Range<u64>,
    t_fixed: f64,
    /// (bytes moved, best seconds, first (cold) seconds) per migration size
    mig: Vec<(u64, f64, f64)>,
    t_copy: f64,
    t_first: f64,
}

/// Runs `steps` steps; returns (wall seconds, this rank's rate in elements per compute
/// second, slowdown included).
fn phase(
    comm: &Comm,
    v: &mut DVec<f64>,
    steps: u32,
    every: Option<u32>,
) -> Result<(f64, f64), Err> {
    comm.barrier()?;
    let t = Instant::now();
    let mut compute = 0.0;
    let mut elements = 0u64;
    for s in 0..steps {
        let c = Instant::now();
        v.for_each_mut(|_, x| kernel(x));
        compute += c.elapsed().as_secs_f64();
        elements += v.range().end - v.range().start;
        comm.barrier()?; // a step ends with communication, as in a real stencil/solver
        if let Some(e) = every {
            if (s + 1) % e == 0 {
                v.balance(comm)?;
            }
        }
    }
    let rate = if compute > 0.0 {
        elements as f64 / compute
    } else {
        0.0
    };
    Ok((t.elapsed().as_secs_f64(), rate))
}

/// Runs the benchmark.
pub fn main(a: Args) -> CmdResult {
    if std::env::var_os(SLOWDOWN_ENV).is_none() {
        // The knob is read when DVecs are created, by every rank of this process.
        std::env::set_var(SLOWDOWN_ENV, "1:3");
    }
    let knob = std::env::var(SLOWDOWN_ENV).unwrap_or_default();
    if a.restore_only {
        return restart(&a);
    }
    let n = a.ranks.max(1);
    let len = a.len;
    let steps = a.steps.max(1);
    let every = a.every.max(1);
    outln!("bench balance: {n} ranks, {len} f64, {steps} steps/phase, {SLOWDOWN_ENV}={knob}")?;

    let results = lazarus::local(n, |comm| -> Result<_, Err> {
        // Phase 1: static even blocks.
        let mut v = DVec::<f64>::from_fn(&comm, len, |g| g as f64)?;
        let (t_static, rate) = phase(&comm, &mut v, steps, None)?;
        // Phase 2: balance after every step until the first rebalance (at most
        // WARMUP_MAX steps), then the steady state with balance every `every` steps.
        let mut w = DVec::<f64>::from_fn(&comm, len, |g| g as f64)?;
        comm.barrier()?;
        let t = Instant::now();
        let mut warm = 0u32;
        while warm < WARMUP_MAX {
            w.for_each_mut(|_, x| kernel(x));
            comm.barrier()?;
            warm += 1;
            // Identical decision on every rank, so every rank leaves the loop together.
            if matches!(w.balance(&comm)?, Decision::Rebalance { .. }) {
                break;
            }
        }
        let t_warm = t.elapsed().as_secs_f64();
        let (t_steady, rate_steady) = phase(&comm, &mut w, steps, Some(every))?;
        // The same number of kernel applications as phase 1, so the sums must agree.
        for _ in 0..warm {
            v.for_each_mut(|_, x| kernel(x));
        }
        let sum_static = v.sum(&comm)?;
        let sum_bal = w.sum(&comm)?;
        let final_range = w.range();

        // Migration profile. Fixed part: a redistribution to the current layout (moves
        // nothing; pays the collectives and thread wake-ups).
        let even = Distribution::even(len, n as usize)?;
        let mut u = DVec::<f64>::with_distribution(&comm, even.clone(), 1)?;
        let mut t_fixed = f64::INFINITY;
        for _ in 0..REPS {
            comm.barrier()?;
            let t = Instant::now();
            u.redistribute(&comm, &even)?;
            comm.barrier()?;
            t_fixed = t_fixed.min(t.elapsed().as_secs_f64());
        }
        // Two sizes (len and 4 len) shifted there and back; best of REPS each.
        let mut mig = Vec::new();
        for scale in [1u64, 4] {
            let l = len * scale;
            let even = Distribution::even(l, n as usize)?;
            let shifted =
                Distribution::weighted(l, &(0..n).map(|r| 1.0 + f64::from(r)).collect::<Vec<_>>())?;
            let moved = lazarus::dist::Plan::new(&even, &shifted, u64::MAX)?.moved();
            let mut u = DVec::<f64>::with_distribution(&comm, even.clone(), 1)?;
            let mut best = f64::INFINITY;
            let mut first = None;
            for _ in 0..REPS {
                for to in [&shifted, &even] {
                    comm.barrier()?;
                    let t = Instant::now();
                    u.redistribute(&comm, to)?;
                    comm.barrier()?;
                    let e = t.elapsed().as_secs_f64();
                    first.get_or_insert(e);
                    best = best.min(e);
                }
            }
            mig.push((moved * 8, best, first.unwrap_or(best)));
        }
        // Physical references for the larger size: warm memcpy, and a copy into fresh
        // memory (first touch), which is what receiving into a new buffer costs.
        let bytes = mig.last().map_or(1, |m| m.0 as usize).max(1);
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        dst.copy_from_slice(&src); // warm both buffers
        let t = Instant::now();
        dst.copy_from_slice(&src);
        let t_copy = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let fresh = src.clone();
        let t_first = t.elapsed().as_secs_f64();
        drop(fresh);
        Ok(Row {
            rate,
            rate_steady,
            t_static,
            t_warm,
            t_steady,
            warm,
            same: sum_static.to_bits() == sum_bal.to_bits(),
            final_range,
            t_fixed,
            mig,
            t_copy,
            t_first,
        })
    })?;
    let mut rows = Vec::new();
    for r in results {
        rows.push(r?);
    }
    // Each phase against the ideal measured in that phase (the load on a shared machine
    // drifts between phases).
    let ideal: f64 = rows.iter().map(|r| r.rate).sum();
    let ideal_b: f64 = rows.iter().map(|r| r.rate_steady).sum();
    let total = len as f64 * f64::from(steps);
    let worst = |f: fn(&Row) -> f64| rows.iter().map(f).fold(0.0, f64::max);
    let t_static = worst(|r| r.t_static);
    let t_warm = worst(|r| r.t_warm);
    let t_steady = worst(|r| r.t_steady);
    let warm = rows.first().map_or(0, |r| r.warm);
    let thr_s = total / t_static;
    let thr_b = total / t_steady;
    let thr_w = (total + len as f64 * f64::from(warm)) / (t_warm + t_steady);
    outln!(
        "per-rank rates (elem/s): {:?}",
        rows.iter()
            .map(|r| format!("{:.3e}", r.rate))
            .collect::<Vec<_>>()
    )?;
    outln!(
        "final blocks with balancing: {:?}",
        rows.iter()
            .map(|r| r.final_range.clone())
            .collect::<Vec<_>>()
    )?;
    outln!("ideal (sum of rates): static phase {ideal:.3e}, balanced phase {ideal_b:.3e} elem/s")?;
    outln!(
        "without balancing:    {thr_s:.3e} elem/s = {:.2}x ideal",
        thr_s / ideal
    )?;
    outln!(
        "with balancing, steady state ({steps} steps after the first rebalance): {thr_b:.3e} elem/s = {:.2}x ideal (target >= 0.85)",
        thr_b / ideal_b
    )?;
    outln!(
        "with balancing, whole run ({warm} warm-up steps incl. migration + {steps}): {thr_w:.3e} elem/s = {:.2}x ideal",
        thr_w / ideal_b
    )?;
    outln!(
        "results identical with and without balancing: {}",
        rows.iter().all(|r| r.same)
    )?;
    let t_fixed = worst(|r| r.t_fixed);
    let t_copy = worst(|r| r.t_copy);
    let t_first = worst(|r| r.t_first);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let sizes: Vec<(u64, f64, f64)> = (0..rows.first().map_or(0, |r| r.mig.len()))
        .map(|i| {
            let b = rows.first().and_then(|r| r.mig.get(i)).map_or(0, |m| m.0);
            let t = |f: fn(&(u64, f64, f64)) -> f64| {
                rows.iter()
                    .filter_map(|r| r.mig.get(i).map(f))
                    .fold(0.0, f64::max)
            };
            (b, t(|m| m.1), t(|m| m.2))
        })
        .collect();
    outln!(
        "migration fixed cost (redistribute moving nothing): {:.2} ms",
        t_fixed * 1e3
    )?;
    for (b, t, cold) in &sizes {
        outln!(
            "migration of {:.1} MiB: best {:.2} ms = {:.2} ms/MiB all-in (first, cold: {:.2} ms/MiB)",
            mib(*b),
            t * 1e3,
            t * 1e3 / mib(*b).max(1e-9),
            cold * 1e3 / mib(*b).max(1e-9)
        )?;
    }
    if let [(b1, t1, _), (b2, t2, _)] = sizes[..] {
        let big = mib(b2);
        let slope = (t2 - t1) / (mib(b2) - mib(b1)).max(1e-9);
        outln!(
            "migration slope: {:.3} ms/MiB; memcpy {:.3} ms/MiB, copy into fresh memory {:.3} ms/MiB (slope / first-touch copy = {:.1}x)",
            slope * 1e3,
            t_copy * 1e3 / big,
            t_first * 1e3 / big,
            slope / (t_first / big).max(1e-12)
        )?;
    }

    restart(&a)
}

/// A scratch directory removed on drop (also on error paths).
/// Element `g` of the restart benchmark's vector: not trivially compressible, cheap.
fn value(g: u64) -> f64 {
    (g.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// N -> M restart vs M -> M restart through the Job API and the store.
fn restart(a: &Args) -> CmdResult {
    let (n, m) = (a.restore_from.max(1), a.restore_on.max(1));
    let len = a.restore_mib.max(1) * (1 << 20) / 8;
    let reps = a.restore_reps.max(1);
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("lazarus-bench-restart-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let (from_n, from_m) = (scratch.0.join("from-n"), scratch.0.join("from-m"));
    write_checkpoint(&from_n, n, len)?;
    write_checkpoint(&from_m, m, len)?;
    let want = restore_once(&from_m, m, len)?.1;
    let (mut t_same, mut t_el) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t, sum) = restore_once(&from_m, m, len)?;
        if sum != want {
            return Err("restore on the same number of ranks changed the data".into());
        }
        t_same.push(t);
        let (t, sum) = restore_once(&from_n, m, len)?;
        if sum != want {
            return Err(format!("restore {n} -> {m} changed the data").into());
        }
        t_el.push(t);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (ms, me) = (med(&mut t_same), med(&mut t_el));
    let (t_raw, raw_bytes) = read_files(&from_m.join("chunks"))?;
    let mib = (len * 8) as f64 / (1 << 20) as f64;
    outln!(
        "restart of a {mib:.0} MiB DVec on {m} ranks (Job::open + restore_or_init, slowest rank, \
         median of {reps}): written by {m} ranks {:.1} ms ({:.0} MiB/s), written by {n} ranks \
         (redistributed) {:.1} ms ({:.0} MiB/s); ratio {:.2}x (target <= 1.2); data identical",
        ms * 1e3,
        mib / ms.max(1e-12),
        me * 1e3,
        mib / me.max(1e-12),
        me / ms.max(1e-12)
    )?;
    outln!(
        "  floor: reading the same checkpoint's chunk files ({:.1} MiB stored; page cache, one \
         thread): {:.1} ms ({:.0} MiB/s of state); same-size restore = {:.1}x that",
        raw_bytes as f64 / (1 << 20) as f64,
        t_raw * 1e3,
        mib / t_raw.max(1e-12),
        ms / t_raw.max(1e-12)
    )?;
    outln!(
        "  all runs, same size: {:?} ms",
        t_same.iter().map(|t| (t * 1e3).round()).collect::<Vec<_>>()
    )?;
    outln!(
        "  all runs, {n} -> {m}: {:?} ms",
        t_el.iter().map(|t| (t * 1e3).round()).collect::<Vec<_>>()
    )?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Seconds to read every file under `dir` (recursively) once, and the bytes read.
fn read_files(dir: &Path) -> Result<(f64, u64), Err> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let t = Instant::now();
    let mut n = 0usize;
    for f in &files {
        n += std::fs::read(f)?.len();
    }
    let el = t.elapsed().as_secs_f64();
    if n == 0 {
        return Err(format!("no chunk data under {}", dir.display()).into());
    }
    Ok((el, n as u64))
}

/// Checkpoints the benchmark vector from `world` ranks (threads) into `repo`.
fn write_checkpoint(repo: &Path, world: u32, len: u64) -> Result<(), Err> {
    for r in lazarus::local(world, |comm| -> Result<(), Err> {
        let mut job = Job::builder().repo(repo).comm(comm.clone()).open()?;
        let fresh = DVec::<f64>::from_fn(&comm, len, value)?;
        let v = job.restore_or_init(|| fresh)?;
        job.checkpoint_now(&v)?;
        Ok(())
    })? {
        r?;
    }
    Ok(())
}

/// Opens the job on `world` ranks and restores; returns the slowest rank's time and the
/// vector's exact sum (to check the data).
fn restore_once(repo: &Path, world: u32, len: u64) -> Result<(f64, u64), Err> {
    let out = lazarus::local(world, |comm| -> Result<(f64, u64), Err> {
        comm.barrier()?;
        let t = Instant::now();
        let mut job = Job::builder().repo(repo).comm(comm.clone()).open()?;
        let fresh = DVec::<f64>::new(&comm, len)?;
        let v = job.restore_or_init(|| fresh)?;
        if job.restore_report().is_none() {
            return Err("no checkpoint restored".into());
        }
        let el = t.elapsed().as_secs_f64();
        let sum = v.sum(&comm)?;
        drop(job);
        comm.barrier()?;
        Ok((el, sum.to_bits()))
    })?;
    let (mut worst, mut sum) = (0.0f64, 0);
    for r in out {
        let (t, s) = r?;
        worst = worst.max(t);
        sum = s;
    }
    Ok((worst, sum))
}
