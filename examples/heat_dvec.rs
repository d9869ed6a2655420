//! The 2-D heat diffusion of `examples/heat.rs`, with the grid as a `DVec` of rows.
//!
//! `heat_dvec --repo DIR --steps N --size N --every K [--balance-every B]` runs N explicit
//! (Jacobi) steps on a size x size grid with zero boundaries. The grid is a
//! `DVec<[f64; size]>` (one row per element): neighbour rows come from `DVec::halo`, the
//! step runs inside `DVec::work` (timed, so `balance()` sees each rank's speed), and
//! every B steps `balance()` may move rows between ranks. Checkpoints go through the Job
//! API every K steps. Rank 0 prints `checksum=<16 hex digits>` (FNV-1a 64 of the whole
//! grid's little-endian bytes), identical for any number of ranks, any balancing and any
//! restart, and identical to `examples/heat.rs` with the same `--steps` and `--size`.
//!
//! Ranks: the communicator is `lazarus::init()` (world of one, or the ranks of
//! `lazarus run -n N`). `--ranks R` instead runs R ranks as threads of this process
//! (`lazarus::local`), each with its own communicator.
// Writing to a failed stdout/stderr must not panic (issue #11 item 10).
#![deny(clippy::print_stdout, clippy::print_stderr)]
use lazarus::{Checkpoint, Comm, DVec, Job};
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io::Write;

type BoxError = Box<dyn Error + Send + Sync>;

/// The run's parameters, saved with the state so a restart with other arguments is refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Params {
    /// grid edge length
    pub size: u64,
    /// diffusion number (stable for <= 0.25)
    pub alpha: f64,
}

/// One rank's part of the simulation: its block of rows (with the global range, so the
/// checkpoint is redistributable) and the parameters, the same on every rank (declared
/// `replicated`, so a restore on another number of ranks gives each rank a copy).
#[derive(Checkpoint)]
pub struct Heat {
    grid: DVec<f64>,
    #[checkpoint(serde, replicated)]
    params: Params,
}

/// The initial condition of examples/heat.rs: a hot centre plus a small fixed pattern.
fn initial(size: u64, gi: u64, j: u64) -> f64 {
    let centre = (size / 4..3 * size / 4).contains(&gi) && (size / 4..3 * size / 4).contains(&j);
    let hot = if centre { 100.0 } else { 0.0 };
    hot + ((gi * 31 + j * 17) % 11) as f64 * 0.1
}

impl Heat {
    fn new(comm: &Comm, p: Params) -> Result<Heat, BoxError> {
        let n = usize::try_from(p.size)?;
        let mut grid = DVec::<f64>::with_width(comm, p.size, n)?;
        let size = p.size;
        grid.for_each_row_mut(|gi, row| {
            for (j, x) in row.iter_mut().enumerate() {
                *x = initial(size, gi, j as u64);
            }
        });
        Ok(Heat { grid, params: p })
    }

    /// One explicit step with the exact arithmetic (and order) of examples/heat.rs, so
    /// results are bitwise those of the one-process run. Outside the grid the values are 0.
    fn step_once(&mut self, comm: &Comm) -> Result<(), BoxError> {
        let n = self.grid.width();
        let a = self.params.alpha;
        let halo = self.grid.halo(comm, 1)?;
        let zeros = vec![0.0; n];
        let up_halo = if halo.left.len() == n {
            &halo.left[..]
        } else {
            &zeros[..]
        };
        let down_halo = if halo.right.len() == n {
            &halo.right[..]
        } else {
            &zeros[..]
        };
        let mut next = vec![0.0; self.grid.local().len()];
        self.grid.work(|_, data| {
            let rows: Vec<&[f64]> = data.chunks_exact(n).collect();
            for (r, out) in next.chunks_exact_mut(n).enumerate() {
                let up = match r.checked_sub(1).and_then(|i| rows.get(i)) {
                    Some(row) => row,
                    None => up_halo,
                };
                let down = rows.get(r + 1).copied().unwrap_or(down_halo);
                let Some(row) = rows.get(r) else { break };
                for j in 0..n {
                    let left = if j == 0 { 0.0 } else { row[j - 1] };
                    let right = if j + 1 == n { 0.0 } else { row[j + 1] };
                    out[j] = row[j] + a * (up[j] + down[j] + left + right - 4.0 * row[j]);
                }
            }
            data.copy_from_slice(&next);
        });
        Ok(())
    }
}

