//! `lazarus bench round`: latency of one aligned checkpoint round (two-phase commit over
//! real TCP ranks, real fsync) with empty state for growing worlds, and the application
//! stall per checkpoint with a large part per rank. Each is printed next to the floor
//! measured in the same run: a barrier over the same ranks plus the one durable write the
//! protocol cannot avoid (COMMIT, which carries the small rank manifests inline since
//! format 1.1), and raw write+fsync of the same bytes.

use crate::cmd::CmdResult;
use lazarus::coord::{AlignedRuntime, RankStore, Timeouts};
use lazarus::format::{DType, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus::net::{loopback_comms, Comm, NetConfig};
use lazarus::store::{CommitMeta, RepoOptions, Repository};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags of `lazarus bench round`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// World sizes for the empty-state latency table (comma-separated).
    #[arg(long, default_value = "2,4,8,16", value_delimiter = ',')]
    ranks: Vec<u32>,
    /// Timed rounds per world size (the median is reported).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// MiB per rank for the stall measurement (0 skips it).
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Ranks for the stall measurement.
    #[arg(long, default_value_t = 2)]
    stall_ranks: u32,
    /// Directory for the scratch repositories [default: the system temp dir].
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `rounds + 2` rounds (two warm-up) on `n` loopback ranks, each rank writing `bytes`
/// bytes (fresh content every round, so nothing is deduplicated); returns rank 0's round
/// times and the median barrier time over the same ranks.
fn measure(
    root: &Path,
    n: u32,
    rounds: usize,
    bytes: usize,
) -> Result<(Vec<Duration>, Duration), Box<dyn std::error::Error + Send + Sync>> {
    let repo_path = root.join(format!("round-{n}-{bytes}"));
    let comms = loopback_comms(n, NetConfig::default())?;
    let repo = Repository::open(&repo_path, RepoOptions::default())?;
    let mut repo = Some(repo);
    let handles: Vec<_> = comms
        .into_iter()
        .map(|comm: Comm| {
            let store = match (comm.rank() == Rank(0), repo.take()) {
                (true, Some(r)) => RankStore::Coordinator(r),
                (_, back) => {
                    repo = back;
                    RankStore::Participant {
                        path: repo_path.clone(),
                        options: RepoOptions::default(),
                    }
                }
            };
            std::thread::spawn(move || -> Result<_, String> {
                let me = comm.rank().0 as u64;
                let mut rt = AlignedRuntime::new(comm.clone(), store, Timeouts::default())
                    .map_err(|e| e.to_string())?;
                rt.set_output_markers(false);
                let mut data = vec![0u8; bytes];
                let mut times = Vec::with_capacity(rounds);
                let mut barriers = Vec::with_capacity(rounds);
                for i in 0..rounds + 2 {
                    // Fresh bytes every round: the stall includes writing all of them.
                    for (k, chunk) in data.chunks_mut(8).enumerate() {
                        let v = (k as u64) ^ (i as u64) << 40 ^ me << 56;
                        for (d, s) in chunk.iter_mut().zip(v.to_le_bytes()) {
                            *d = s;
                        }
                    }
                    let objects = [ObjectSpec {
                        info: ObjectInfo {
                            name: "data".into(),
                            type_name: "Vec<u8>".into(),
                            kind: ObjectKind::Bulk {
                                dtype: DType::U8,
                                len: bytes as u64,
                                global: None,
                            },
                            sharing: None,
                            layout: None,
                        },
                        data: std::borrow::Cow::Borrowed(&data[..]),
                        hint: None,
                    }];
                    let objects: &[ObjectSpec<'_>] = if bytes == 0 { &[] } else { &objects };
                    let meta = CommitMeta {
                        step: i as u64,
                        app: Default::default(),
                    };
                    comm.barrier().map_err(|e| e.to_string())?;
                    let t0 = Instant::now();
                    comm.barrier().map_err(|e| e.to_string())?;
                    let tb = t0.elapsed();
                    let t0 = Instant::now();
                    rt.round(objects, &meta).map_err(|e| e.to_string())?;
                    let t = t0.elapsed();
                    if let Some(repo) = rt.repository_mut() {
                        repo.retain(2).map_err(|e| e.to_string())?;
                    }
                    if i >= 2 {
                        times.push(t);
                        barriers.push(tb);
                    }
                }
                Ok((times, median(barriers)))
            })
        })
        .collect();
    let mut out = None;
    for (r, h) in handles.into_iter().enumerate() {
        let got = h
            .join()
            .map_err(|_| format!("rank {r} panicked"))?
            .map_err(|e| format!("rank {r}: {e}"))?;
        if r == 0 {
            out = Some(got);
        }
    }
    let _ = std::fs::remove_dir_all(&repo_path);
    out.ok_or_else(|| "no rank 0".into())
}

/// Median time to write `bytes` to a new file durably: write, fsync, rename, fsync dir.
fn durable_write(dir: &Path, bytes: usize, reps: usize) -> std::io::Result<Duration> {
    let data = vec![0x5au8; bytes];
    let mut v = Vec::with_capacity(reps);
    for i in 0..reps {
        let tmp = dir.join(format!("floor-{i}.tmp"));
        let dst = dir.join(format!("floor-{i}"));
        let t0 = Instant::now();
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        std::fs::File::open(dir)?.sync_all()?;
        v.push(t0.elapsed());
        std::fs::remove_file(&dst)?;
    }
    Ok(median(v))
}

/// Runs the benchmark and prints the two tables.
pub fn main(a: Args) -> CmdResult {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = base.join(format!("lazarus-bench-round-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = tables(&a, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn tables(a: &Args, root: &Path) -> CmdResult {
    let small = durable_write(root, 512, 30)?;
    outln!(
        "# checkpoint round latency, empty state (rank 0's view, median of {} rounds)",
        a.rounds
    )?;
    outln!(
        "# floor = barrier over the same ranks + 1 durable small-file write (COMMIT; {:.3} ms)",
        ms(small)
    )?;
    outln!(
        "{:>6} {:>12} {:>12} {:>12} {:>8}",
        "ranks",
        "round ms",
        "barrier ms",
        "floor ms",
        "ratio"
    )?;
    for &n in &a.ranks {
        if n == 0 {
            return Err("--ranks: a world has at least one rank".into());
        }
        let (times, barrier) = measure(root, n, a.rounds.max(1), 0)?;
        let round = median(times);
        let floor = barrier + small;
        outln!(
            "{n:>6} {:>12.3} {:>12.3} {:>12.3} {:>8.2}",
            ms(round),
            ms(barrier),
            ms(floor),
            round.as_secs_f64() / floor.as_secs_f64()
        )?;
    }
    if a.mib > 0 {
        let bytes = a.mib << 20;
        let n = a.stall_ranks.max(1);
        let reps = 3;
        let (times, _) = measure(root, n, reps, bytes)?;
        let stall = median(times);
        // All ranks share this disk: the floor is writing all their bytes durably.
        let raw = durable_write(root, bytes * n as usize, 3)?;
        outln!()?;
        outln!(
            "# application stall per checkpoint: {n} ranks x {} MiB fresh data (median of {reps})",
            a.mib
        )?;
        outln!(
            "{:>12} {:>16} {:>8}",
            "stall ms",
            "raw write+fsync",
            "ratio"
        )?;
        outln!(
            "{:>12.1} {:>13.1} ms {:>8.2}",
            ms(stall),
            ms(raw),
            stall.as_secs_f64() / raw.as_secs_f64()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
