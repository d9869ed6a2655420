//! Heat diffusion that writes real files and survives `kill -9` with them (issue #17).
//!
//! `heat_files --files DIR [--repo DIR] --steps N --cells N --every K --snap-every S`
//! runs a 1-D heat rod split over the ranks (halo exchange with the neighbours) and, on
//! each rank, through the managed-files API (`Job::files`):
//! - appends one line per step to `results.log` (an output file: published to
//!   `DIR/output/rank-<r>/results.log` only once committed, so a watcher never sees a
//!   line a restart rewrites);
//! - rewrites, every step, one block of the binary field file `field.bin` in place
//!   (random-access writes of f64 little-endian values);
//! - every S steps writes a snapshot of the rod to `snaps/tmp`, renames it to
//!   `snaps/field-<step>.bin` and removes the snapshot before the previous one (`snaps`
//!   is output too).
//!
//! Killed at any moment and restarted (e.g. by `lazarus run -n 4`), every file ends
//! byte-identical to an uninterrupted run's, and rank 0 prints the same
//! `checksum=<16 hex digits>` last.
// Writing to a failed stdout/stderr must not panic (issue #11 item 10).
#![deny(clippy::print_stdout, clippy::print_stderr)]
use lazarus::format::Rank;
use lazarus::{Checkpoint, Comm, Job};
use std::error::Error;
use std::io::Write;

/// One rank's part of the rod.
#[derive(Checkpoint)]
pub struct Rod {
    cells: Vec<f64>,
    #[checkpoint(skip)]
    next: Vec<f64>,
}

const TAG_LEFT: u32 = 11;
const TAG_RIGHT: u32 = 12;
const BLOCK: usize = 64;

impl Rod {
    fn new(first: u64, n: u64) -> Rod {
        let cells = (first..first + n)
            .map(|i| if i % 97 < 20 { 100.0 } else { (i % 13) as f64 })
            .collect::<Vec<_>>();
        Rod {
            next: vec![0.0; cells.len()],
            cells,
        }
    }

    /// One explicit step with the neighbours' edge cells (zero at the rod's ends).
    fn step(&mut self, comm: &Comm) -> Result<(), Box<dyn Error>> {
        let (r, p) = (comm.rank().0, comm.size());
        let n = self.cells.len();
        if r > 0 {
            comm.send(Rank(r - 1), TAG_LEFT, &self.cells[0])?;
        }
        if r + 1 < p {
            comm.send(Rank(r + 1), TAG_RIGHT, &self.cells[n - 1])?;
        }
        let left = if r > 0 {
            comm.recv::<f64>(Rank(r - 1), TAG_RIGHT)?
        } else {
            0.0
        };
        let right = if r + 1 < p {
            comm.recv::<f64>(Rank(r + 1), TAG_LEFT)?
        } else {
            0.0
        };
        self.next.resize(n, 0.0);
        for i in 0..n {
            let l = if i == 0 { left } else { self.cells[i - 1] };
            let rr = if i + 1 == n { right } else { self.cells[i + 1] };
            self.next[i] = self.cells[i] + 0.25 * (l + rr - 2.0 * self.cells[i]);
        }
        std::mem::swap(&mut self.cells, &mut self.next);
        Ok(())
    }

    fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        self.cells[range]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect()
    }
}

/// Validated command line.
#[derive(Debug)]
pub struct Args {
    repo: Option<String>,
    files: String,
    steps: u64,
    cells: u64,
    every: u64,
    snap_every: u64,
    sleep_ms: u64,
}

