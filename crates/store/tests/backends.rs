//! The store's behaviour, once, on every backend (directory, memory, S3 when a server is
//! reachable): round trip, dedup, retention and GC without orphans, abort, damage found by
//! verify and skipped by restore, a damaged chunk rewritten by the next checkpoint (issue
//! #11), exclusive COMMIT creation, and the writer lock.

mod common;

use common::backends::{for_each_backend, TestRepo};
use common::*;
use lazarus_format::Rank;
use lazarus_store::backend::PutMode;
use lazarus_store::{ObjectKey, RepoOptions, StoreErrorKind};
use std::collections::BTreeSet;

const N: usize = 3000; // 24 KB per rank: 6 chunks of 4 KiB

/// Every chunk digest the committed checkpoints reference.
fn referenced(r: &TestRepo) -> BTreeSet<String> {
    let reader = r.reader();
    let mut out = BTreeSet::new();
    for c in reader.committed().unwrap() {
        for m in reader.manifests(c.id).unwrap() {
            for o in &m.objects {
                out.extend(o.chunks.iter().map(|c| c.digest.to_hex()));
            }
        }
    }
    out
}

#[test]
fn roundtrip_dedup_and_verify_on_every_backend() {
    for_each_backend("roundtrip", |r| {
        let mut repo = r.open(small_opts());
        let a = checkpoint(&mut repo, 2, 1, N);
        let b = checkpoint_with(&mut repo, 2, 1, N, true);
        assert_holds_on(r, a, 2, 1, N);
        assert_holds_on(r, b, 2, 1, N);
        // Same data: the second checkpoint stored nothing new.
        let c = r.reader().commit_record(b).unwrap();
        assert_eq!(
            c.parts.iter().map(|p| p.stored_new_bytes).sum::<u64>(),
            0,
            "[{}] dedup",
            r.kind
        );
        let v = r.reader().verify(&|_, _| {}).unwrap();
        assert!(v.problems.is_empty(), "[{}] {:?}", r.kind, v.problems);
        assert_eq!(v.intact, vec![a, b]);
        drop(repo);
        // Reopen: the lock was released, ids keep increasing.
        let mut repo = r.open(small_opts());
        let c = checkpoint(&mut repo, 1, 2, N);
        assert!(c > b);
    });
}

fn assert_holds_on(
    r: &TestRepo,
    id: lazarus_format::CheckpointId,
    world: u32,
    step: u64,
    n: usize,
) {
    let reader = r.reader();
    for rank in 0..world {
        let objs = reader.load_part(id, Rank(rank)).unwrap();
        assert_eq!(objs[0].data, le_f64(&field(rank, step, n)), "[{}]", r.kind);
        assert_eq!(objs[1].data, step.to_le_bytes().to_vec());
    }
}

#[test]
fn gc_leaves_no_orphan_objects_on_every_backend() {
    for_each_backend("gc", |r| {
        let mut repo = r.open(small_opts());
        for step in 1..=4 {
            checkpoint(&mut repo, 2, step, N);
        }
        // An aborted checkpoint with a written part, and an abandoned pending one.
        let p = repo.begin(1).unwrap();
        let bytes = le_f64(&field(9, 99, N));
        p.part_writer()
            .write(Rank(0), &[bulk_f64("field", &bytes, None)])
            .unwrap();
        repo.abort(p).unwrap();
        let p = repo.begin(1).unwrap();
        p.part_writer()
            .write(Rank(0), &[bulk_f64("field", &bytes, None)])
            .unwrap();
        drop(p);
        let report = repo.retain(2).unwrap();
        assert_eq!(report.kept.len(), 2, "[{}] {report:?}", r.kind);
        assert_eq!(report.removed.len(), 2);
        assert!(report.chunks_removed > 0);
        // Exactly the referenced chunks remain, and only kept checkpoint directories.
        let left: BTreeSet<String> = r.chunk_names().into_iter().collect();
        assert_eq!(left, referenced(r), "[{}] orphan or missing chunks", r.kind);
        let dirs = r.checkpoint_dirs();
        let kept: Vec<String> = report.kept.iter().map(|i| i.to_string()).collect();
        assert_eq!(dirs, kept, "[{}] leftover checkpoint directories", r.kind);
        let v = r.reader().verify(&|_, _| {}).unwrap();
        assert!(v.problems.is_empty(), "[{}] {:?}", r.kind, v.problems);
    });
}

