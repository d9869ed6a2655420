//! `lazarus bench checkpoint`: the directory store against the machine's physical limits,
//! measured in the same run on the same file system.
//!
//! 1. raw: the same bytes written durably four ways, and the fastest is the limit a full
//!    checkpoint is compared with: (a) one file, sequential 8 MiB `write`s, one `fsync`;
//!    (b) one file preallocated with `fallocate`, filled by 4 threads with 8 MiB `pwrite`s,
//!    one `fsync`; (c) 1 MiB files (the store's chunk size) written by 4 threads, each
//!    fsynced by up to 8 threads, then their directory; (d) the same with each file's
//!    writeback started right after its write (`sync_file_range`), which is exactly what
//!    the store does minus hashing and compression, so a store faster than (a)-(c) is not
//!    "faster than the disk". Then a warm read of (a) (the limit for restore);
//! 2. full: a checkpoint of the same incompressible bytes (one rank, one `DirtyVec<u64>`)
//!    into a fresh repository, COMMIT included.
//!
//!    Steps 1 and 2 run `--repeat` times (default 3), alternating which goes first, and
//!    the reported ratio is the median of the per-repetition ratios: this VM's disk speed
//!    drifts by 3x within minutes, and pairing keeps that drift out of the ratio;
//! 3. tracked incremental: 1 % of the array (one contiguous region, every element) written
//!    through `DirtyVec::slice_mut`, then a checkpoint by the same process: the change hint
//!    lets the store skip reading and hashing the other 99 %;
//! 4. untracked incremental: another 1 % region changed behind the tracker's back
//!    (`as_mut_slice`, and the object written without a hint): the writer's fingerprint
//!    cache must XXH3 every chunk to find the changed ones;
//! 5. incremental, cold: the same with the fingerprint cache off (another 1 % region
//!    changed): the cost of the first checkpoint after a restart, which must BLAKE3 every
//!    chunk (informational);
//! 6. restore: `load_part` of the last checkpoint (every digest verified) against the raw
//!    read. Both reads are warm (page cache): dropping caches would need root and would
//!    disturb other users of the machine.
//!
//! `sync(2)` runs before each timed phase so earlier writeback does not bleed into it.

use super::{median, Scratch};
use crate::cmd::CmdResult;
use lazarus::format::{DType, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus::state::DirtyVec;
use lazarus::store::{CommitMeta, PartReceipt, PartWriter, RepoOptions, RepoReader, Repository};
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Flags of `lazarus bench checkpoint`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bytes of state to checkpoint, e.g. `256MiB`, `1GiB`, `100MB`.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// Directory for the scratch repository and raw file (default: system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Paired raw/full-checkpoint measurements (the median ratio is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Parses `123`, `4KiB`, `256MiB`, `1GiB`, `10MB`, `2GB` (binary and decimal units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let bytes = (n * mult as f64) as u64;
    if bytes < 1 << 20 {
        return Err(format!("size {s:?} is below the 1 MiB minimum"));
    }
    Ok(bytes - bytes % 8)
}

/// A scratch directory removed on drop (also on error paths).
/// The `--json` output. The top-level `raw_*` times and `full_checkpoint_s` are those of
/// the last repetition, whose repository the incremental steps continue, so the
/// incremental fractions are relative to that full checkpoint; `full_vs_raw_*` are medians
/// of the per-repetition ratios in `repetitions` (not the ratio of the top-level times).
#[derive(Serialize)]
struct Results {
    size_bytes: u64,
    raw_sequential_s: f64,
    raw_parallel_prealloc_s: f64,
    raw_chunk_files_s: f64,
    raw_chunk_files_writeback_s: f64,
    raw_write_fsync_s: f64,
    raw_best_method: &'static str,
    full_checkpoint_s: f64,
    /// Median over repetitions of (fastest raw write / full checkpoint) of that repetition.
    full_vs_raw_write: f64,
    /// Median over repetitions of (raw (a), sequential write + fsync / full checkpoint).
    full_vs_raw_sequential: f64,
    repetitions: Vec<Repetition>,
    full_stored_bytes: u64,
    tracked_incremental_s: f64,
    tracked_incremental_stored_bytes: u64,
    tracked_incremental_time_fraction: f64,
    tracked_incremental_bytes_fraction: f64,
    tracked_incremental_hinted_chunks: u64,
    incremental_s: f64,
    incremental_stored_bytes: u64,
    incremental_time_fraction: f64,
    incremental_bytes_fraction: f64,
    incremental_cached_chunks: u64,
    incremental_chunks: u64,
    incremental_cold_s: f64,
    incremental_cold_time_fraction: f64,
    raw_read_s: f64,
    restore_s: f64,
    restore_vs_raw_read: f64,
}

