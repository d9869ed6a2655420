//! The writer's per-process fingerprint cache (docs/FORMAT.md, "Writer notes"): unchanged
//! chunks reuse their digest, changed chunks are always detected, a restarted process (empty
//! cache) and a chunk deleted behind the writer's back still give exact restores.

mod common;

use common::*;
use lazarus_format::{CheckpointId, Rank};
use lazarus_store::{PartReceipt, RepoReader, Repository};
use proptest::prelude::*;
use std::path::Path;

fn write_commit(
    repo: &mut Repository,
    rank_data: &[(u32, &[u8])],
) -> (CheckpointId, Vec<PartReceipt>) {
    let p = repo.begin(rank_data.len() as u32).unwrap();
    let w = p.part_writer();
    let receipts: Vec<PartReceipt> = rank_data
        .iter()
        .map(|(r, b)| w.write(Rank(*r), &[bulk_f64("v", b, None)]).unwrap())
        .collect();
    let id = repo
        .commit(p, receipts.clone(), Default::default())
        .unwrap()
        .summary
        .id;
    (id, receipts)
}

fn load(dir: &Path, id: CheckpointId, rank: u32) -> Vec<u8> {
    let objs = RepoReader::open(dir)
        .unwrap()
        .load_part(id, Rank(rank))
        .unwrap();
    objs.into_iter().next().unwrap().data
}

#[test]
fn unchanged_chunks_are_not_rehashed_and_changed_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let mut b = le_f64(&field(0, 1, 4096)); // 8 chunks of 4 KiB
    let (_, r1) = write_commit(&mut repo, &[(0, &b)]);
    assert_eq!(
        r1[0].cached_chunks, 0,
        "first checkpoint of the process: empty cache"
    );
    b[5 * 4096 + 17] ^= 1; // one bit in chunk 5
    let (id, r2) = write_commit(&mut repo, &[(0, &b)]);
    assert_eq!(r2[0].chunks, 8);
    assert_eq!(r2[0].cached_chunks, 7, "{:?}", r2[0]);
    assert_eq!(r2[0].new_chunks, 1, "{:?}", r2[0]);
    assert_eq!(load(dir.path(), id, 0), b);
}

#[test]
fn without_cache_every_chunk_is_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let b = le_f64(&field(0, 1, 4096));
    write_commit(&mut repo, &[(0, &b)]);
    let p = repo.begin(1).unwrap();
    let r = p
        .part_writer()
        .without_fingerprint_cache()
        .write(Rank(0), &[bulk_f64("v", &b, None)])
        .unwrap();
    assert_eq!((r.cached_chunks, r.new_chunks), (0, 0));
    repo.abort(p).unwrap();
}

#[test]
fn cache_is_per_rank_and_per_repository() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut r1 = Repository::open(d1.path(), small_opts()).unwrap();
    let mut r2 = Repository::open(d2.path(), small_opts()).unwrap();
    let a = le_f64(&field(0, 1, 2048));
    write_commit(&mut r1, &[(0, &a)]);
    // Same bytes, other repository: no hit (its chunks are not there), written in full.
    let (id, r) = write_commit(&mut r2, &[(0, &a)]);
    assert_eq!((r[0].cached_chunks, r[0].new_chunks), (0, 4));
    assert_eq!(load(d2.path(), id, 0), a);
    // Same repository, same bytes, other rank: no hit (dedup by digest instead).
    let (id, r) = write_commit(&mut r1, &[(0, &a), (1, &a)]);
    assert_eq!((r[0].cached_chunks, r[1].cached_chunks), (4, 0));
    assert_eq!(r[1].new_chunks, 0);
    assert_eq!(load(d1.path(), id, 1), a);
}

#[test]
fn cache_hit_on_a_deleted_chunk_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let b = le_f64(&field(0, 1, 2048));
    let (id1, _) = write_commit(&mut repo, &[(0, &b)]);
    let d = RepoReader::open(dir.path())
        .unwrap()
        .manifest(id1, Rank(0))
        .unwrap()
        .objects[0]
        .chunks[2]
        .digest;
    let path = files(dir.path(), &d.to_hex())[0].clone();
    std::fs::remove_file(&path).unwrap();
    let (id2, r) = write_commit(&mut repo, &[(0, &b)]);
    assert_eq!((r[0].cached_chunks, r[0].new_chunks), (3, 1), "{:?}", r[0]);
    assert!(path.is_file());
    assert_eq!(load(dir.path(), id2, 0), b);
}

const CHILD_ENV: &str = "LAZARUS_FPCACHE_CHILD_REPO";

/// Runs only as the child of `restarted_process_starts_with_an_empty_cache`.
#[test]
#[ignore]
fn child_writes_changed_checkpoint() {
    let Ok(repo) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut repo = Repository::open(Path::new(&repo), small_opts()).unwrap();
    let mut b = le_f64(&field(0, 1, 4096));
    b[100] ^= 0xff;
    let (_, r) = write_commit(&mut repo, &[(0, &b)]);
    assert_eq!(
        r[0].cached_chunks, 0,
        "a new process must start with an empty cache"
    );
    assert_eq!(r[0].new_chunks, 1);
}

#[test]
fn restarted_process_starts_with_an_empty_cache() {
    let dir = tempfile::tempdir().unwrap();
    let b = le_f64(&field(0, 1, 4096));
    {
        let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
        write_commit(&mut repo, &[(0, &b)]);
    } // drop releases the lock for the child
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writes_changed_checkpoint", "--ignored"])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    let reader = RepoReader::open(dir.path()).unwrap();
    let newest = reader.committed().unwrap().last().unwrap().id;
    let mut changed = b.clone();
    changed[100] ^= 0xff;
    assert_eq!(load(dir.path(), newest, 0), changed);
    // This process's cache still describes its own last write (b); the repository moved
    // on without it, and a write of b again is still exact.
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let (id, r) = write_commit(&mut repo, &[(0, &b)]);
    assert_eq!(r[0].cached_chunks, 8);
    assert_eq!(load(dir.path(), id, 0), b);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random data, then rounds of random single-byte edits (possibly none): every
    /// checkpoint restores exactly, edited chunks are never served from the cache, and
    /// unchanged chunks always are.
    #[test]
    fn random_edits_always_detected(
        seed_len in 1usize..40_000,
        init in any::<u64>(),
        rounds in prop::collection::vec(
            prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
            1..4,
        ),
    ) {
        let len = seed_len * 8;
        let mut x = init | 1;
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
        let (id, _) = write_commit(&mut repo, &[(0, &b)]);
        prop_assert_eq!(load(dir.path(), id, 0), b.clone());
        let chunks = len.div_ceil(4096) as u64;
        for edits in rounds {
            let prev = b.clone();
            for (at, xor) in &edits {
                let i = at.index(len);
                b[i] ^= xor;
            }
            // Two edits of one byte may cancel out: count the chunks that really differ.
            let differ = prev
                .chunks(4096)
                .zip(b.chunks(4096))
                .filter(|(p, n)| p != n)
                .count() as u64;
            let (id, r) = write_commit(&mut repo, &[(0, &b)]);
            prop_assert_eq!(&load(dir.path(), id, 0), &b);
            prop_assert_eq!(r[0].chunks, chunks);
            prop_assert_eq!(r[0].cached_chunks, chunks - differ, "{:?}", r[0]);
        }
    }
}