/// FNV-1a 64 of the grid's little-endian bytes (same as examples/heat.rs).
pub fn checksum(grid: &[f64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in grid.iter().flat_map(|x| x.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Validated command line.
#[derive(Debug, Clone)]
pub struct Args {
    repo: Option<String>,
    steps: u64,
    size: u64,
    every: u64,
    balance_every: u64,
    ranks: u32,
}

/// Parses `--repo DIR --steps N --size N --every K --balance-every B --ranks R`.
pub fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut a = Args {
        repo: None,
        steps: 100,
        size: 64,
        every: 10,
        balance_every: 5,
        ranks: 1,
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
            "--balance-every" => a.balance_every = num()?,
            "--ranks" => {
                a.ranks = u32::try_from(num()?).map_err(|e| format!("--ranks {value:?}: {e}"))?
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (expected --repo, --steps, --size, --every, \
                     --balance-every, --ranks)"
                ))
            }
        }
    }
    if !(3..=16384).contains(&a.size) {
        return Err(format!("--size {} is outside 3..=16384", a.size));
    }
    if a.every == 0 || a.balance_every == 0 || a.ranks == 0 {
        return Err("--every, --balance-every and --ranks must be at least 1".into());
    }
    Ok(a)
}

/// Runs one rank; returns the checksum on rank 0 (None elsewhere).
pub fn run(comm: Comm, args: &Args) -> Result<Option<u64>, BoxError> {
    let mut builder = Job::builder()
        .every_steps(args.every)
        .keep(3)
        .app("program", "heat_dvec")
        .comm(comm);
    if let Some(repo) = &args.repo {
        builder = builder.repo(repo);
    }
    let mut job = builder.open()?;
    let comm = job.comm().clone();
    let params = Params {
        size: args.size,
        alpha: 0.2,
    };
    let fresh = Heat::new(&comm, params.clone())?;
    let mut sim = job.restore_or_init(|| fresh)?;
    if let Some(report) = job.restore_report() {
        if comm.rank().0 == 0 {
            // A failed stderr must not stop the run: the report is informational.
            let _ = writeln!(std::io::stderr(), "heat_dvec: {report}");
        }
    }
    if sim.params != params {
        return Err(format!(
            "the repository holds a run with {:?}, not {params:?}",
            sim.params
        )
        .into());
    }
    while job.step() < args.steps {
        let step = job.checkpoint(&sim)?;
        sim.step_once(&comm)?;
        if (step + 1) % args.balance_every == 0 {
            sim.grid.balance(&comm)?;
        }
    }
    // Recorded as finished: started again, the job restores this state and does no step.
    job.finish(&sim)?;
    Ok(sim
        .grid
        .gather(&comm, lazarus::format::Rank(0))?
        .map(|g| checksum(&g)))
}

/// `--help` text.
const USAGE: &str = "\
heat_dvec: the heat diffusion of `heat` on a DVec of rows, with load balancing

Usage: heat_dvec [--repo DIR] [--steps N] [--size N] [--every K] [--balance-every B]
                 [--ranks R]
       lazarus run -n P --repo DIR -- heat_dvec [OPTIONS]

Options:
  --repo DIR           checkpoint repository (default: $LAZARUS_REPO)
  --steps N            Jacobi steps in total (default 100)
  --size N             grid edge length, 3..=16384 (default 64)
  --every K            checkpoint every K steps (default 10)
  --balance-every B    try to balance the rows every B steps (default 5)
  --ranks R            run R ranks as threads of this process (default 1)
  -h, --help           print this help

Prints checksum=<16 hex digits> last, identical to `heat` with the same --steps/--size.
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
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "heat_dvec: error: {e}");
            std::process::exit(2);
        }
    };
    let result: Result<Option<u64>, BoxError> = if args.ranks > 1 {
        let a = args.clone();
        lazarus::local(args.ranks, move |comm| run(comm, &a))
            .map_err(BoxError::from)
            .and_then(|all| {
                let mut first = None;
                for r in all {
                    first = first.or(r?);
                }
                Ok(first)
            })
    } else {
        lazarus::init()
            .map_err(BoxError::from)
            .and_then(|comm| run(comm, &args))
    };
    // A result that cannot be written (a full disk, a closed pipe) is an error, not a panic.
    let result = result.and_then(|sum| match sum {
        Some(sum) => writeln!(std::io::stdout(), "checksum={sum:016x}")
            .map_err(|e| format!("writing the checksum: {e}").into()),
        None => Ok(()),
    });
    if let Err(e) = result {
        // Nowhere to report a failed stderr: the exit status still says it.
        let _ = writeln!(std::io::stderr(), "heat_dvec: error: {e}");
        std::process::exit(1);
    }
}
