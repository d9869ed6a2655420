//! Incremental asynchronous captures (issue #16 part 3, docs/ASYNC.md): the capture of a
//! `DirtyVec` whose previous checkpoint committed copies only the chunks changed since,
//! the part names the others by digest, and every checkpoint still holds exactly the
//! values at its call although the program writes right after each call. A missing
//! previous checkpoint (a restart, a failed flush) makes the capture a full one.

use lazarus::coord::Timeouts;
use lazarus::store::{RepoOptions, RepoReader};
use lazarus::{Checkpoint, CheckpointId, DirtyVec, Job};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

#[derive(Checkpoint, Debug, PartialEq)]
struct S {
    data: DirtyVec<u64>,
    n: u64,
}

/// 64 KiB chunks: 16 pages of 4 KiB each.
const CHUNK: usize = 64 << 10;
/// u64 words per chunk and per page.
const WORDS_PER_CHUNK: usize = CHUNK / 8;
const WORDS_PER_PAGE: usize = 4096 / 8;
/// 4 MiB of state: 64 chunks.
const WORDS: usize = 64 * WORDS_PER_CHUNK;

fn options() -> RepoOptions {
    RepoOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        round: Duration::from_secs(20),
        retry: Duration::from_millis(50),
        decision: Duration::from_secs(30),
    }
}

fn init() -> S {
    S {
        data: DirtyVec::from((0..WORDS as u64).collect::<Vec<_>>()),
        n: 0,
    }
}

fn copy(s: &S) -> S {
    S {
        data: DirtyVec::from(s.data.to_vec()),
        n: s.n,
    }
}

fn open(repo: &Path) -> Job {
    Job::builder()
        .repo(repo)
        .keep(20)
        .repo_options(options())
        .timeouts(timeouts())
        .never_checkpoint()
        .open()
        .unwrap()
}

/// Writes one word in page `page`; records its chunk as touched.
fn touch(s: &mut S, page: usize, value: u64, touched: &mut BTreeSet<usize>) {
    let i = page * WORDS_PER_PAGE + 3;
    s.data.set(i, value);
    touched.insert(i / WORDS_PER_CHUNK);
}

fn assert_checkpoints_hold(repo: &Path, expected: &[(CheckpointId, S)]) {
    let reader = RepoReader::open(repo).unwrap();
    for (id, want) in expected {
        let objects = reader.load_part(*id, lazarus::Rank(0)).unwrap();
        let mut got = S {
            data: DirtyVec::from(vec![]),
            n: 0,
        };
        lazarus::state::restore(&mut got, objects).unwrap();
        assert!(
            got == *want,
            "checkpoint {id} does not hold the values at its call"
        );
    }
}

#[test]
fn an_incremental_capture_copies_only_the_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let full = (WORDS * 8) as u64;
    let mut expected = Vec::new();
    let mut job = open(&repo);
    let mut s = job.restore_or_init(init).unwrap();
    // The first capture has no committed predecessor: it copies everything.
    let id = job.checkpoint_now(&s).unwrap();
    expected.push((id, copy(&s)));
    let r = *job.flush().unwrap().unwrap();
    assert_eq!(r.captured_bytes, full, "first capture is full: {r}");
    let mut touched = BTreeSet::new();
    for round in 1..=8u64 {
        // The step: a few pages in a couple of chunks.
        touch(&mut s, (round as usize * 37) % 1024, round, &mut touched);
        touch(
            &mut s,
            (round as usize * 37 + 1) % 1024,
            round,
            &mut touched,
        );
        touch(&mut s, (round as usize * 211) % 1024, round, &mut touched);
        s.n = round;
        let id = job.checkpoint_now(&s).unwrap();
        expected.push((id, copy(&s)));
        let dirty = std::mem::take(&mut touched);
        // The program goes on at once: these pages belong to the next checkpoint, not
        // to this one, whether or not its flush has read its staging copy yet.
        touch(
            &mut s,
            (round as usize * 101) % 1024,
            u64::MAX - round,
            &mut touched,
        );
        touch(
            &mut s,
            (round as usize * 37) % 1024,
            u64::MAX - round,
            &mut touched,
        );
        s.n = 1_000_000 + round;
        let r = *job.flush().unwrap().unwrap();
        assert_eq!(r.checkpoint, id);
        assert_eq!(
            r.captured_bytes,
            (dirty.len() * CHUNK) as u64,
            "round {round}: the capture copies the {} changed chunks, not the {full}-byte state: {r}",
            dirty.len()
        );
        assert!(r.captured_bytes * 10 <= full, "{r}");
        assert!(
            r.logical_bytes > full,
            "the part is still the whole state: {r}"
        );
    }
    drop(job);
    assert_checkpoints_hold(&repo, &expected);
    // A restart restores the newest, then its first capture is a full one (no cache of
    // the previous part in this Job), the next incremental again.
    let mut job = open(&repo);
    let mut got = job.restore_or_init(init).unwrap();
    assert!(
        got == expected.last().unwrap().1,
        "restore gives the last call's values"
    );
    got.data.set(5, 5);
    job.checkpoint_now(&got).unwrap();
    let r = *job.flush().unwrap().unwrap();
    assert_eq!(
        r.captured_bytes, full,
        "after a restart the capture is full: {r}"
    );
    got.data.set(7, 7);
    let id = job.checkpoint_now(&got).unwrap();
    let r = *job.flush().unwrap().unwrap();
    assert_eq!(r.captured_bytes, CHUNK as u64, "{r}");
    drop(job);
    assert_checkpoints_hold(&repo, &[(id, copy(&got))]);
}

#[test]
fn after_a_failed_flush_the_next_capture_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let full = (WORDS * 8) as u64;
    let mut job = open(&repo);
    let mut s = job.restore_or_init(init).unwrap();
    job.checkpoint_now(&s).unwrap();
    job.flush().unwrap();
    // A full disk: the next (incremental) part cannot be written.
    job.set_write_budget(0).unwrap();
    s.data.set(1, 1);
    job.checkpoint_now(&s).unwrap();
    assert!(job.flush().is_err(), "the background write fails");
    job.set_write_budget(u64::MAX).unwrap();
    // The previous flush failed: no part of it to reuse; the capture copies everything.
    s.data.set(2, 2);
    let id = job.checkpoint_now(&s).unwrap();
    let r = *job.flush().unwrap().unwrap();
    assert_eq!(r.checkpoint, id);
    assert_eq!(r.captured_bytes, full, "{r}");
    // And the one after is incremental again.
    s.data.set(WORDS - 1, 3);
    let id2 = job.checkpoint_now(&s).unwrap();
    let r = *job.flush().unwrap().unwrap();
    assert_eq!(r.captured_bytes, CHUNK as u64, "{r}");
    drop(job);
    assert_checkpoints_hold(&repo, &[(id2, copy(&s))]);
}
