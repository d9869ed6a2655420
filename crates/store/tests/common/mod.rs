//! Shared helpers for the store's integration tests.
#![allow(dead_code)]

pub mod backends;
pub mod fake_s3;
pub mod s3;

use lazarus_format::{DType, GlobalRange, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus_store::{CommitMeta, PartReceipt, RepoOptions, Repository};
use std::path::Path;

/// A deterministic f64 field for `rank`, step `step`, of `n` elements.
pub fn field(rank: u32, step: u64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (i as f64) * 0.5 + rank as f64 * 1000.0 + step as f64)
        .collect()
}

pub fn le_f64(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bulk_f64<'a>(name: &str, bytes: &'a [u8], global: Option<GlobalRange>) -> ObjectSpec<'a> {
    ObjectSpec {
        info: ObjectInfo {
            name: name.into(),
            type_name: "Vec<f64>".into(),
            kind: ObjectKind::Bulk {
                dtype: DType::F64,
                len: (bytes.len() / 8) as u64,
                global,
            },
            sharing: None,
            layout: None,
        },
        data: bytes.into(),
        hint: None,
    }
}

pub fn serde_obj<'a>(name: &str, bytes: &'a [u8]) -> ObjectSpec<'a> {
    ObjectSpec {
        info: ObjectInfo {
            name: name.into(),
            type_name: "Params".into(),
            kind: ObjectKind::Serde,
            sharing: None,
            layout: None,
        },
        data: bytes.into(),
        hint: None,
    }
}

/// Small options so tests produce several chunks cheaply.
pub fn small_opts() -> RepoOptions {
    RepoOptions {
        chunk_size: 4096,
        ..RepoOptions::default()
    }
}

/// Writes and commits one checkpoint of `world` ranks at `step`, field length `n`.
pub fn checkpoint(
    repo: &mut Repository,
    world: u32,
    step: u64,
    n: usize,
) -> lazarus_format::CheckpointId {
    checkpoint_with(repo, world, step, n, false)
}

/// [`checkpoint`], with every rank's (small) manifest kept inline when `inline` (format 1.1,
/// checked) instead of written as a file.
pub fn checkpoint_with(
    repo: &mut Repository,
    world: u32,
    step: u64,
    n: usize,
    inline: bool,
) -> lazarus_format::CheckpointId {
    let pending = repo.begin(world).expect("begin");
    let w = if inline {
        pending
            .part_writer()
            .with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST)
    } else {
        pending.part_writer()
    };
    let receipts: Vec<PartReceipt> = (0..world)
        .map(|r| {
            let bytes = le_f64(&field(r, step, n));
            let p = step.to_le_bytes();
            let rc = w
                .write(
                    Rank(r),
                    &[bulk_f64("field", &bytes, None), serde_obj("step", &p)],
                )
                .expect("write part");
            assert_eq!(rc.manifest.is_some(), inline, "manifest inline iff asked");
            rc
        })
        .collect();
    repo.commit(
        pending,
        receipts,
        CommitMeta {
            step,
            app: Default::default(),
        },
    )
    .expect("commit")
    .summary
    .id
}

/// Asserts that checkpoint `id` holds exactly what `checkpoint(.., step, n)` wrote.
pub fn assert_holds(
    repo: &Path,
    id: lazarus_format::CheckpointId,
    world: u32,
    step: u64,
    n: usize,
) {
    let r = lazarus_store::RepoReader::open(repo).expect("reader");
    for rank in 0..world {
        let objs = r.load_part(id, Rank(rank)).expect("load");
        assert_eq!(objs.len(), 2);
        assert_eq!(
            objs[0].data,
            le_f64(&field(rank, step, n)),
            "field of rank {rank}"
        );
        assert_eq!(objs[1].data, step.to_le_bytes().to_vec());
    }
}

/// Every file under `dir` (recursively) whose path contains `needle`.
pub fn files(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(needle) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn flip(path: &Path, pos: usize) {
    let mut b = std::fs::read(path).expect("read");
    let i = pos % b.len();
    b[i] ^= 0x20;
    std::fs::write(path, b).expect("write");
}