/// Parses the flags of the module docs (`--sleep-ms` slows each step down for tests).
pub fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut a = Args {
        repo: None,
        files: String::new(),
        steps: 60,
        cells: 4096,
        every: 10,
        snap_every: 15,
        sleep_ms: 0,
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
            "--files" => a.files = value.clone(),
            "--steps" => a.steps = num()?,
            "--cells" => a.cells = num()?,
            "--every" => a.every = num()?,
            "--snap-every" => a.snap_every = num()?,
            "--sleep-ms" => a.sleep_ms = num()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.files.is_empty() {
        return Err("--files DIR is required".into());
    }
    if a.every == 0 || a.snap_every == 0 {
        return Err("--every and --snap-every must be at least 1".into());
    }
    Ok(a)
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Runs this rank; returns the job's checksum (the same on every rank).
pub fn run(args: &Args) -> Result<u64, Box<dyn Error>> {
    let comm = lazarus::init()?;
    let (r, p) = (u64::from(comm.rank().0), u64::from(comm.size()));
    if args.cells < p * BLOCK as u64 {
        return Err(format!("--cells must be at least {}", p * BLOCK as u64).into());
    }
    let n = args.cells / p;
    let mut builder = Job::builder()
        .comm(comm.clone())
        .every_steps(args.every)
        .keep(3)
        .files(&args.files)
        .app("program", "heat_files");
    if let Some(repo) = &args.repo {
        builder = builder.repo(repo);
    }
    let mut job = builder.open()?;
    let mut rod = job.restore_or_init(|| Rod::new(r * n, n))?;
    let files = job.files()?.clone();
    if job.step() == 0 {
        // The files of step 0 (a fresh start found the managed tree empty).
        files.create_dir("snaps")?;
        files.mark_output("results.log")?;
        files.mark_output("snaps")?;
        files.write("field.bin", rod.bytes(0..rod.cells.len()))?;
    }
    let mut log = files.append("results.log")?;
    let field = files.options().read(true).write(true).open("field.bin")?;
    let blocks = rod.cells.len() / BLOCK;
    while job.step() < args.steps {
        let s = job.checkpoint(&rod)?;
        rod.step(&comm)?;
        let mean = rod.cells.iter().sum::<f64>() / rod.cells.len() as f64;
        let max = rod.cells.iter().copied().fold(f64::MIN, f64::max);
        writeln!(log, "step {s} rank {r} mean {mean:.12} max {max:.12}")?;
        let k = (s as usize * 7 + r as usize) % blocks;
        field.write_all_at(
            &rod.bytes(k * BLOCK..(k + 1) * BLOCK),
            (k * BLOCK * 8) as u64,
        )?;
        if (s + 1) % args.snap_every == 0 {
            files.write("snaps/tmp", rod.bytes(0..rod.cells.len()))?;
            files.rename("snaps/tmp", format!("snaps/field-{}.bin", s + 1))?;
            if let Some(before) = (s + 1).checked_sub(2 * args.snap_every).filter(|b| *b > 0) {
                files.remove_file(format!("snaps/field-{before}.bin"))?;
            }
        }
        if args.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(args.sleep_ms));
        }
    }
    // The final checkpoint records the job as finished (a rerun does no step again) and
    // publishes the output written since the last one.
    job.finish(&rod)?;
    let mine = fnv(0xcbf2_9ce4_8422_2325, &files.read("field.bin")?);
    let all = comm.allgather(&mine)?;
    Ok(all
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, x| fnv(h, &x.to_le_bytes())))
}

/// `--help` text.
const USAGE: &str = "\
heat_files: heat diffusion that writes real files and survives kill -9 with them

Usage: heat_files --files DIR [--repo DIR] [--steps N] [--cells N] [--every K]
                  [--snap-every S] [--sleep-ms MS]
       lazarus run -n P --repo DIR -- heat_files --files DIR [OPTIONS]

Options:
  --files DIR        managed files directory (required; rank r works in DIR/rank-<r>)
  --repo DIR         checkpoint repository (default: $LAZARUS_REPO)
  --steps N          steps in total (default 60)
  --cells N          cells of the rod (default 4096)
  --every K          checkpoint every K steps (default 10)
  --snap-every S     write a snapshot file every S steps (default 15)
  --sleep-ms MS      sleep after each step, to leave time for a kill (default 0)
  -h, --help         print this help

Every file ends byte-identical to an uninterrupted run's; prints checksum=<hex> last.
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
    let result = parse_args(&raw).map_err(Into::into).and_then(|a| run(&a));
    let rank = std::env::var("LAZARUS_RANK")
        .ok()
        .and_then(|r| r.parse::<u32>().ok());
    // A result that cannot be written (a full disk, a closed pipe) is an error, not a panic.
    let result = result.and_then(|sum| {
        if rank.unwrap_or(0) != 0 {
            return Ok(());
        }
        use std::io::Write;
        writeln!(std::io::stdout(), "checksum={sum:016x}")
            .map_err(|e| format!("writing the checksum: {e}").into())
    });
    if let Err(e) = result {
        // Nowhere to report a failed stderr: the exit status still says it.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "heat_files: error: {e}");
        std::process::exit(1);
    }
}
