//! `lines_async --steps N --every K --kib S --sleep-ms M`: a Job API program whose
//! output must survive restarts exactly once. Every step, every rank prints one line
//! `r<rank> s<step>` in two halves around its step (a background `commit` marker often
//! lands between them), changes its state (S KiB, so each background flush writes new chunks)
//! and sleeps M ms; a checkpoint is taken every K steps, asynchronously (the Job API's
//! default, docs/ASYNC.md). At the end rank 0 prints `checksum=<hex>`. Run it under
//! `lazarus run --repo`: the supervisor's output commit must release every line exactly
//! once however often the job is killed (tests/async_output.rs).

#![deny(clippy::print_stdout, clippy::print_stderr)]

use lazarus::{Checkpoint, Job};
use std::error::Error;
use std::io::Write;
use std::time::Duration;

const USAGE: &str = "lines_async: prints one line per step and checkpoints asynchronously
Usage: lines_async [--steps N] [--every K] [--kib S] [--sleep-ms M]

  --steps N     steps to run (default 30)
  --every K     checkpoint every K steps (default 5)
  --kib S       KiB of state per rank (default 1024)
  --sleep-ms M  sleep per step (default 5)
  -h, --help    print this help
";

#[derive(Checkpoint)]
struct State {
    data: Vec<u64>,
    acc: u64,
}

fn parse(raw: &[String]) -> Result<[u64; 4], String> {
    let mut v = [30, 5, 1024, 5];
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--steps" => 0,
            "--every" => 1,
            "--kib" => 2,
            "--sleep-ms" => 3,
            other => return Err(format!("unknown argument {other:?}")),
        };
        v[slot] = it
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))?;
    }
    if v[1] == 0 {
        return Err("--every must be at least 1".into());
    }
    Ok(v)
}

fn run([steps, every, kib, sleep_ms]: [u64; 4]) -> Result<(), Box<dyn Error>> {
    let comm = lazarus::init()?;
    let rank = comm.rank().0;
    let mut job = Job::builder().comm(comm).every_steps(every).open()?;
    let words = (kib * 128) as usize;
    let mut s = job.restore_or_init(|| State {
        data: vec![u64::from(rank); words],
        acc: u64::from(rank),
    })?;
    let mut out = std::io::stdout();
    while job.step() < steps {
        let step = job.checkpoint(&s)?;
        // Each line is written in two halves with the step's work between them, so a
        // `commit` marker the background flush writes often lands in the middle of the
        // line: the supervisor takes it out and releases the line whole, exactly once
        // (docs/RECOVERY.md). Both halves come after the checkpoint call: text printed
        // before it in the same iteration would be printed again by a restart from that
        // checkpoint, which re-enters the loop at its top.
        write!(out, "r{rank} ")?;
        out.flush()?;
        // One word per 4 KiB page: every chunk of the next checkpoint is new.
        s.data
            .iter_mut()
            .step_by(512)
            .for_each(|w| *w = w.wrapping_mul(31).wrapping_add(step));
        s.acc = s.acc.wrapping_mul(1_000_003).wrapping_add(s.data[0] ^ step);
        std::thread::sleep(Duration::from_millis(sleep_ms));
        writeln!(out, "s{step}")?;
        out.flush()?;
    }
    job.finish(&s)?;
    if rank == 0 {
        writeln!(out, "checksum={:016x}", s.acc)?;
    }
    Ok(())
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        let ok = write!(std::io::stdout(), "{USAGE}").is_ok();
        std::process::exit(if ok { 0 } else { 1 });
    }
    lazarus::init_logging("warn");
    if let Err(e) = parse(&raw).map_err(Into::into).and_then(run) {
        let _ = writeln!(std::io::stderr(), "lines_async: error: {e}");
        std::process::exit(1);
    }
}
