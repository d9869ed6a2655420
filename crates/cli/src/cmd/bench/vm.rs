//! `lazarus bench vm`: the cost of VM-level checkpointing (docs/VM.md), measured in the
//! same run against its baselines:
//!
//! 1. slowdown: a compute loop without system calls, uninstrumented vs instrumented
//!    (budget countdown at loop headers, NaN canonicalisation, Asyncify), on each runtime
//!    (target <= 1.2x). `--module` adds a program of your own (e.g. a C build);
//! 2. full checkpoint of `--memory` (default 256 MiB) of incompressible linear memory
//!    (the whole checkpoint: unwind, capture, write, COMMIT, rewind) vs `memcpy` of the
//!    same bytes plus a raw write + fsync of them to one file in the same directory;
//! 3. incremental: the program then changes 1 % of its pages and the next checkpoint's
//!    new bytes and time are reported.

use super::{load_average, Scratch};
use crate::cmd::CmdResult;
use lazarus_vm::{Every, RuntimeKind, VmConfig};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Flags of `lazarus bench vm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Iterations of the built-in compute loop.
    #[arg(long, default_value_t = 200_000_000)]
    iterations: u64,
    /// Linear memory for the checkpoint measurement, MiB (at most 3072).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..=3072))]
    memory_mib: u64,
    /// Also time this WASI module (uninstrumented vs instrumented), with `--arg`s.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Arguments for `--module`.
    #[arg(long = "arg")]
    args: Vec<String>,
    /// Scratch directory (default: system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Runs of each timing (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// The compute loop: an LCG with a store, `n` iterations, no system call.
fn compute_loop(n: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i64) (local $s i64)
    (local.set $s (i64.const 1))
    (loop $l
      (local.set $s (i64.add (i64.mul (local.get $s) (i64.const 6364136223846793005))
                             (i64.xor (local.get $i) (i64.shr_u (local.get $s) (i64.const 29)))))
      (i64.store (i32.wrap_i64 (i64.and (local.get $i) (i64.const 0xff8))) (local.get $s))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const {n}))))
    (call $exit (i32.wrap_i64 (i64.and (local.get $s) (i64.const 127))))))"#
    )
}

/// Fills `pages` pages with xorshift bytes, then forever: rewrites one word in each of
/// `touch` fixed pages, then spins `spin` iterations.
fn memory_program(pages: u64, touch: u64, spin: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32) (local $x i64) (local $r i64) (local $p i64)
    (drop (memory.grow (i32.const {grow})))
    (local.set $x (i64.const 88172645463325252))
    (loop $fill
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (i64.store (local.get $i) (local.get $x))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const {bytes}))))
    (loop $round
      (local.set $r (i64.add (local.get $r) (i64.const 1)))
      (local.set $p (i64.const 0))
      (loop $touch
        (i64.store (i32.wrap_i64 (i64.mul (i64.rem_u (i64.mul (local.get $p) (i64.const 97)) (i64.const {pages})) (i64.const 65536)))
                   (local.get $r))
        (local.set $p (i64.add (local.get $p) (i64.const 1)))
        (br_if $touch (i64.lt_u (local.get $p) (i64.const {touch}))))
      (local.set $p (i64.const 0))
      (loop $spin
        (local.set $p (i64.add (local.get $p) (i64.const 1)))
        (br_if $spin (i64.lt_u (local.get $p) (i64.const {spin}))))
      (br $round))
    (call $exit (i32.const 0))))"#,
        grow = pages - 1,
        bytes = pages * 65536 - 8,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn time(
    kind: RuntimeKind,
    module: &[u8],
    args: &[String],
    repeat: usize,
) -> Result<(f64, i32), lazarus_vm::VmError> {
    let mut ts = Vec::new();
    let mut code = 0;
    for _ in 0..repeat.max(1) {
        let (c, d) = lazarus_vm::time_module(kind, module, args)?;
        code = c;
        ts.push(d.as_secs_f64());
    }
    Ok((median(ts), code))
}

/// Runs the benchmark and prints the ratios.
pub fn main(a: Args) -> CmdResult {
    outln!(
        "load average: {}",
        load_average().unwrap_or_else(|| "?".into())
    )?;
    let runtimes: Vec<RuntimeKind> = [RuntimeKind::Wasmi, RuntimeKind::Wasmtime]
        .into_iter()
        .filter(|r| r.available())
        .collect();
    let mut programs = vec![(
        "compute loop (built-in)".to_string(),
        wat::parse_str(compute_loop(a.iterations))?,
        Vec::new(),
    )];
    if let Some(m) = &a.module {
        programs.push((m.display().to_string(), std::fs::read(m)?, a.args.clone()));
    }
    outln!(
        "== slowdown of the instrumented module (median of {})",
        a.repeat
    )?;
    for (name, plain, args) in &programs {
        let inst = lazarus_vm::instrument::instrument(plain)?;
        for rt in &runtimes {
            let (t0, c0) = time(*rt, plain, args, a.repeat)?;
            let (t1, c1) = time(*rt, &inst, args, a.repeat)?;
            if c0 != c1 {
                return Err(format!(
                    "{name} on {}: exit {c0} uninstrumented, {c1} instrumented",
                    rt.name()
                )
                .into());
            }
            outln!(
                "{name} on {:8}: plain {t0:.3} s, instrumented {t1:.3} s, slowdown {:.2}x (target <= 1.2x)",
                rt.name(),
                t1 / t0
            )?;
        }
    }

    let scratch = Scratch(
        a.dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("lazarus-bench-vm-{}", std::process::id())),
    );
    std::fs::create_dir_all(scratch.path())?;
    let pages = a.memory_mib * 16;
    let bytes = (pages * 65536) as usize;
    outln!("== checkpoint of {} MiB of linear memory", a.memory_mib)?;
    // Baseline: memcpy + one raw durable write of the same amount.
    let src: Vec<u8> = (0..bytes)
        .map(|i| (i as u64).wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes()[7])
        .collect();
    let t = Instant::now();
    let copy = src.clone();
    let memcpy = t.elapsed().as_secs_f64();
    let raw = scratch.path().join("raw");
    let t = Instant::now();
    let mut f = std::fs::File::create(&raw)?;
    f.write_all(&copy)?;
    f.sync_all()?;
    let write = t.elapsed().as_secs_f64();
    drop((copy, src));
    std::fs::remove_file(&raw)?;
    outln!(
        "baseline: memcpy {memcpy:.3} s + raw write+fsync {write:.3} s = {:.3} s",
        memcpy + write
    )?;

    let touch = (pages / 100).max(1);
    let module_path = scratch.path().join("mem.wasm");
    std::fs::write(
        &module_path,
        wat::parse_str(memory_program(pages, touch, 2_000_000))?,
    )?;
    for rt in &runtimes {
        let mut cfg = VmConfig::new(&module_path, Vec::new());
        cfg.repo = Some(scratch.path().join(format!("repo-{}", rt.name())));
        cfg.runtime = *rt;
        cfg.cache_dir = None;
        // First checkpoint right after the fill, the second after a few rounds.
        let fill_steps = (bytes / 8) as u64;
        cfg.every = Every::Steps(fill_steps + 1_000);
        cfg.stop_after_checkpoints = Some(2);
        let t = Instant::now();
        let r = lazarus_vm::run(&cfg)?;
        let total = t.elapsed();
        let [full, inc] = r.checkpoints.as_slice() else {
            return Err(format!("expected 2 checkpoints, got {}", r.checkpoints.len()).into());
        };
        outln!(
            "{:8}: full checkpoint {:.3} s ({:.2}x memcpy+raw write), {} MiB new; incremental \
             after {touch} of {pages} pages (1 %) changed: {:.3} s, {:.2} MiB new ({:.2} % of \
             memory); whole run {:.1} s",
            rt.name(),
            full.secs,
            full.secs / (memcpy + write),
            full.new_bytes >> 20,
            inc.secs,
            inc.new_bytes as f64 / (1 << 20) as f64,
            100.0 * inc.new_bytes as f64 / bytes as f64,
            total.as_secs_f64()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
