//! `DirtyVec` against the real store: the change hint lets unchanged chunks skip reading
//! and hashing, and never changes what a checkpoint contains. Every manifest written with
//! hints is compared with a full-hash manifest of the same bytes (written as a second rank
//! of the same checkpoint by a writer without any cache), across aborted rounds, failed
//! writes, writes without the cache, GC, restores, length changes, chunk-size changes and
//! switching repositories.

use lazarus_format::{ChunkDigest, Manifest, Rank};
use lazarus_state::{Checkpoint, DirtyVec, StateError};
use lazarus_store::{CommitMeta, PartReceipt, RepoOptions, RepoReader, Repository};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Checkpoint, Debug, Clone, PartialEq)]
struct Sim {
    step: u64,
    a: DirtyVec<u32>,
    b: DirtyVec<f64>,
    plain: Vec<u8>,
}

fn sim(n: usize) -> Sim {
    Sim {
        step: 0,
        a: (0..n as u32).collect(),
        b: (0..n / 2).map(|i| i as f64 * 0.25).collect(),
        plain: vec![7; 100],
    }
}

fn opts(chunk_size: u32) -> RepoOptions {
    RepoOptions {
        chunk_size,
        ..RepoOptions::default()
    }
}

/// What the hinted manifest must equal: each chunk's BLAKE3, computed here from scratch.
fn expected_digests(s: &Sim, chunk: usize) -> Vec<Vec<ChunkDigest>> {
    lazarus_state::save(s)
        .unwrap()
        .iter()
        .map(|o| o.data.chunks(chunk).map(ChunkDigest::of).collect())
        .collect()
}

fn digests(m: &Manifest) -> Vec<Vec<ChunkDigest>> {
    m.objects
        .iter()
        .map(|o| o.chunks.iter().map(|c| c.digest).collect())
        .collect()
}

/// How a round ends.
#[derive(Clone, Copy, Debug)]
enum Round {
    /// Rank 0 with hints, rank 1 full-hash, committed; manifests compared.
    Commit,
    /// Written durably, then the round is aborted (2PC abort after the vote).
    AbortAfterWrite,
    /// Saved but never written (a round that failed before the write phase).
    NeverWritten,
    /// The write fails on a full disk.
    FailedWrite,
    /// Written by a writer with the fingerprint cache off, committed.
    WithoutCache,
}

#[derive(Clone, Debug)]
enum Op {
    Set(usize, u32),
    FillRange(usize, usize, f64),
    GetMut(usize),
    IterAdd(usize, usize),
    MarkDirty(usize, usize),
    Push(u32),
    Truncate(usize),
    Escape(usize),
    Round(Round),
    Gc,
    RestoreLast,
    SwitchRepo,
    ChunkSize(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let round = prop_oneof![
        6 => Just(Round::Commit),
        2 => Just(Round::AbortAfterWrite),
        1 => Just(Round::NeverWritten),
        1 => Just(Round::FailedWrite),
        1 => Just(Round::WithoutCache),
    ];
    prop_oneof![
        6 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Op::Set(i, v)),
        3 => (any::<usize>(), 0usize..3000, any::<f64>()).prop_map(|(i, n, v)| Op::FillRange(i, n, v)),
        2 => any::<usize>().prop_map(Op::GetMut),
        2 => (any::<usize>(), 0usize..5000).prop_map(|(i, n)| Op::IterAdd(i, n)),
        1 => (any::<usize>(), 0usize..3000).prop_map(|(i, n)| Op::MarkDirty(i, n)),
        1 => any::<u32>().prop_map(Op::Push),
        1 => any::<usize>().prop_map(Op::Truncate),
        1 => any::<usize>().prop_map(Op::Escape),
        8 => round.prop_map(Op::Round),
        1 => Just(Op::Gc),
        1 => Just(Op::RestoreLast),
        1 => Just(Op::SwitchRepo),
        1 => prop_oneof![Just(4096u32), Just(8192), Just(12288)].prop_map(Op::ChunkSize),
    ]
}

struct World {
    paths: [PathBuf; 2],
    current: usize,
    repo: Option<Repository>,
    chunk: u32,
    last: Option<(usize, lazarus_format::CheckpointId, Sim)>,
    hinted: u64,
}

