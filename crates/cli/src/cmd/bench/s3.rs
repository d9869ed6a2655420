//! `lazarus bench s3 --repo s3://bucket/prefix`: a full checkpoint into an S3-compatible
//! store against the raw PUT throughput of the same client to the same server, measured in
//! the same run.
//!
//! 1. raw: the same bytes as 1 MiB objects (the store's chunk size), PUT by as many
//!    threads as the store's part writer uses, through the very backend the repository
//!    uses (same client, same connection pool, same runtime), under `<prefix>/bench-raw/`;
//! 2. full: a checkpoint of those bytes (one rank, incompressible `u64`s) into a fresh
//!    repository under `<prefix>/bench-repo-<k>/`: hashing, the compression probe, HEAD
//!    per chunk (dedup), the chunk PUTs, the commit-time presence check and COMMIT.
//!
//! Both run `--repeat` times, alternating which goes first; the reported ratio is the
//! median of the per-repetition ratios (raw time / checkpoint time: 1.0 means the
//! checkpoint moves bytes as fast as plain PUTs). Everything written is deleted at the end.

use super::median;
use crate::cmd::CmdResult;
use lazarus::format::Rank;
use lazarus::store::backend::PutMode;
use lazarus::store::{
    open_backend, CommitMeta, DirKey, ObjectKey, RepoOptions, Repository, WriteBackend,
};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Flags of `lazarus bench s3`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write: `s3://bucket/prefix` (AWS_ENDPOINT_URL etc. from the environment).
    #[arg(long)]
    pub repo: PathBuf,
    /// Bytes of state to checkpoint, e.g. `256MiB`.
    #[arg(long, default_value = "256MiB", value_parser = super::checkpoint::parse_size)]
    pub size: u64,
    /// Paired raw/checkpoint measurements (the median ratio is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Results {
    size_bytes: u64,
    concurrency: usize,
    raw_put_s: Vec<f64>,
    checkpoint_s: Vec<f64>,
    /// Median over repetitions of raw PUT time / checkpoint time.
    checkpoint_vs_raw_put: f64,
    raw_put_mib_s: f64,
    checkpoint_mib_s: f64,
    load_average: Option<String>,
}

const CHUNK: usize = 1 << 20;

type CmdResult2<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn raw_puts(backend: &Arc<dyn WriteBackend>, bytes: &[u8], threads: usize) -> CmdResult2<f64> {
    let next = AtomicUsize::new(0);
    let n = bytes.len().div_ceil(CHUNK);
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), lazarus::store::StoreError> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let piece = &bytes[i * CHUNK..((i + 1) * CHUNK).min(bytes.len())];
                        let key = ObjectKey::Entry(DirKey::Root, format!("bench-raw-{i:06}"));
                        backend.put(&key, &[piece], PutMode::Overwrite)?;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| "a PUT thread panicked")??;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    for i in 0..n {
        backend.delete(&ObjectKey::Entry(DirKey::Root, format!("bench-raw-{i:06}")))?;
    }
    Ok(secs)
}

fn full_checkpoint(
    repo: &std::path::Path,
    objects: &[lazarus::format::ObjectSpec<'_>],
) -> CmdResult2<f64> {
    let mut r = Repository::open(repo, RepoOptions::default())?;
    let t = Instant::now();
    let p = r.begin(1)?;
    let receipt = p.part_writer().write(Rank(0), objects)?;
    r.commit(p, vec![receipt], CommitMeta::default())?;
    let secs = t.elapsed().as_secs_f64();
    // Leave nothing behind: the whole prefix goes.
    let b = r.backend().clone();
    drop(r);
    b.delete_dir(&DirKey::Root)?;
    Ok(secs)
}

/// Runs the benchmark.
pub fn main(args: Args) -> CmdResult {
    let url = args
        .repo
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    if !url.starts_with("s3://") {
        return Err(format!("--repo must be s3://bucket/prefix, not {url}").into());
    }
    let n = (args.size / 8) as usize;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    let bytes = lazarus::state::to_le_bytes(&data).into_owned();
    let spec = lazarus::format::ObjectSpec {
        info: lazarus::format::ObjectInfo {
            name: "x".into(),
            type_name: "Vec<u64>".into(),
            kind: lazarus::format::ObjectKind::Bulk {
                dtype: lazarus::format::DType::U64,
                len: n as u64,
                global: None,
            },
            sharing: Some(lazarus::format::Sharing::Rank),
            layout: None,
        },
        data: bytes.as_slice().into(),
        hint: None,
    };
    let raw_backend = open_backend(&PathBuf::from(format!("{url}/bench-raw")))?;
    let threads = raw_backend.write_concurrency();
    errln!(
        "{} to {url}: {} concurrent requests, {} repetitions",
        super::super::inspect::human(args.size),
        threads,
        args.repeat.max(1)
    );
    let mut raw = Vec::new();
    let mut full = Vec::new();
    for k in 0..args.repeat.max(1) {
        let repo = PathBuf::from(format!("{url}/bench-repo-{}-{k}", std::process::id()));
        if k % 2 == 0 {
            raw.push(raw_puts(&raw_backend, &bytes, threads)?);
            full.push(full_checkpoint(&repo, std::slice::from_ref(&spec))?);
        } else {
            full.push(full_checkpoint(&repo, std::slice::from_ref(&spec))?);
            raw.push(raw_puts(&raw_backend, &bytes, threads)?);
        }
        errln!(
            "  repetition {k}: raw PUTs {:.2} s, checkpoint {:.2} s",
            raw[k],
            full[k]
        );
    }
    let ratio = median(
        &raw.iter()
            .zip(&full)
            .map(|(r, f)| r / f)
            .collect::<Vec<_>>(),
    );
    let mib = args.size as f64 / (1 << 20) as f64;
    let res = Results {
        size_bytes: args.size,
        concurrency: threads,
        raw_put_mib_s: mib / median(&raw),
        checkpoint_mib_s: mib / median(&full),
        raw_put_s: raw,
        checkpoint_s: full,
        checkpoint_vs_raw_put: ratio,
        load_average: super::load_average(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&res)?)?;
    } else {
        outln!(
            "raw PUT {:.0} MiB/s, checkpoint {:.0} MiB/s: checkpoint/raw = {:.2}x (median of {}; load {})",
            res.raw_put_mib_s,
            res.checkpoint_mib_s,
            res.checkpoint_vs_raw_put,
            res.raw_put_s.len(),
            res.load_average.as_deref().unwrap_or("?")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
