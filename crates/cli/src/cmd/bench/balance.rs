//! `lazarus bench balance`: data-parallel load balancing, migration and N -> M restore.
//!
//! Ranks are threads of this process (`lazarus::local`). One rank is slowed by the
//! `LAZARUS_SLOWDOWN` knob (default `1:3`: rank 1 takes 3x per element). Printed ratios:
//! throughput without and with balancing against the ideal (the sum of the ranks' own
//! rates, measured in the same run); migration seconds per MiB moved against a memcpy of
//! the same bytes; restore time on M ranks (via `Reshard`) against restore on N.

use crate::cmd::CmdResult;
use lazarus::dist::{Distribution, Reshard, SLOWDOWN_ENV};
use lazarus::format::{LoadedObject, Rank};
use lazarus::{Comm, DVec};
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
    /// Steps per phase.
    #[arg(long, default_value_t = 40)]
    steps: u32,
    /// Call `balance()` every this many steps in the balanced phase.
    #[arg(long, default_value_t = 4)]
    every: u32,
    /// World size M for the N -> M restore measurement (default: ranks + 1).
    #[arg(long)]
    restore_on: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("object not found")]
struct Missing;

fn kernel(x: &mut f64) {
    // ~80 dependent flops per element: compute-bound, so rates reflect CPU speed.
    let mut y = *x;
    for _ in 0..40 {
        y = y * 0.999_999 + 1e-7;
    }
    *x = y;
}

type Err = Box<dyn std::error::Error + Send + Sync>;

/// Runs `steps` steps; returns (wall seconds, per-rank compute seconds, elements per rank).
fn phase(
    comm: &Comm,
    v: &mut DVec<f64>,
    steps: u32,
    every: Option<u32>,
) -> Result<(f64, f64), Err> {
    comm.barrier()?;
    let t = Instant::now();
    let mut compute = 0.0;
    for s in 0..steps {
        let c = Instant::now();
        v.for_each_mut(|_, x| kernel(x));
        compute += c.elapsed().as_secs_f64();
        comm.barrier()?; // a step ends with communication, as in a real stencil/solver
        if let Some(e) = every {
            if (s + 1) % e == 0 {
                v.balance(comm)?;
            }
        }
    }
    Ok((t.elapsed().as_secs_f64(), compute))
}

