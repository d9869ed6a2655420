//! `lazarus bench async`: what the program pays per checkpoint with asynchronous writes
//! (issue #16, docs/ASYNC.md) against synchronous ones, next to the floors measured in the
//! same run: a `memcpy` of the same bytes into warm memory (what a capture cannot beat)
//! and raw write+fsync of the same bytes by every rank at once (what a synchronous
//! checkpoint cannot beat). Also the capture of an incremental checkpoint of a `DirtyVec`
//! with 1 % of its pages changed. Ranks are threads over real loopback TCP (the Job API,
//! one repository), writes are real and fsynced.

use crate::cmd::CmdResult;
use lazarus::net::{loopback_comms, NetConfig};
use lazarus::{Checkpoint, DirtyVec, Job};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags of `lazarus bench async`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ranks (threads over loopback TCP).
    #[arg(long, default_value_t = 2)]
    ranks: u32,
    /// MiB of state per rank.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Timed checkpoints per mode (after one warm-up; the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Percent of pages changed between incremental checkpoints.
    #[arg(long, default_value_t = 1.0)]
    change_percent: f64,
    /// Directory for the scratch repositories [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Checkpoint)]
struct Full {
    data: Vec<u64>,
}

#[derive(Checkpoint)]
struct Tracked {
    data: DirtyVec<u64>,
}

/// SplitMix64: cheap incompressible words.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Per-rank medians: (stall, background flush or zero).
type Times = (Duration, Duration);

/// Runs `rounds + 1` checkpoints on every rank; rank 0's medians. `incremental`: a
/// `DirtyVec` with `change` of its pages written between checkpoints; else a `Vec` fully
/// rewritten (nothing deduplicated).
fn run(
    repo: &Path,
    a: &Args,
    sync: bool,
    incremental: bool,
) -> Result<Times, Box<dyn std::error::Error + Send + Sync>> {
    let words = a.mib << 17;
    let comms = loopback_comms(a.ranks, NetConfig::default())?;
    let rounds = a.rounds;
    let change = a.change_percent / 100.0;
    let handles: Vec<_> = comms
        .into_iter()
        .map(|comm| {
            let repo = repo.to_path_buf();
            std::thread::spawn(move || -> Result<Times, String> {
                let rank = u64::from(comm.rank().0);
                let mut b = Job::builder().repo(&repo).comm(comm).keep(2);
                if sync {
                    b = b.sync_writes();
                }
                let mut job = b.open().map_err(|e| e.to_string())?;
                // Incompressible content (splitmix64), so compression cannot shrink a write
                // below what raw write+fsync of the same bytes does.
                let noise: Vec<u64> = (0..words as u64)
                    .map(|i| splitmix(i ^ (rank << 40)))
                    .collect();
                let mut full = Full {
                    data: noise.clone(),
                };
                let mut tracked = Tracked {
                    data: DirtyVec::from(noise),
                };
                let pages = (words * 8).div_ceil(4096);
                let changed = ((pages as f64 * change).ceil() as usize).max(1);
                let mut stalls = Vec::new();
                let mut flushes = Vec::new();
                for round in 0..=rounds as u64 {
                    if incremental {
                        // A contiguous 1 % of the pages (another region each round), as a
                        // solver updating one block of its domain.
                        let first = (round as usize * changed) % pages;
                        for page in (first..first + changed).map(|p| p % pages) {
                            tracked.data.set(page * 512, splitmix(round ^ page as u64));
                        }
                    } else {
                        // One word per 4 KiB page: every chunk is new, nothing deduplicated.
                        full.data
                            .iter_mut()
                            .step_by(512)
                            .for_each(|w| *w = splitmix(*w));
                    }
                    let t = Instant::now();
                    let r = if incremental {
                        job.checkpoint_now(&tracked)
                    } else {
                        job.checkpoint_now(&full)
                    };
                    r.map_err(|e| e.to_string())?;
                    let stall = t.elapsed();
                    let report = *job
                        .flush()
                        .map_err(|e| e.to_string())?
                        .ok_or("no checkpoint committed")?;
                    if round > 0 {
                        stalls.push(stall);
                        flushes.push(report.flush.unwrap_or_default());
                    }
                }
                Ok((median(stalls), median(flushes)))
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.join().map_err(|_| "rank thread panicked")??);
    }
    Ok(out[0])
}

/// Median of copying `bytes` into an already written buffer (warm pages).
fn memcpy(bytes: usize, reps: usize) -> Duration {
    let src = vec![7u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut v = Vec::new();
    for _ in 0..=reps {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        v.push(t.elapsed());
    }
    median(v)
}

/// Every rank writes and fsyncs `bytes` (incompressible) to its own file at the same
/// time; the time until the slowest is done (the data is made before the clock starts).
fn raw_write(dir: &Path, ranks: u32, bytes: usize) -> std::io::Result<Duration> {
    let data: Vec<Vec<u8>> = (0..ranks)
        .map(|r| {
            (0..bytes.div_ceil(8) as u64)
                .flat_map(|i| splitmix(i ^ (u64::from(r) << 40)).to_le_bytes())
                .take(bytes)
                .collect()
        })
        .collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(r, data)| {
                let path = dir.join(format!("raw-{r}"));
                s.spawn(move || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&path)?;
                    for piece in data.chunks(8 << 20) {
                        f.write_all(piece)?;
                    }
                    f.sync_all()
                })
            })
            .collect();
        hs.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("panic")))
        })
    })?;
    let took = t.elapsed();
    for r in 0..ranks {
        std::fs::remove_file(dir.join(format!("raw-{r}")))?;
    }
    Ok(took)
}

