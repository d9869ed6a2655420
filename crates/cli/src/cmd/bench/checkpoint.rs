//! `lazarus bench checkpoint`: the directory store against the machine's physical limits,
//! measured in the same run on the same file system.
//!
//! 1. raw: sequential write of the bytes to one file + fsync (the limit for a full
//!    checkpoint), then a read of that file (the limit for restore);
//! 2. full: a checkpoint of the same incompressible bytes (one rank, one u64 bulk object)
//!    into a fresh repository, COMMIT included;
//! 3. incremental: one contiguous 1 % region of the array is changed (every byte of it),
//!    then a second checkpoint is taken by the same process (the writer's fingerprint cache
//!    is warm, as in a running job); time and newly stored bytes are compared with (2);
//! 4. incremental, cold: the same with the fingerprint cache off (another 1 % region
//!    changed): the cost of the first checkpoint after a restart, which must BLAKE3 every
//!    chunk (informational);
//! 5. restore: `load_part` of the last checkpoint (every digest verified) against
//!    the raw read. Both reads are warm (page cache): dropping caches would need root and
//!    would disturb other users of the machine.
//!
//! `sync(2)` runs before each timed phase so earlier writeback does not bleed into it.

use crate::cmd::CmdResult;
use lazarus::format::{DType, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus::store::{CommitMeta, RepoOptions, RepoReader, Repository};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
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
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Serialize)]
struct Results {
    size_bytes: u64,
    raw_write_fsync_s: f64,
    full_checkpoint_s: f64,
    full_vs_raw_write: f64,
    full_stored_bytes: u64,
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

fn sync() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

fn spec(data: &[u8]) -> ObjectSpec<'_> {
    ObjectSpec {
        info: ObjectInfo {
            name: "state".into(),
            type_name: "Vec<u64>".into(),
            kind: ObjectKind::Bulk {
                dtype: DType::U64,
                len: data.len() as u64 / 8,
                global: None,
            },
        },
        data: data.into(),
        hint: None,
    }
}

/// Runs the benchmark.
pub fn main(args: Args) -> CmdResult {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("lazarus-bench-{}", std::process::id())));
    std::fs::create_dir_all(scratch.path())?;
    let n = args.size as usize;
    eprintln!(
        "generating {} of incompressible data in {}",
        super::super::inspect::human(args.size),
        scratch.path().display()
    );
    let mut data = vec![0u8; n];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for w in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }

    // 1. Raw write + fsync.
    let raw_path = scratch.path().join("raw.bin");
    sync();
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&raw_path)?;
        for piece in data.chunks(8 << 20) {
            f.write_all(piece)?;
        }
        f.sync_all()?;
    }
    let raw_write = t.elapsed().as_secs_f64();

    // 2. Full checkpoint.
    let repo_path = scratch.path().join("repo");
    let mut repo = Repository::open(&repo_path, RepoOptions::default())?;
    sync();
    let t = Instant::now();
    let p = repo.begin(1)?;
    let full = p.part_writer().write(Rank(0), &[spec(&data)])?;
    repo.commit(
        p,
        vec![full.clone()],
        CommitMeta {
            step: 1,
            ..CommitMeta::default()
        },
    )?;
    let full_s = t.elapsed().as_secs_f64();

    // 3. Incremental after changing one contiguous 1 % region (documented choice).
    let region = n / 100;
    let start = (n / 3) - (n / 3) % 8;
    for b in data.iter_mut().skip(start).take(region) {
        *b = !*b;
    }
    sync();
    let t = Instant::now();
    let p = repo.begin(1)?;
    let inc = p.part_writer().write(Rank(0), &[spec(&data)])?;
    repo.commit(
        p,
        vec![inc.clone()],
        CommitMeta {
            step: 2,
            ..CommitMeta::default()
        },
    )?;
    let inc_s = t.elapsed().as_secs_f64();

    // 4. Incremental as after a restart: no fingerprint cache, every chunk hashed.
    let start2 = (2 * n / 3) - (2 * n / 3) % 8;
    for b in data.iter_mut().skip(start2).take(region) {
        *b = !*b;
    }
    sync();
    let t = Instant::now();
    let p = repo.begin(1)?;
    let cold = p
        .part_writer()
        .without_fingerprint_cache()
        .write(Rank(0), &[spec(&data)])?;
    let id = repo
        .commit(
            p,
            vec![cold],
            CommitMeta {
                step: 3,
                ..CommitMeta::default()
            },
        )?
        .summary
        .id;
    let cold_s = t.elapsed().as_secs_f64();

    // 5. Restore vs raw read (both warm).
    let mut buf = vec![0u8; n];
    let t = Instant::now();
    std::fs::File::open(&raw_path)?.read_exact(&mut buf)?;
    let raw_read = t.elapsed().as_secs_f64();
    drop(buf);
    let reader = RepoReader::open(&repo_path)?;
    let t = Instant::now();
    let objs = reader.load_part(id, Rank(0))?;
    let restore_s = t.elapsed().as_secs_f64();
    if objs.first().map(|o| o.data.as_slice()) != Some(data.as_slice()) {
        return Err("restore returned different bytes".into());
    }

    let r = Results {
        size_bytes: args.size,
        raw_write_fsync_s: raw_write,
        full_checkpoint_s: full_s,
        full_vs_raw_write: raw_write / full_s,
        full_stored_bytes: full.stored_new_bytes,
        incremental_s: inc_s,
        incremental_stored_bytes: inc.stored_new_bytes,
        incremental_time_fraction: inc_s / full_s,
        incremental_bytes_fraction: inc.stored_new_bytes as f64
            / full.stored_new_bytes.max(1) as f64,
        incremental_cached_chunks: inc.cached_chunks,
        incremental_chunks: inc.chunks,
        incremental_cold_s: cold_s,
        incremental_cold_time_fraction: cold_s / full_s,
        raw_read_s: raw_read,
        restore_s,
        restore_vs_raw_read: raw_read / restore_s,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let gbps = |s: f64| args.size as f64 / s / 1e9;
    println!(
        "checkpoint store benchmark, {} incompressible, 1 rank, chunk 1 MiB, codec auto",
        super::super::inspect::human(args.size)
    );
    println!(
        "  raw write+fsync      {:8.3} s  {:6.2} GB/s",
        raw_write,
        gbps(raw_write)
    );
    println!(
        "  full checkpoint      {:8.3} s  {:6.2} GB/s  = {:.2}x raw write (target >= 0.90)",
        full_s,
        gbps(full_s),
        r.full_vs_raw_write
    );
    println!(
        "  1% incremental       {:8.3} s  {} new  = {:.3}x full time, {:.3}x full bytes (target <= 0.05)",
        inc_s,
        super::super::inspect::human(inc.stored_new_bytes),
        r.incremental_time_fraction,
        r.incremental_bytes_fraction
    );
    println!(
        "    (fingerprint cache reused {} of {} chunk digests)",
        inc.cached_chunks, inc.chunks
    );
    println!(
        "  1% incr., cold cache {:8.3} s  = {:.3}x full time (first checkpoint after a restart)",
        cold_s, r.incremental_cold_time_fraction
    );
    println!(
        "  raw read (warm)      {:8.3} s  {:6.2} GB/s",
        raw_read,
        gbps(raw_read)
    );
    println!(
        "  restore (warm)       {:8.3} s  {:6.2} GB/s  = {:.2}x raw read",
        restore_s,
        gbps(restore_s),
        r.restore_vs_raw_read
    );
    Ok(ExitCode::SUCCESS)
}