/// One paired measurement: the raw limits and a full checkpoint, back to back.
#[derive(Serialize, Clone, Copy)]
struct Repetition {
    raw_sequential_s: f64,
    raw_parallel_prealloc_s: f64,
    raw_chunk_files_s: f64,
    raw_chunk_files_writeback_s: f64,
    full_checkpoint_s: f64,
}

impl Repetition {
    /// The fastest raw write of this repetition and how it was done.
    fn limit(&self) -> (f64, &'static str) {
        [
            (self.raw_sequential_s, "one file, sequential, one fsync"),
            (
                self.raw_parallel_prealloc_s,
                "one preallocated file, 4 writers, one fsync",
            ),
            (
                self.raw_chunk_files_s,
                "1 MiB files, 4 writers, parallel fsyncs",
            ),
            (
                self.raw_chunk_files_writeback_s,
                "1 MiB files, 4 writers, early writeback, parallel fsyncs",
            ),
        ]
        .into_iter()
        .fold(
            (f64::INFINITY, ""),
            |best, c| if c.0 < best.0 { c } else { best },
        )
    }
    fn ratio(&self) -> f64 {
        self.limit().0 / self.full_checkpoint_s
    }
}

fn sync() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

/// Writers for the parallel raw variants (the store's chunk writers are at most 4 too).
const RAW_THREADS: usize = 4;
/// Block of the raw variants (a) and (b).
const RAW_BLOCK: usize = 8 << 20;

