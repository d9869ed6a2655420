//! Deterministic 2-D heat diffusion that survives `kill -9`.
//!
//! `heat --repo DIR --steps N --size N --every K` runs N explicit (Jacobi) steps on a
//! size x size grid with zero boundaries, checkpointing every K steps, and prints
//! `checksum=<16 hex digits>` (FNV-1a 64 of the final grid's little-endian bytes) last.
//! Killed at any moment and started again with the same arguments, it resumes from the
//! newest intact checkpoint and prints the same checksum as an uninterrupted run.
//!
//! Row-block decomposition: under `lazarus run -n P` each rank holds a block of rows plus
//! one halo row above and below, refreshed from its neighbours before every step. The
//! checksum is chained over the ranks in order, so any P prints the 1-rank checksum.
// Writing to a failed stdout/stderr must not panic (issue #11 item 10).
#![deny(clippy::print_stdout, clippy::print_stderr)]
use lazarus::format::Rank;
use lazarus::{Checkpoint, Comm, Job, StateError};
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io::Write;

/// The run's parameters, saved with the state so a restart with other arguments is refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Params {
    /// grid edge length
    pub size: u64,
    /// diffusion number (stable for <= 0.25)
    pub alpha: f64,
    /// first global row held here, and number of rows held
    pub row_start: u64,
    /// rows held here
    pub rows: u64,
}

/// One rank's part of the simulation.
#[derive(Checkpoint)]
#[checkpoint(after_restore = "Heat::rebuild")]
pub struct Heat {
    #[checkpoint(replicated)] // every rank advances it alike
    step: u64,
    grid: Vec<f64>, // rows * size owned cells, row-major (bulk object): per-rank state
    #[checkpoint(serde, replicated)]
    params: Params,
    #[checkpoint(skip)] // refreshed before every step (halo exchange with neighbours)
    halo_up: Vec<f64>,
    #[checkpoint(skip)]
    halo_down: Vec<f64>,
    #[checkpoint(skip)] // scratch buffer
    next: Vec<f64>,
}

impl Heat {
    fn new(p: Params) -> Heat {
        let n = p.size as usize;
        let mut grid = Vec::with_capacity(p.rows as usize * n);
        for gi in p.row_start..p.row_start + p.rows {
            for j in 0..p.size {
                let centre = (p.size / 4..3 * p.size / 4).contains(&gi)
                    && (p.size / 4..3 * p.size / 4).contains(&j);
                let hot = if centre { 100.0 } else { 0.0 };
                grid.push(hot + ((gi * 31 + j * 17) % 11) as f64 * 0.1);
            }
        }
        let next = vec![0.0; grid.len()];
        Heat {
            step: 0,
            grid,
            params: p,
            halo_up: vec![0.0; n],
            halo_down: vec![0.0; n],
            next,
        }
    }

    /// Rebuilds the skipped buffers and checks the restored grid fits the parameters.
    fn rebuild(&mut self) -> Result<(), StateError> {
        let n = self.params.size as usize;
        let want = (self.params.rows as usize).checked_mul(n);
        if want != Some(self.grid.len()) {
            return Err(StateError::custom(
                "grid",
                format!("{} cells do not fit {:?}", self.grid.len(), self.params),
            ));
        }
        self.halo_up = vec![0.0; n];
        self.halo_down = vec![0.0; n];
        self.next = vec![0.0; self.grid.len()];
        Ok(())
    }

    /// Refreshes the halo rows from the neighbouring ranks (the outer ones stay zero: the
    /// fixed boundary). Sends first, then receives: sends are buffered, so no deadlock.
    fn exchange_halos(&mut self, comm: &Comm) -> Result<(), lazarus::net::NetError> {
        let (r, p) = (comm.rank().0, comm.size());
        let n = self.params.size as usize;
        let (first, last) = (&self.grid[..n], &self.grid[self.grid.len() - n..]);
        if r > 0 {
            comm.send_slice(Rank(r - 1), TAG_UP, first)?;
        }
        if r + 1 < p {
            comm.send_slice(Rank(r + 1), TAG_DOWN, last)?;
        }
        if r > 0 {
            comm.recv_into(Rank(r - 1), TAG_DOWN, &mut self.halo_up)?;
        }
        if r + 1 < p {
            comm.recv_into(Rank(r + 1), TAG_UP, &mut self.halo_down)?;
        }
        Ok(())
    }

    /// One explicit step, in a fixed order (rows, then columns), so results are bitwise
    /// reproducible. With one rank the halos stay zero: the fixed boundary.
    fn step_once(&mut self) {
        let n = self.params.size as usize;
        let a = self.params.alpha;
        let rows: Vec<&[f64]> = self.grid.chunks_exact(n).collect();
        for (r, out) in self.next.chunks_exact_mut(n).enumerate() {
            let up = if r == 0 {
                &self.halo_up[..]
            } else {
                rows[r - 1]
            };
            let down = rows.get(r + 1).copied().unwrap_or(&self.halo_down[..]);
            let row = rows[r];
            for j in 0..n {
                let left = if j == 0 { 0.0 } else { row[j - 1] };
                let right = if j + 1 == n { 0.0 } else { row[j + 1] };
                out[j] = row[j] + a * (up[j] + down[j] + left + right - 4.0 * row[j]);
            }
        }
        std::mem::swap(&mut self.grid, &mut self.next);
        self.step += 1;
    }
}

const TAG_UP: u32 = 1;
const TAG_DOWN: u32 = 2;
const TAG_SUM: u32 = 3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of the grid's little-endian bytes: stable across hosts and Rust versions.
pub fn checksum(grid: &[f64]) -> u64 {
    fnv_continue(FNV_OFFSET, grid)
}