impl World {
    fn repo(&mut self) -> &mut Repository {
        if self.repo.is_none() {
            let p = &self.paths[self.current];
            self.repo = Some(Repository::open(p, opts(self.chunk)).unwrap());
        }
        self.repo.as_mut().unwrap()
    }

    fn round(&mut self, s: &Sim, how: Round) {
        let chunk = self.chunk as usize;
        let repo = self.repo();
        let objects = lazarus_state::save(s).unwrap();
        let p = repo.begin(2).unwrap();
        let w = p.part_writer();
        match how {
            Round::NeverWritten => {
                drop(objects);
                repo.abort(p).unwrap();
            }
            Round::FailedWrite => {
                assert!(w.with_write_budget(10).write(Rank(0), &objects).is_err());
                repo.abort(p).unwrap();
            }
            Round::AbortAfterWrite => {
                w.write(Rank(0), &objects).unwrap();
                repo.abort(p).unwrap();
            }
            Round::Commit | Round::WithoutCache => {
                let r0 = match how {
                    Round::Commit => w.write(Rank(0), &objects).unwrap(),
                    _ => w
                        .clone()
                        .without_fingerprint_cache()
                        .write(Rank(0), &objects)
                        .unwrap(),
                };
                let hinted = r0.hinted_chunks;
                let r1 = w
                    .without_fingerprint_cache()
                    .write(Rank(1), &lazarus_state::save(s).unwrap())
                    .unwrap();
                let receipts: Vec<PartReceipt> = vec![r0, r1];
                let id = repo
                    .commit(p, receipts, CommitMeta::default())
                    .unwrap()
                    .summary
                    .id;
                let reader = RepoReader::open(repo.path()).unwrap();
                let m0 = reader.manifest(id, Rank(0)).unwrap();
                let m1 = reader.manifest(id, Rank(1)).unwrap();
                assert_eq!(
                    m0.objects, m1.objects,
                    "hinted manifest differs from full hash"
                );
                assert_eq!(digests(&m0), expected_digests(s, chunk));
                self.hinted += hinted;
                self.last = Some((self.current, id, s.clone()));
            }
        }
    }

    fn restore_last(&mut self, s: &mut Sim) {
        let Some((which, id, want)) = self.last.clone() else {
            return;
        };
        let objs = RepoReader::open(&self.paths[which])
            .unwrap()
            .load_part(id, Rank(0))
            .unwrap();
        lazarus_state::restore(s, objs).unwrap();
        assert_eq!(*s, want, "restored value differs from the one saved");
    }
}

fn apply(s: &mut Sim, w: &mut World, op: Op) {
    let n = s.a.len().max(1);
    match op {
        Op::Set(i, v) => {
            s.a.set(i % n, v);
        }
        Op::FillRange(i, len, v) => {
            let n = s.b.len();
            let start = i % (n + 1);
            let end = (start + len).min(n);
            if let Some(x) = s.b.slice_mut(start..end) {
                x.fill(v);
            }
        }
        Op::GetMut(i) => {
            if let Some(x) = s.a.get_mut(i % n) {
                *x = x.wrapping_mul(3).wrapping_add(1);
            }
        }
        Op::IterAdd(i, len) => {
            let start = i % n;
            let end = (start + len).min(s.a.len());
            if let Some(it) = s.a.iter_mut(start..end) {
                it.for_each(|x| *x = x.wrapping_add(1));
            }
        }
        Op::MarkDirty(i, len) => s.b.mark_dirty(i..i.saturating_add(len)),
        Op::Push(v) => s.a.vec_mut().push(v),
        Op::Truncate(i) => {
            let keep = s.a.len() - (i % 50).min(s.a.len());
            s.a.vec_mut().truncate(keep);
        }
        Op::Escape(i) => {
            let k = i % s.b.len().max(1);
            if let Some(x) = s.b.as_mut_slice().get_mut(k) {
                *x += 1.0;
            }
        }
        Op::Round(how) => {
            s.step += 1;
            w.round(s, how);
        }
        Op::Gc => {
            w.repo().retain(1).unwrap();
        }
        Op::RestoreLast => w.restore_last(s),
        Op::SwitchRepo => {
            w.repo = None;
            w.current = 1 - w.current;
        }
        Op::ChunkSize(c) => {
            w.repo = None;
            w.chunk = c;
        }
    }
}

