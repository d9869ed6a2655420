//! `lazarus bench vm`: the cost of VM-level checkpointing (docs/VM.md), measured in the
//! same run against its baselines:
//!
//! 1. slowdown: uninstrumented vs instrumented (budget countdown at loop headers, NaN
//!    canonicalisation, Asyncify) on each runtime (target <= 1.2x), for a micro compute
//!    loop (WAT) and three C kernels compiled to WASI (`vm_kernels.c`: a sieve, a double
//!    matrix multiply, recursion through a function pointer), with the middle column
//!    "counters": the same instrumentation without Asyncify, which splits the cost between
//!    the two. `--module` adds a program of your own;
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
    /// Iterations of the built-in compute loop on wasmtime (wasmi, an interpreter, runs
    /// 1/20 of them).
    #[arg(long, default_value_t = 400_000_000)]
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
    /// Multiplies the work of the C kernels (1: about 1 s each uninstrumented on the
    /// development VM; wasmi runs 20-100x less work than wasmtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    kernel_reps: u32,
    /// Time only the programs whose name contains this (e.g. `sieve`, `WAT`).
    #[arg(long)]
    only: Option<String>,
    /// Only the slowdown part (skip the checkpoint-size measurement).
    #[arg(long)]
    slowdown_only: bool,
}

/// `vm_kernels.c` built with
/// `clang-16 --target=wasm32-wasi -O2 -Wl,--strip-all -o vm_kernels.wasm vm_kernels.c`
/// (Debian clang-16 + wasi-libc): committed, so the benchmark needs no C toolchain.
const KERNELS_WASM: &[u8] = include_bytes!("vm_kernels.wasm");

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
    // (name, module, arguments on wasmi, arguments on wasmtime): the interpreter gets less
    // work so that both take about a second; each ratio compares one runtime with itself.
    let kernel = |name: &str, n: u32, wasmi_reps: u32, wasmtime_reps: u32| {
        let args = |reps: u32| {
            vec![
                name.to_string(),
                n.to_string(),
                (reps * a.kernel_reps).to_string(),
            ]
        };
        (
            format!("C {name} (vm_kernels.c)"),
            KERNELS_WASM.to_vec(),
            args(wasmi_reps),
            args(wasmtime_reps),
        )
    };
    let mut programs = vec![
        (
            "compute loop (WAT)".to_string(),
            wat::parse_str(compute_loop(a.iterations / 20))?,
            Vec::new(),
            Vec::new(),
        ),
        kernel("sieve", 2_000_000, 1, 40),
        kernel("matmul", 200, 2, 100),
        kernel("fib", 30, 3, 60),
    ];
    let wasmtime_loop = wat::parse_str(compute_loop(a.iterations))?;
    if let Some(m) = &a.module {
        let bytes = std::fs::read(m)?;
        programs.push((
            m.display().to_string(),
            bytes,
            a.args.clone(),
            a.args.clone(),
        ));
    }
    outln!(
        "== slowdown of the instrumented module (thread CPU time, median of {}; counters: no Asyncify)",
        a.repeat
    )?;
    for (i, (name, plain, wasmi_args, wasmtime_args)) in programs.iter().enumerate() {
        if a.only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        for rt in &runtimes {
            let (plain, args) = match rt {
                RuntimeKind::Wasmi => (plain, wasmi_args),
                RuntimeKind::Wasmtime if i == 0 => (&wasmtime_loop, wasmtime_args),
                RuntimeKind::Wasmtime => (plain, wasmtime_args),
            };
            let counters = lazarus_vm::instrument::instrument_without_asyncify(plain)?;
            let inst = lazarus_vm::instrument::instrument(plain)?;
            let (t0, c0) = time(*rt, plain, args, a.repeat)?;
            let (tc, cc) = time(*rt, &counters, args, a.repeat)?;
            let (t1, c1) = time(*rt, &inst, args, a.repeat)?;
            if c0 != c1 || c0 != cc {
                return Err(format!(
                    "{name} on {}: exit {c0} uninstrumented, {cc} counters only, {c1} \
                     instrumented",
                    rt.name()
                )
                .into());
            }
            outln!(
                "{name} on {:8}: plain {t0:.3} s, counters {tc:.3} s ({:.2}x), instrumented \
                 {t1:.3} s, slowdown {:.2}x (target <= 1.2x)",
                rt.name(),
                tc / t0,
                t1 / t0
            )?;
        }
    }
    if a.slowdown_only {
        return Ok(ExitCode::SUCCESS);
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
