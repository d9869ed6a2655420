//! `lazarus bench async`: what the program pays per checkpoint with asynchronous writes
//! (issue #16, docs/ASYNC.md) against synchronous ones, next to the floors measured in the
//! same run: a `memcpy` of the same bytes into warm memory (what a capture cannot beat)
//! and raw write+fsync of the same bytes by every rank at once (what a synchronous
//! checkpoint cannot beat). Also the capture of an incremental checkpoint of a `DirtyVec`
//! with 1 % of its pages changed, the application's step rate with a checkpoint every few
//! steps against none, and libckpt's forked checkpoint (the child writes the state while
//! the parent goes on: its stall is `fork()` itself, then copy-on-write faults). Ranks are
//! threads over real loopback TCP (the Job API, one repository), writes are real and
//! fsynced.

use crate::cmd::CmdResult;
use lazarus::net::{loopback_comms, NetConfig};
use lazarus::{Checkpoint, DirtyVec, Job};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags of `lazarus bench async`.
#[derive(clap::Args, Clone, Debug)]
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
    /// Application steps per run of the step-rate comparison.
    #[arg(long, default_value_t = 24)]
    steps: u64,
    /// A checkpoint every this many steps in the step-rate comparison.
    #[arg(long, default_value_t = 4)]
    every: u64,
    /// The issue's sizes (#16): run 1 rank x 1024 MiB, then 4 ranks x 256 MiB, in one run
    /// (`--ranks`/`--mib` are ignored). Needs about 4 x 1 GiB of memory and a few GiB of
    /// disk bandwidth per mode.
    #[arg(long)]
    issue_sizes: bool,
    /// Only the step-rate comparison (no memcpy, raw write, stall or flush rows).
    #[arg(long)]
    step_rate_only: bool,
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

/// Rank 0's medians of the timed checkpoints (stall, background flush or zero), and the
/// process CPU time (every rank and flush thread) per timed checkpoint.
#[derive(Clone, Copy)]
struct Times {
    stall: Duration,
    flush: Duration,
    cpu: Duration,
}

/// How a [`run`] checkpoints.
#[derive(Clone, Copy)]
struct RunCfg {
    sync: bool,
    /// A `DirtyVec` with `--change-percent` of its pages written between checkpoints;
    /// else a `Vec` fully rewritten (nothing deduplicated).
    incremental: bool,
    keep: usize,
    /// `JobBuilder::recycle_chunk_files`.
    recycle: bool,
    /// Untimed checkpoints before the `--rounds` timed ones.
    untimed: u64,
}

impl RunCfg {
    fn full(sync: bool) -> RunCfg {
        RunCfg {
            sync,
            incremental: false,
            keep: 2,
            recycle: true,
            untimed: 1,
        }
    }
}

/// Runs `untimed + rounds` checkpoints on every rank; rank 0's medians of the timed ones.
fn run(
    repo: &Path,
    a: &Args,
    cfg: RunCfg,
) -> Result<Times, Box<dyn std::error::Error + Send + Sync>> {
    let RunCfg {
        sync, incremental, ..
    } = cfg;
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
                let mut b = Job::builder()
                    .repo(&repo)
                    .comm(comm)
                    .keep(cfg.keep)
                    .recycle_chunk_files(cfg.recycle);
                if sync {
                    b = b.sync_writes();
                }
                let mut job = b.open().map_err(|e| e.to_string())?;
                // A fresh repository: the decision is a fresh start, nothing is read.
                job.restore_or_init(|| Full { data: Vec::new() })
                    .map_err(|e| e.to_string())?;
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
                let mut cpu0 = Duration::ZERO;
                for round in 0..cfg.untimed + rounds as u64 {
                    if round == cfg.untimed {
                        cpu0 = super::process_cpu();
                    }
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
                    if round >= cfg.untimed {
                        stalls.push(stall);
                        flushes.push(report.flush.unwrap_or_default());
                    }
                }
                let cpu = super::process_cpu().saturating_sub(cpu0) / rounds.max(1) as u32;
                Ok(Times {
                    stall: median(stalls),
                    flush: median(flushes),
                    cpu,
                })
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.join().map_err(|_| "rank thread panicked")??);
    }
    Ok(out[0])
}

/// How the step-rate comparison checkpoints.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Never,
    Async,
    Sync,
}

/// One application step: every word of the state rewritten (a memory-bound sweep, as a
/// stencil or an optimizer step).
fn step(data: &mut [u64], step: u64) {
    data.iter_mut()
        .for_each(|w| *w = w.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(step));
}