/// (a) one file, sequential writes, one fsync.
fn raw_sequential(path: &Path, data: &[u8]) -> std::io::Result<f64> {
    sync();
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    for piece in data.chunks(RAW_BLOCK) {
        f.write_all(piece)?;
    }
    f.sync_all()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `work(i)` for `i in 0..n` on `threads` threads; the first error wins.
fn parallel(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    let first_err = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                if let Err(e) = work(i) {
                    first_err
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// (b) one preallocated file, parallel positional writes, one fsync.
fn raw_parallel_prealloc(path: &Path, data: &[u8]) -> std::io::Result<f64> {
    use std::os::fd::AsRawFd;
    sync();
    let t = Instant::now();
    let f = std::fs::File::create(path)?;
    let len = libc::off_t::try_from(data.len()).map_err(std::io::Error::other)?;
    // SAFETY: valid open fd, non-negative offset and length.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    if rc != 0 {
        // Not supported here: the writes below allocate as they go.
        f.set_len(data.len() as u64)?;
    }
    let blocks: Vec<&[u8]> = data.chunks(RAW_BLOCK).collect();
    parallel(blocks.len(), RAW_THREADS, |i| {
        let b = blocks.get(i).copied().unwrap_or_default();
        f.write_all_at(b, (i * RAW_BLOCK) as u64)
    })?;
    f.sync_all()?;
    Ok(t.elapsed().as_secs_f64())
}

/// (c) one file per 1 MiB chunk, written in parallel, fsynced in parallel, then the
/// directory fsynced; (d) with `early_writeback`, each file's writeback is started right
/// after its write, as the store does.
fn raw_chunk_files(dir: &Path, data: &[u8], early_writeback: bool) -> std::io::Result<f64> {
    sync();
    let t = Instant::now();
    std::fs::create_dir_all(dir)?;
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let files: Vec<std::sync::Mutex<Option<std::fs::File>>> =
        chunks.iter().map(|_| std::sync::Mutex::new(None)).collect();
    parallel(chunks.len(), RAW_THREADS, |i| {
        let mut f = std::fs::File::create(dir.join(format!("{i:08}")))?;
        f.write_all(chunks.get(i).copied().unwrap_or_default())?;
        if early_writeback {
            // SAFETY: valid fd; the call only asks the kernel to start writeback now.
            unsafe {
                libc::sync_file_range(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        if let Some(slot) = files.get(i) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        }
        Ok(())
    })?;
    // The store fsyncs on 8 threads; so does this.
    parallel(files.len(), 8, |i| {
        if let Some(f) = files
            .get(i)
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take())
        {
            let _ = f.sync_all();
        }
        Ok(())
    })?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The bytes of `data` as an object without a change hint (the untracked path).
fn spec(data: &[u64]) -> ObjectSpec<'_> {
    ObjectSpec {
        info: ObjectInfo {
            // The name `lazarus::state::save` gives a root value, so the fingerprint cache
            // of the tracked checkpoints before applies.
            name: lazarus::state::ROOT_NAME.into(),
            type_name: "Vec<u64>".into(),
            kind: ObjectKind::Bulk {
                dtype: DType::U64,
                len: data.len() as u64,
                global: None,
            },
            sharing: None,
            layout: None,
        },
        data: lazarus::state::to_le_bytes(data),
        hint: None,
    }
}

/// One checkpoint of `objects` at `step` (begin, write rank 0, COMMIT), timed.
fn checkpoint(
    repo: &mut Repository,
    step: u64,
    write: impl FnOnce(PartWriter) -> Result<PartReceipt, lazarus::store::StoreError>,
) -> Result<(f64, PartReceipt, lazarus::format::CheckpointId), lazarus::store::StoreError> {
    sync();
    let t = Instant::now();
    let p = repo.begin(1)?;
    let r = write(p.part_writer())?;
    let id = repo
        .commit(
            p,
            vec![r.clone()],
            CommitMeta {
                step,
                ..CommitMeta::default()
            },
        )?
        .summary
        .id;
    Ok((t.elapsed().as_secs_f64(), r, id))
}

/// Element range of the `k`-th 1 % region (contiguous, every element changed).
fn region(n: usize, k: usize) -> std::ops::Range<usize> {
    let start = k * n / 4;
    start..start + n / 100
}

/// Runs the benchmark.
pub fn main(args: Args) -> CmdResult {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("lazarus-bench-{}", std::process::id())));
    std::fs::create_dir_all(scratch.path())?;
    let n = (args.size / 8) as usize;
    errln!(
        "generating {} of incompressible data in {}",
        super::super::inspect::human(args.size),
        scratch.path().display()
    );
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut state: DirtyVec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();

    // 1+2. Raw durable writes, four ways (the fastest is the limit), paired with a full
    // checkpoint into a fresh repository (tracked: the store confirms it, so the last one
    // becomes the hint's base). Repositories get distinct paths: the fingerprint cache is
    // keyed by path and must not carry digests into a repository without their chunks.
    let bytes = lazarus::state::to_le_bytes(state.as_slice());
    let raw_path = scratch.path().join("raw.bin");
    let reps = args.repeat.max(1);
    let mut runs = Vec::with_capacity(reps);
    let mut repo = None;
    let mut repo_path = PathBuf::new();
    // The last repetition's full checkpoint: the base of the incremental steps below.
    let mut full = None;
    for k in 0..reps {
        let raw_first = k % 2 == 0;
        let mut full_once = |repo: &mut Option<Repository>, repo_path: &mut PathBuf| {
            if let Some(old) = repo.take() {
                drop(old);
                std::fs::remove_dir_all(&*repo_path)?;
            }
            *repo_path = scratch.path().join(format!("repo-{k}"));
            let mut r = Repository::open(&*repo_path, RepoOptions::default())?;
            let (s, receipt, _) = checkpoint(&mut r, 1, |w| {
                w.write(Rank(0), &lazarus::state::save(&state).map_err(to_store)?)
            })?;
            *repo = Some(r);
            full = Some(receipt);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(s)
        };
        let mut full_s = 0.0;
        if !raw_first {
            full_s = full_once(&mut repo, &mut repo_path)?;
        }
        let raw_seq = raw_sequential(&raw_path, &bytes)?;
        let par_path = scratch.path().join("raw-par.bin");
        let raw_par = raw_parallel_prealloc(&par_path, &bytes)?;
        std::fs::remove_file(&par_path)?;
        let files_dir = scratch.path().join("raw-files");
        let raw_files = raw_chunk_files(&files_dir, &bytes, false)?;
        std::fs::remove_dir_all(&files_dir)?;
        let raw_files_wb = raw_chunk_files(&files_dir, &bytes, true)?;
        std::fs::remove_dir_all(&files_dir)?;
        if raw_first {
            full_s = full_once(&mut repo, &mut repo_path)?;
        }
        runs.push(Repetition {
            raw_sequential_s: raw_seq,
            raw_parallel_prealloc_s: raw_par,
            raw_chunk_files_s: raw_files,
            raw_chunk_files_writeback_s: raw_files_wb,
            full_checkpoint_s: full_s,
        });
    }
    drop(bytes);
    let (Some(mut repo), Some(full), Some(&last)) = (repo, full, runs.last()) else {
        return Err("no full checkpoint was measured".into());
    };
    let full_vs_raw = median(&runs.iter().map(Repetition::ratio).collect::<Vec<_>>());
    let full_vs_seq = median(
        &runs
            .iter()
            .map(|r| r.raw_sequential_s / r.full_checkpoint_s)
            .collect::<Vec<_>>(),
    );
    let (raw_write, raw_method) = last.limit();
    let full_s = last.full_checkpoint_s;

    // 3. Tracked incremental: 1 % written through the tracked API.
    if let Some(s) = state.slice_mut(region(n, 1)) {
        s.iter_mut().for_each(|v| *v = !*v);
    }
    let (tr_s, tr, _) = checkpoint(&mut repo, 2, |w| {
        w.write(Rank(0), &lazarus::state::save(&state).map_err(to_store)?)
    })?;

    // 4. Untracked incremental: changed behind the tracker, written without a hint.
    if let Some(s) = state.as_mut_slice().get_mut(region(n, 2)) {
        s.iter_mut().for_each(|v| *v = !*v);
    }
    let (inc_s, inc, _) = checkpoint(&mut repo, 3, |w| w.write(Rank(0), &[spec(&state)]))?;

    // 5. Incremental as after a restart: no fingerprint cache, every chunk hashed.
    if let Some(s) = state.as_mut_slice().get_mut(region(n, 3)) {
        s.iter_mut().for_each(|v| *v = !*v);
    }
    let (cold_s, _, id) = checkpoint(&mut repo, 4, |w| {
        w.without_fingerprint_cache()
            .write(Rank(0), &[spec(&state)])
    })?;

    // 6. Restore vs raw read (both warm).
    let mut buf = vec![0u8; n * 8];
    let t = Instant::now();
    std::fs::File::open(&raw_path)?.read_exact(&mut buf)?;
    let raw_read = t.elapsed().as_secs_f64();
    drop(buf);
    let reader = RepoReader::open(&repo_path)?;
    let t = Instant::now();
    let objs = reader.load_part(id, Rank(0))?;
    let restore_s = t.elapsed().as_secs_f64();
    if objs.first().map(|o| o.data.as_slice()) != Some(&*lazarus::state::to_le_bytes(&state)) {
        return Err("restore returned different bytes".into());
    }

    let frac = |a: u64| a as f64 / full.stored_new_bytes.max(1) as f64;
    let r = Results {
        size_bytes: args.size,
        raw_sequential_s: last.raw_sequential_s,
        raw_parallel_prealloc_s: last.raw_parallel_prealloc_s,
        raw_chunk_files_s: last.raw_chunk_files_s,
        raw_chunk_files_writeback_s: last.raw_chunk_files_writeback_s,
        raw_write_fsync_s: raw_write,
        raw_best_method: raw_method,
        full_checkpoint_s: full_s,
        full_vs_raw_write: full_vs_raw,
        full_vs_raw_sequential: full_vs_seq,
        repetitions: runs.clone(),
        full_stored_bytes: full.stored_new_bytes,
        tracked_incremental_s: tr_s,
        tracked_incremental_stored_bytes: tr.stored_new_bytes,
        tracked_incremental_time_fraction: tr_s / full_s,
        tracked_incremental_bytes_fraction: frac(tr.stored_new_bytes),
        tracked_incremental_hinted_chunks: tr.hinted_chunks,
        incremental_s: inc_s,
        incremental_stored_bytes: inc.stored_new_bytes,
        incremental_time_fraction: inc_s / full_s,
        incremental_bytes_fraction: frac(inc.stored_new_bytes),
        incremental_cached_chunks: inc.cached_chunks,
        incremental_chunks: inc.chunks,
        incremental_cold_s: cold_s,
        incremental_cold_time_fraction: cold_s / full_s,
        raw_read_s: raw_read,
        restore_s,
        restore_vs_raw_read: raw_read / restore_s,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let human = super::super::inspect::human;
    let gbps = |s: f64| args.size as f64 / s / 1e9;
    outln!(
        "checkpoint store benchmark, {} incompressible, 1 rank, chunk 1 MiB, codec auto",
        human(args.size)
    )?;
    for (k, r) in runs.iter().enumerate() {
        outln!(
            "  run {k}: raw (a) 1 file {:.2} GB/s, (b) prealloc {:.2}, (c) 1 MiB files {:.2}, (d) + early writeback {:.2}; full checkpoint {:.2} GB/s = {:.2}x the fastest",
            gbps(r.raw_sequential_s),
            gbps(r.raw_parallel_prealloc_s),
            gbps(r.raw_chunk_files_s),
            gbps(r.raw_chunk_files_writeback_s),
            gbps(r.full_checkpoint_s),
            r.ratio()
        )?;
    }
    outln!("    (limit of the last run = fastest durable write: {raw_method})")?;
    outln!(
        "  full checkpoint         {:8.3} s  {:6.2} GB/s  median over {} runs: {:.2}x raw (a) sequential write + fsync (target >= 0.90), {:.2}x the fastest raw write",
        full_s,
        gbps(full_s),
        runs.len(),
        r.full_vs_raw_sequential,
        r.full_vs_raw_write,
    )?;
    outln!(
        "  1% incr., tracked       {:8.3} s  {} new  = {:.3}x full time, {:.3}x full bytes (target <= 0.05)",
        tr_s,
        human(tr.stored_new_bytes),
        r.tracked_incremental_time_fraction,
        r.tracked_incremental_bytes_fraction
    )?;
    outln!(
        "    (change hint: {} of {} chunks neither read nor hashed)",
        tr.hinted_chunks,
        tr.chunks
    )?;
    outln!(
        "  1% incr., untracked     {:8.3} s  {} new  = {:.3}x full time, {:.3}x full bytes",
        inc_s,
        human(inc.stored_new_bytes),
        r.incremental_time_fraction,
        r.incremental_bytes_fraction
    )?;
    outln!(
        "    (fingerprint cache reused {} of {} chunk digests)",
        inc.cached_chunks,
        inc.chunks
    )?;
    outln!(
        "  1% incr., cold cache    {:8.3} s  = {:.3}x full time (first checkpoint after a restart)",
        cold_s,
        r.incremental_cold_time_fraction
    )?;
    outln!(
        "  raw read (warm)         {:8.3} s  {:6.2} GB/s",
        raw_read,
        gbps(raw_read)
    )?;
    outln!(
        "  restore (warm)          {:8.3} s  {:6.2} GB/s  = {:.2}x raw read",
        restore_s,
        gbps(restore_s),
        r.restore_vs_raw_read
    )?;
    Ok(ExitCode::SUCCESS)
}

fn to_store(e: lazarus::state::StateError) -> lazarus::store::StoreError {
    lazarus::store::StoreError::new(
        lazarus::store::StoreErrorKind::InvalidArgument,
        None,
        format!("saving the benchmark state: {e}"),
    )
}