/// Runs `lazarus bench async`.
pub fn main(a: Args) -> CmdResult {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = super::Scratch(base.join(format!("lazarus-bench-async-{}", std::process::id())));
    std::fs::create_dir_all(scratch.path())?;
    let bytes = a.mib << 20;
    outln!(
        "bench async: {} x {} MiB, {} timed checkpoints per mode (load average {})",
        a.ranks,
        a.mib,
        a.rounds,
        super::load_average().unwrap_or_else(|| "?".into())
    )?;
    let copy = memcpy(bytes, a.rounds);
    let raw = raw_write(scratch.path(), a.ranks, bytes)?;
    let (sync_stall, _) = run(&scratch.path().join("sync"), &a, true, false)?;
    let (async_stall, async_flush) = run(&scratch.path().join("async"), &a, false, false)?;
    let (inc_stall, inc_flush) = run(&scratch.path().join("inc"), &a, false, true)?;
    outln!(
        "  memcpy of {} MiB (warm):            {:>9.2} ms",
        a.mib,
        ms(copy)
    )?;
    outln!(
        "  raw write+fsync, {} ranks at once:   {:>9.2} ms",
        a.ranks,
        ms(raw)
    )?;
    outln!(
        "  sync checkpoint stall:             {:>9.2} ms  ({:.2}x raw write+fsync)",
        ms(sync_stall),
        sync_stall.as_secs_f64() / raw.as_secs_f64()
    )?;
    outln!(
        "  async checkpoint stall (capture):  {:>9.2} ms  ({:.2}x memcpy, {:.3}x sync stall)",
        ms(async_stall),
        async_stall.as_secs_f64() / copy.as_secs_f64(),
        async_stall.as_secs_f64() / sync_stall.as_secs_f64()
    )?;
    outln!(
        "  async background flush:            {:>9.2} ms  (raw write+fsync / flush = {:.2})",
        ms(async_flush),
        raw.as_secs_f64() / async_flush.as_secs_f64()
    )?;
    outln!(
        "  incremental {}% (DirtyVec) stall:   {:>9.2} ms  ({:.2}x memcpy), flush {:.2} ms",
        a.change_percent,
        ms(inc_stall),
        inc_stall.as_secs_f64() / copy.as_secs_f64(),
        ms(inc_flush)
    )?;
    Ok(ExitCode::SUCCESS)
}