/// Rank 0's time for `a.steps` steps with a checkpoint every `a.every` steps (or none),
/// the final flush not included (it is reported by the flush rows), and the CPU time the
/// whole process spent (every rank and flush thread, user and system; the final flush
/// included): what checkpointing costs in CPU, which the step rate alone hides when the
/// cores are not all busy.
fn step_rate(
    repo: &Path,
    a: &Args,
    mode: Mode,
) -> Result<StepRun, Box<dyn std::error::Error + Send + Sync>> {
    let cpu0 = super::process_cpu();
    let words = a.mib << 17;
    let comms = loopback_comms(a.ranks, NetConfig::default())?;
    let (steps, every) = (a.steps, a.every.max(1));
    let handles: Vec<_> = comms
        .into_iter()
        .map(|comm| {
            let repo = repo.to_path_buf();
            std::thread::spawn(move || -> Result<(Duration, u64), String> {
                let rank = u64::from(comm.rank().0);
                let mut b = Job::builder().repo(&repo).comm(comm).keep(2);
                b = match mode {
                    Mode::Never => b.never_checkpoint(),
                    Mode::Async => b.every_steps(every),
                    Mode::Sync => b.every_steps(every).sync_writes(),
                };
                let mut job = b.open().map_err(|e| e.to_string())?;
                let mut s = Full {
                    data: (0..words as u64)
                        .map(|i| splitmix(i ^ (rank << 40)))
                        .collect(),
                };
                job.restore_or_init(|| Full { data: Vec::new() })
                    .map_err(|e| e.to_string())?;
                // The same loop as a program's: checkpoint at the top, then the step.
                let t = Instant::now();
                while job.step() < steps {
                    let i = job.checkpoint(&s).map_err(|e| e.to_string())?;
                    step(&mut s.data, i);
                }
                let took = t.elapsed();
                // Ids count up from 1 in a fresh repository: the last one is how many
                // checkpoints the run took.
                let taken = job
                    .flush()
                    .map_err(|e| e.to_string())?
                    .map_or(0, |r| r.checkpoint.0);
                std::hint::black_box(&s.data);
                Ok((took, taken))
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.join().map_err(|_| "rank thread panicked")??);
    }
    let (wall, checkpoints) = out[0];
    Ok(StepRun {
        wall,
        cpu: super::process_cpu().saturating_sub(cpu0),
        checkpoints,
    })
}

/// One step-rate run: rank 0's wall time for the steps, the process CPU time, and how
/// many checkpoints were taken.
struct StepRun {
    wall: Duration,
    cpu: Duration,
    checkpoints: u64,
}

/// libckpt's forked checkpoint, measured on one process holding `bytes` of state (one
/// rank's): the parent's stall is `fork()` (copying the page tables, and marking every
/// page copy-on-write); the child writes the state to a file and fsyncs it while the
/// parent goes on; the parent's next step then takes a copy-on-write fault on every page
/// it writes. Returns (fork, the step without a child, the same step right after the
/// fork, the child's write+fsync).
///
/// Safe to measure only where no other thread can hold a lock at the fork: it is called
/// before this command starts any thread, and the child only calls `write`, `fsync` and
/// `_exit` on a descriptor and memory prepared before the fork (no allocation).
#[cfg(unix)]
fn forked(dir: &Path, bytes: usize) -> std::io::Result<(Duration, Duration, Duration, Duration)> {
    use std::os::fd::AsRawFd;
    let mut data: Vec<u64> = (0..bytes as u64 / 8).map(splitmix).collect();
    // One word per 4 KiB page, the least a step that touches every page writes.
    let touch = |d: &mut [u64], k: u64| d.iter_mut().step_by(512).for_each(|w| *w ^= k);
    touch(&mut data, 1);
    let t = Instant::now();
    touch(&mut data, 2);
    let plain = t.elapsed();
    let path = dir.join("forked");
    let file = std::fs::File::create(&path)?;
    let fd = file.as_raw_fd();
    let (ptr, len) = (data.as_ptr().cast::<u8>(), data.len() * 8);
    let t = Instant::now();
    // SAFETY: no other thread exists (see above); the child touches only `fd` and the
    // memory `ptr..ptr+len`, which it inherited, and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut off = 0usize;
        let mut status = 0;
        while off < len {
            // SAFETY: `ptr + off .. ptr + len` is inside the child's copy of `data`.
            let n = unsafe { libc::write(fd, ptr.add(off).cast(), len - off) };
            if n <= 0 {
                status = 1;
                break;
            }
            off += n as usize;
        }
        // SAFETY: plain system calls on an open descriptor; `_exit` skips atexit handlers
        // and destructors that belong to the parent.
        unsafe {
            if status == 0 && libc::fsync(fd) != 0 {
                status = 1;
            }
            libc::_exit(status)
        }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fork = t.elapsed();
    let t = Instant::now();
    touch(&mut data, 3);
    let after = t.elapsed();
    let mut status = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    let child = t.elapsed() + fork;
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(std::io::Error::other("the forked writer failed"));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    std::hint::black_box(&data);
    Ok((fork, plain, after, child))
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
    let sizes: Vec<(u32, usize)> = if a.issue_sizes {
        vec![(1, 1024), (4, 256)]
    } else {
        vec![(a.ranks, a.mib)]
    };
    // The forked captures first, while this process has no other thread (see `forked`).
    #[cfg(unix)]
    let forks: Vec<_> = if a.step_rate_only {
        Vec::new()
    } else {
        sizes
            .iter()
            .map(|&(_, mib)| forked(scratch.path(), mib << 20))
            .collect::<Result<_, _>>()?
    };
    for (i, &(ranks, mib)) in sizes.iter().enumerate() {
        let a = Args {
            ranks,
            mib,
            ..a.clone()
        };
        let dir = scratch.path().join(format!("{ranks}x{mib}"));
        std::fs::create_dir_all(&dir)?;
        report(&dir, &a)?;
        #[cfg(unix)]
        if let Some(&(fork, plain, after, child)) = forks.get(i) {
            let copy = memcpy(mib << 20, a.rounds);
            outln!(
                "  fork() capture of one {mib} MiB process: stall {:.2} ms ({:.2}x memcpy); \
                 next step {:.2} ms vs {:.2} ms without a child (copy-on-write: +{:.2} ms); \
                 child write+fsync {:.2} ms",
                ms(fork),
                fork.as_secs_f64() / copy.as_secs_f64(),
                ms(after),
                ms(plain),
                ms(after.saturating_sub(plain)),
                ms(child)
            )?;
        }
        #[cfg(not(unix))]
        let _ = i;
    }
    Ok(ExitCode::SUCCESS)
}

/// One size: every row but the fork one.
fn report(scratch: &Path, a: &Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bytes = a.mib << 20;
    outln!(
        "bench async: {} x {} MiB, {} timed checkpoints per mode (load average {})",
        a.ranks,
        a.mib,
        a.rounds,
        super::load_average().unwrap_or_else(|| "?".into())
    )?;
    if !a.step_rate_only {
        let copy = memcpy(bytes, a.rounds);
        let raw = raw_write(scratch, a.ranks, bytes)?;
        let sync_stall = run(&scratch.join("sync"), a, RunCfg::full(true))?.stall;
        let Times {
            stall: async_stall,
            flush: async_flush,
            ..
        } = run(&scratch.join("async"), a, RunCfg::full(false))?;
        let inc = RunCfg {
            incremental: true,
            ..RunCfg::full(false)
        };
        let Times {
            stall: inc_stall,
            flush: inc_flush,
            ..
        } = run(&scratch.join("inc"), a, inc)?;
        // Steady state of a job that collects after every commit: with `keep` 1 every
        // checkpoint from the third on follows a collection that retired the chunks of
        // the one before the last, so it writes into their files (recycled) or into new
        // ones (freed).
        let steady = |recycle: bool, name: &str| {
            let cfg = RunCfg {
                keep: 1,
                recycle,
                untimed: 2,
                ..RunCfg::full(true)
            };
            run(&scratch.join(name), a, cfg)
        };
        let freed = steady(false, "steady-freed")?;
        let recycled = steady(true, "steady-recycled")?;
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
            "  sync checkpoint, steady state (keep 1): new chunk files {:.2} ms, {:.3} CPU-s; \
             recycled files {:.2} ms ({:.2}x), {:.3} CPU-s ({:.2}x)",
            ms(freed.stall),
            freed.cpu.as_secs_f64(),
            ms(recycled.stall),
            recycled.stall.as_secs_f64() / freed.stall.as_secs_f64().max(1e-9),
            recycled.cpu.as_secs_f64(),
            recycled.cpu.as_secs_f64() / freed.cpu.as_secs_f64().max(1e-9)
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
    }
    let none_run = step_rate(&scratch.join("steps-none"), a, Mode::Never)?;
    let async_run = step_rate(&scratch.join("steps-async"), a, Mode::Async)?;
    let sync_run = step_rate(&scratch.join("steps-sync"), a, Mode::Sync)?;
    let (none, with_async, with_sync) = (none_run.wall, async_run.wall, sync_run.wall);
    let rate = |d: Duration| a.steps as f64 / d.as_secs_f64().max(1e-9);
    outln!(
        "  step rate, {} steps, checkpoint every {}: none {:.2}/s; async {:.2}/s ({:.2}x); sync {:.2}/s ({:.2}x)",
        a.steps,
        a.every,
        rate(none),
        rate(with_async),
        rate(with_async) / rate(none),
        rate(with_sync),
        rate(with_sync) / rate(none)
    )?;
    let extra = |r: &StepRun| {
        (r.cpu.as_secs_f64() - none_run.cpu.as_secs_f64()) / r.checkpoints.max(1) as f64
    };
    outln!(
        "  process CPU of those runs (every thread, final flush included): none {:.2} s; \
         async {:.2} s ({:+.3} s per checkpoint, {} checkpoints); sync {:.2} s ({:+.3} s \
         per checkpoint)",
        none_run.cpu.as_secs_f64(),
        async_run.cpu.as_secs_f64(),
        extra(&async_run),
        async_run.checkpoints,
        sync_run.cpu.as_secs_f64(),
        extra(&sync_run)
    )?;
    Ok(())
}