/// Rank `r` continues the hash of the rows of ranks `0..r`: the result equals `checksum`
/// of the whole grid in row-major order; the last rank's result is broadcast to all.
fn distributed_checksum(comm: &Comm, grid: &[f64]) -> Result<u64, Box<dyn Error>> {
    let (r, p) = (comm.rank().0, comm.size());
    let h = if r == 0 {
        FNV_OFFSET
    } else {
        comm.recv::<u64>(Rank(r - 1), TAG_SUM)?
    };
    let mut h = fnv_continue(h, grid);
    if r + 1 < p {
        comm.send(Rank(r + 1), TAG_SUM, &h)?;
    }
    comm.broadcast(Rank(p - 1), &mut h)?;
    Ok(h)
}

fn fnv_continue(mut h: u64, grid: &[f64]) -> u64 {
    for b in grid.iter().flat_map(|x| x.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The rows `[start, start + rows)` that rank `r` of `p` holds: blocks as equal as possible.
fn block(size: u64, r: u64, p: u64) -> (u64, u64) {
    let (base, extra) = (size / p, size % p);
    (r * base + r.min(extra), base + u64::from(r < extra))
}

/// Validated command line.
#[derive(Debug)]
pub struct Args {
    repo: Option<String>,
    steps: u64,
    size: u64,
    every: u64,
}

/// Parses `--repo DIR --steps N --size N --every K` (repo defaults to `LAZARUS_REPO`).
pub fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut a = Args {
        repo: None,
        steps: 100,
        size: 64,
        every: 10,
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value:?}: {e}"))
        };
        match flag.as_str() {
            "--repo" => a.repo = Some(value.clone()),
            "--steps" => a.steps = num()?,
            "--size" => a.size = num()?,
            "--every" => a.every = num()?,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (expected --repo, --steps, --size, --every)"
                ))
            }
        }
    }
    if !(3..=16384).contains(&a.size) {
        return Err(format!("--size {} is outside 3..=16384", a.size));
    }
    if a.every == 0 {
        return Err("--every must be at least 1".into());
    }
    Ok(a)
}

/// Runs the simulation on this rank (`lazarus::init()`: a world of one outside a launcher);
/// returns the final checksum (the same on every rank). Notes go to stderr.
pub fn run(args: &Args) -> Result<u64, Box<dyn Error>> {
    let comm = lazarus::init()?;
    let p = u64::from(comm.size());
    if p > args.size {
        return Err(format!("{p} ranks need --size >= {p}").into());
    }
    let (row_start, rows) = block(args.size, u64::from(comm.rank().0), p);
    let mut builder = Job::builder()
        .comm(comm.clone())
        .every_steps(args.every)
        .keep(3)
        .app("program", "heat");
    if let Some(repo) = &args.repo {
        builder = builder.repo(repo);
    }
    let mut job = builder.open()?;
    let params = Params {
        size: args.size,
        alpha: 0.2,
        row_start,
        rows,
    };
    let mut sim = job.restore_or_init(|| Heat::new(params.clone()))?;
    if let (Some(report), 0) = (job.restore_report(), comm.rank().0) {
        // A failed stderr must not stop the run: the report is informational.
        let _ = writeln!(std::io::stderr(), "heat: {report}");
    }
    if sim.params != params {
        return Err(format!(
            "the repository holds a run with {:?}, not {params:?}",
            sim.params
        )
        .into());
    }
    while job.step() < args.steps {
        job.checkpoint(&sim)?;
        sim.exchange_halos(&comm)?;
        sim.step_once();
    }
    // Recorded as finished: started again, the job restores this state and does no step.
    job.finish(&sim)?;
    distributed_checksum(&comm, &sim.grid)
}

fn rank() -> Rank {
    let r = std::env::var("LAZARUS_RANK")
        .ok()
        .and_then(|r| r.parse().ok());
    Rank(r.unwrap_or(0))
}

/// Writes `checksum=<16 hex digits>` on stdout; a result that cannot be written (a full
/// disk, a closed pipe) is an error, never a panic and never a silent exit 0.
pub fn print_checksum(sum: u64) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "checksum={sum:016x}")
        .and_then(|()| out.flush())
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing the checksum: {e}")))
}

/// `--help` text.
const USAGE: &str = "\
heat: deterministic 2-D heat diffusion that survives kill -9

Usage: heat [--repo DIR] [--steps N] [--size N] [--every K]
       lazarus run -n P --repo DIR -- heat [OPTIONS]

Options:
  --repo DIR   checkpoint repository (default: $LAZARUS_REPO)
  --steps N    Jacobi steps in total (default 100)
  --size N     grid edge length, 3..=16384 (default 64)
  --every K    checkpoint every K steps (default 10)
  -h, --help   print this help

Prints checksum=<16 hex digits> last: the same for any number of ranks, killed or not.
";

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        // A failed stdout must not panic (issue #11 item 10); the status still says it.
        let ok = write!(std::io::stdout(), "{USAGE}").is_ok();
        std::process::exit(if ok { 0 } else { 1 });
    }
    // The library's warnings (a damaged checkpoint skipped, ...) on stderr; RUST_LOG
    // overrides the level.
    lazarus::init_logging("warn");
    let result = parse_args(&raw)
        .map_err(Into::into)
        .and_then(|a| run(&a))
        // Rank 0 speaks for the job.
        .and_then(|sum| match Rank(0) == rank() {
            true => print_checksum(sum).map_err(Into::into),
            false => Ok(()),
        });
    if let Err(e) = result {
        // Nowhere to report a failed stderr: the exit status still says it.
        let _ = writeln!(std::io::stderr(), "heat: error: {e}");
        std::process::exit(1);
    }
}
