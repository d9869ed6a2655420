//! Mandelbrot frames on a `DVec` of image rows: an irregular workload where load balancing
//! matters (rows through the set cost up to `max_iter` iterations per pixel, rows outside
//! it a handful).
//!
//! Each frame recomputes the image with a slightly zoomed view; after every frame
//! `balance()` measures the per-rank cost and, with the `ElementCost` model (ranks alike,
//! cost varies along the rows), moves row boundaries so every rank gets the same work.
//! The image checksum is a distribution-independent reduction, so it is the same with
//! and without balancing and for any number of ranks.
//!
//! ```text
//! cargo run --release --example mandelbrot -- [ranks] [frames] [--no-balance]
//! lazarus run -n 4 -- target/release/examples/mandelbrot      # one process per rank
//! ```
//! Under `lazarus run` (or any launcher setting `LAZARUS_WORLD_SIZE`) each process is one
//! rank; otherwise `ranks` threads are started in this process.
// Writing to a failed stdout/stderr must not panic (issue #11 item 10).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use lazarus::dist::{BalanceConfig, CostModel, Decision};
use lazarus::{Comm, DVec};
use std::io::Write;
use std::time::Instant;

const WIDTH: usize = 640;
const HEIGHT: u64 = 480;
const MAX_ITER: u32 = 600;

fn pixel(cx: f64, cy: f64) -> u32 {
    let (mut x, mut y, mut i) = (0.0f64, 0.0f64, 0);
    while i < MAX_ITER && x * x + y * y <= 4.0 {
        let t = x * x - y * y + cx;
        y = 2.0 * x * y + cy;
        x = t;
        i += 1;
    }
    i
}

fn run(comm: Comm, frames: u32, balance: bool) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let mut img = DVec::<u32>::with_width(&comm, HEIGHT, WIDTH)?;
    img.set_balance_config(BalanceConfig {
        model: CostModel::ElementCost,
        cooldown: 1,
        ..BalanceConfig::default()
    })?;
    let t = Instant::now();
    let mut checksum = 0;
    for f in 0..frames {
        let zoom = 1.5 * 0.97f64.powi(f as i32);
        let (cx0, cy0) = (-0.743_643_887, 0.131_825_904);
        let ft = Instant::now();
        img.for_each_row_mut(|row, pixels| {
            let cy = cy0 + zoom * ((row as f64 / HEIGHT as f64) * 2.0 - 1.0) * 0.75;
            for (c, p) in pixels.iter_mut().enumerate() {
                let cx = cx0 + zoom * ((c as f64 / WIDTH as f64) * 2.0 - 1.0);
                *p = pixel(cx, cy);
            }
        });
        let busy = ft.elapsed().as_secs_f64();
        comm.barrier()?;
        let frame = ft.elapsed().as_secs_f64();
        checksum = img.reduce(
            &comm,
            0u64,
            |g, r| {
                r.iter()
                    .map(|&p| u64::from(p))
                    .sum::<u64>()
                    .wrapping_mul(g + 1)
            },
            u64::wrapping_add,
        )?;
        let note = if balance {
            match img.balance(&comm)? {
                Decision::Rebalance { imbalance, predicted, moved, .. } => format!(
                    "rebalanced (imbalance {imbalance:.2} -> predicted {predicted:.2}, {moved} rows moved)"
                ),
                Decision::Keep { imbalance, reason } => format!("kept (imbalance {imbalance:.2}: {reason})"),
            }
        } else {
            String::new()
        };
        if comm.rank().0 == 0 {
            writeln!(
                std::io::stdout(),
                "frame {f:2}: {:6.1} ms (rank 0 busy {:6.1} ms) {note}",
                frame * 1e3,
                busy * 1e3
            )?;
        }
    }
    Ok((checksum, t.elapsed().as_secs_f64()))
}

/// `--help` text.
const USAGE: &str = "\
mandelbrot: Mandelbrot frames on a DVec of rows, an irregular load to balance

Usage: mandelbrot [RANKS] [FRAMES] [--no-balance]
       lazarus run -n P -- mandelbrot [FRAMES] [--no-balance]

Arguments:
  RANKS          ranks as threads of this process, outside a launcher (default 4)
  FRAMES         frames to compute (default 12)
  --no-balance   never move rows between ranks
  -h, --help     print this help

Prints the image checksum (the same with and without balancing, on any number of ranks)
and the total time.
";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        // A failed stdout must not panic (issue #11 item 10); the status still says it.
        let ok = write!(std::io::stdout(), "{USAGE}").is_ok();
        std::process::exit(if ok { 0 } else { 1 });
    }
    // The library's warnings (a damaged checkpoint skipped, ...) on stderr; RUST_LOG
    // overrides the level.
    lazarus::init_logging("warn");
    let balance = !args.iter().any(|a| a == "--no-balance");
    let nums: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ranks = nums.first().copied().unwrap_or(4);
    let frames = nums.get(1).copied().unwrap_or(12);
    let results: Vec<(u64, f64)> = if std::env::var_os("LAZARUS_WORLD_SIZE").is_some() {
        let comm = lazarus::init()?;
        vec![run(comm, frames, balance).map_err(|e| e.to_string())?]
    } else {
        lazarus::local(ranks, |comm| {
            run(comm, frames, balance).map_err(|e| e.to_string())
        })?
        .into_iter()
        .collect::<Result<_, _>>()?
    };
    if let Some((sum, secs)) = results.first() {
        // `?`: a result that cannot be written is an error (main reports it), not a panic.
        writeln!(
            std::io::stdout(),
            "checksum {sum:016x}, {secs:.2} s total (balancing {})",
            if balance { "on" } else { "off" }
        )?;
    }
    Ok(())
}