fn run(dir: &Path, n: usize, ops: Vec<Op>) -> u64 {
    let mut w = World {
        paths: [dir.join("a"), dir.join("b")],
        current: 0,
        repo: None,
        chunk: 4096,
        last: None,
        hinted: 0,
    };
    let mut s = sim(n);
    for op in ops {
        apply(&mut s, &mut w, op);
    }
    w.round(&s, Round::Commit);
    w.restore_last(&mut s);
    w.hinted
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn hinted_manifests_equal_full_hash_manifests(
        n in 1usize..20_000,
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), n, ops);
    }
}

fn commit(repo: &mut Repository, s: &Sim) -> PartReceipt {
    let p = repo.begin(1).unwrap();
    let r = p
        .part_writer()
        .write(Rank(0), &lazarus_state::save(s).unwrap())
        .unwrap();
    repo.commit(p, vec![r.clone()], CommitMeta::default())
        .unwrap();
    r
}

#[test]
fn one_written_page_reads_one_chunk_per_object() -> Result<(), StateError> {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), opts(4096)).unwrap();
    let mut s = sim(64 * 1024); // a: 64 chunks, b: 64 chunks
    let r1 = commit(&mut repo, &s);
    assert_eq!((r1.hinted_chunks, r1.cached_chunks), (0, 0));
    s.a.set(5000, 1);
    s.step += 1;
    let r2 = commit(&mut repo, &s);
    // a: 63 of 64 hinted; b: all 64 hinted; step and plain are not tracked.
    assert_eq!(r2.hinted_chunks, 63 + 64, "{r2:?}");
    assert_eq!(r2.new_chunks, 2, "a's changed chunk and step: {r2:?}");
    // Nothing written: the next round reads no tracked chunk at all.
    let r3 = commit(&mut repo, &s);
    assert_eq!(r3.hinted_chunks, 64 + 64, "{r3:?}");
    Ok(())
}

#[test]
fn aborted_round_then_gc_rewrites_missing_chunks_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), opts(4096)).unwrap();
    let mut s = sim(8 * 1024);
    commit(&mut repo, &s);
    s.a.set(0, 99);
    // Written and confirmed, then aborted: its new chunk is garbage for the GC.
    let p = repo.begin(1).unwrap();
    p.part_writer()
        .write(Rank(0), &lazarus_state::save(&s).unwrap())
        .unwrap();
    repo.abort(p).unwrap();
    let gc = repo.retain(1).unwrap();
    assert!(format!("{gc:?}").contains("chunks"), "{gc:?}");
    // Chunk 0 of `a` is reported clean relative to the aborted write, its file is gone:
    // the writer notices and writes it again from memory.
    let r = commit(&mut repo, &s);
    assert!(r.new_chunks >= 1, "{r:?}");
    let reader = RepoReader::open(dir.path()).unwrap();
    let id = reader.committed().unwrap().last().unwrap().id;
    let mut back = sim(0);
    lazarus_state::restore(&mut back, reader.load_part(id, Rank(0)).unwrap()).unwrap();
    assert_eq!(back, s);
    reader.verify(&|_, _| {}).unwrap();
}

/// Regression: the hint is relative to the last *confirmed* write, which may have gone to
/// another repository; the store must not pair it with its own older digests.
#[test]
fn alternating_repositories_never_reuse_the_other_repos_digests() {
    let dir = tempfile::tempdir().unwrap();
    let ops = vec![
        Op::Round(Round::Commit), // a: written to A
        Op::SwitchRepo,
        Op::Round(Round::Commit), // b: written to B
        Op::SwitchRepo,
        Op::Set(3, 17),
        Op::Round(Round::Commit), // a again: base is B's write, A must re-read
        Op::SwitchRepo,
        Op::Set(9000, 4),
        Op::Round(Round::Commit), // b again: B's cache is older than the base
    ];
    let hinted = run(dir.path(), 10_000, ops);
    assert!(hinted > 0, "the hint path was not exercised");
}