/// Runs the benchmark.
pub fn main(a: Args) -> CmdResult {
    if std::env::var_os(SLOWDOWN_ENV).is_none() {
        // The knob is read when DVecs are created, by every rank of this process.
        std::env::set_var(SLOWDOWN_ENV, "1:3");
    }
    let knob = std::env::var(SLOWDOWN_ENV).unwrap_or_default();
    let n = a.ranks.max(1);
    let m = a.restore_on.unwrap_or(n + 1).max(1);
    let len = a.len;
    let steps = a.steps.max(1);
    let every = a.every.max(1);
    println!("bench balance: {n} ranks, {len} f64, {steps} steps/phase, {SLOWDOWN_ENV}={knob}");

    let results = lazarus::local(n, |comm| -> Result<_, Err> {
        // Phase 1: static even blocks.
        let mut v = DVec::<f64>::from_fn(&comm, len, |g| g as f64)?;
        let (t_static, c_static) = phase(&comm, &mut v, steps, None)?;
        let my = (v.range().end - v.range().start) as f64 * f64::from(steps);
        let rate = if c_static > 0.0 { my / c_static } else { 0.0 };
        let sum_static = v.sum(&comm)?;
        // Phase 2: balancing every `every` steps.
        let mut w = DVec::<f64>::from_fn(&comm, len, |g| g as f64)?;
        let (t_bal, _) = phase(&comm, &mut w, steps, Some(every))?;
        let sum_bal = w.sum(&comm)?;
        let final_range = w.range();

        // Migration: move ~half of every block to the neighbour and back.
        let even = Distribution::even(len, n as usize)?;
        let shifted =
            Distribution::weighted(len, &(0..n).map(|r| 1.0 + f64::from(r)).collect::<Vec<_>>())?;
        let mut u = DVec::<f64>::with_distribution(&comm, even.clone(), 1)?;
        let moved = lazarus::dist::Plan::new(&even, &shifted, u64::MAX)?.moved();
        comm.barrier()?;
        let t = Instant::now();
        u.redistribute(&comm, &shifted)?;
        comm.barrier()?;
        let t_mig = t.elapsed().as_secs_f64();
        let bytes = (moved * 8) as usize;
        let src = vec![1u8; bytes.max(1)];
        let mut dst = vec![0u8; bytes.max(1)];
        dst.copy_from_slice(&src); // warm both buffers
        let t = Instant::now();
        dst.copy_from_slice(&src);
        let t_copy = t.elapsed().as_secs_f64();

        // Checkpoint objects of this rank (in memory: the store is measured elsewhere).
        let objs = lazarus::state::to_loaded(&lazarus::state::save(&w)?);
        Ok((
            rate,
            t_static,
            t_bal,
            sum_static.to_bits() == sum_bal.to_bits(),
            final_range,
            moved,
            t_mig,
            t_copy,
            objs,
        ))
    })?;
    let mut rows = Vec::new();
    for r in results {
        rows.push(r?);
    }
    let ideal: f64 = rows.iter().map(|r| r.0).sum();
    let total = len as f64 * f64::from(steps);
    let t_static = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let t_bal = rows.iter().map(|r| r.2).fold(0.0, f64::max);
    let (thr_s, thr_b) = (total / t_static, total / t_bal);
    println!(
        "per-rank rates (elem/s): {:?}",
        rows.iter()
            .map(|r| format!("{:.3e}", r.0))
            .collect::<Vec<_>>()
    );
    println!(
        "final blocks with balancing: {:?}",
        rows.iter().map(|r| r.4.clone()).collect::<Vec<_>>()
    );
    println!("ideal (sum of rates): {ideal:.3e} elem/s");
    println!(
        "without balancing:    {thr_s:.3e} elem/s = {:.2}x ideal",
        thr_s / ideal
    );
    println!(
        "with balancing:       {thr_b:.3e} elem/s = {:.2}x ideal (target >= 0.85)",
        thr_b / ideal
    );
    println!(
        "results identical with and without balancing: {}",
        rows.iter().all(|r| r.3)
    );
    let moved = rows[0].5;
    let mib = (moved * 8) as f64 / (1 << 20) as f64;
    let t_mig = rows.iter().map(|r| r.6).fold(0.0, f64::max);
    let t_copy = rows.iter().map(|r| r.7).fold(0.0, f64::max);
    if mib > 0.0 {
        println!(
            "migration: {mib:.1} MiB moved in {:.1} ms = {:.2} ms/MiB (memcpy of the same bytes: {:.3} ms/MiB, ratio {:.1}x)",
            t_mig * 1e3,
            t_mig * 1e3 / mib,
            t_copy * 1e3 / mib,
            t_mig / t_copy.max(1e-12)
        );
    }

    // Restore: same N (each rank its own part) vs N -> M through Reshard.
    let parts: Vec<Vec<LoadedObject>> = rows.into_iter().map(|r| r.8).collect();
    let infos: Vec<Vec<_>> = parts
        .iter()
        .map(|p| p.iter().map(|o| o.info.clone()).collect())
        .collect();
    let t_same = time_restore(n, &parts, None)?;
    let plan = Reshard::new(&infos, m)?;
    let t_nm = time_restore(m, &parts, Some(&plan))?;
    println!(
        "restore {n} -> {n}: {:.2} ms; {n} -> {m}: {:.2} ms; ratio {:.2}x (target <= 1.2)",
        t_same * 1e3,
        t_nm * 1e3,
        t_nm / t_same.max(1e-12)
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn time_restore(
    world: u32,
    parts: &[Vec<LoadedObject>],
    plan: Option<&Reshard>,
) -> Result<f64, Err> {
    let times = lazarus::local(world, |comm| -> Result<f64, Err> {
        let mut v = DVec::<f64>::new(&comm, 1)?;
        comm.barrier()?;
        let t = Instant::now();
        let objs = match plan {
            None => parts.get(comm.rank().index()).cloned().ok_or("no part")?,
            Some(p) => p.assemble(comm.rank(), &mut |r: Rank, name: &str| {
                parts
                    .get(r.index())
                    .and_then(|p| p.iter().find(|o| o.info.name == name))
                    .cloned()
                    .ok_or(Missing)
            })?,
        };
        lazarus::state::restore(&mut v, objs)?;
        v.sync_distribution(&comm)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let mut worst: f64 = 0.0;
    for t in times {
        worst = worst.max(t?);
    }
    Ok(worst)
}