#[test]
fn a_flipped_byte_is_found_by_verify_and_skipped_by_restore_on_every_backend() {
    for_each_backend("flip", |r| {
        let mut repo = r.open(small_opts());
        let old = checkpoint(&mut repo, 1, 1, N);
        let new = checkpoint(&mut repo, 1, 2, N);
        // A chunk only the newest checkpoint has.
        let m = r.reader().manifest(new, Rank(0)).unwrap();
        let d = m.objects[0].chunks[0].digest;
        r.flip_last_byte(&ObjectKey::Chunk(d));
        let v = r.reader().verify(&|_, _| {}).unwrap();
        assert_eq!(v.intact, vec![old], "[{}] {:?}", r.kind, v.problems);
        assert!(
            v.problems[0].path.to_string_lossy().contains(&d.to_hex()),
            "[{}] the problem names the chunk: {:?}",
            r.kind,
            v.problems
        );
        let (best, skipped) = r.reader().newest_intact().unwrap().unwrap();
        assert_eq!(best.id, old, "[{}] restore falls back", r.kind);
        assert_eq!(skipped[0].checkpoint, new);
    });
}

/// Issue #11, item 2: the writer trusted any file under a chunk's final name, so after a
/// restore that skipped a damaged checkpoint, the next checkpoint of the same data reused
/// the damaged chunk and was committed already broken.
#[test]
fn damaged_chunk_is_rewritten_by_the_next_checkpoint_not_reused() {
    for_each_backend("rewrite", |r| {
        let mut repo = r.open(small_opts());
        checkpoint(&mut repo, 1, 1, N);
        let damaged_id = checkpoint(&mut repo, 1, 2, N);
        let m = r.reader().manifest(damaged_id, Rank(0)).unwrap();
        let d = m.objects[0].chunks[2].digest;
        r.flip_last_byte(&ObjectKey::Chunk(d));
        // The restore skips it (and so learns the chunk is bad) ...
        let (best, _) = r.reader().newest_intact().unwrap().unwrap();
        assert!(best.id < damaged_id);
        // ... and the job, recomputing the same state, checkpoints it again.
        let again = checkpoint(&mut repo, 1, 2, N);
        let v = r.reader().verify(&|_, _| {}).unwrap();
        assert!(
            v.intact.contains(&again),
            "[{}] the new checkpoint must be intact: {:?}",
            r.kind,
            v.problems
        );
        assert_holds_on(r, again, 1, 2, N);
    });
}

#[test]
fn exactly_one_of_sixteen_concurrent_commit_creates_wins_on_every_backend() {
    for_each_backend("race", |r| {
        let _repo = r.open(small_opts());
        let id = lazarus_format::CheckpointId(77);
        assert!(r
            .backend
            .create_dir(&lazarus_store::DirKey::Checkpoint(id))
            .unwrap());
        let key = ObjectKey::Commit(id);
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16u8)
                .map(|i| {
                    let b = r.backend.clone();
                    let key = key.clone();
                    s.spawn(move || b.put(&key, &[&[i; 64]], PutMode::Create).map(|_| i))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<u8> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(winners.len(), 1, "[{}] {results:?}", r.kind);
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.kind(), StoreErrorKind::Conflict, "[{}] {e}", r.kind);
        }
        assert_eq!(r.backend.read(&key).unwrap(), vec![winners[0]; 64]);
    });
}

#[test]
fn a_second_writer_is_locked_out_and_the_same_job_may_share() {
    for_each_backend("lock", |r| {
        let job = RepoOptions {
            job_token: Some("job-1".into()),
            ..small_opts()
        };
        let first = r.open(job.clone());
        let e =
            lazarus_store::Repository::open_backend(r.backend.clone(), small_opts()).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Locked, "[{}] {e}", r.kind);
        let shared = lazarus_store::Repository::open_shared_backend(r.backend.clone(), job.clone());
        assert!(shared.is_ok(), "[{}] {:?}", r.kind, shared.err());
        drop(shared);
        drop(first);
        // Released on drop: a writer of another job gets it at once.
        let other = lazarus_store::Repository::open_backend(r.backend.clone(), small_opts());
        assert!(other.is_ok(), "[{}] {:?}", r.kind, other.err());
    });
}
