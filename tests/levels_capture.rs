//! The capture of an asynchronous checkpoint of a Job with fast levels (issues #15 and
//! #16, docs/LEVELS.md "Asynchronous level rounds"): when L4 is not due, a `DirtyVec`
//! whose previous L1 checkpoint committed is captured incrementally (only the changed
//! chunks are copied, the L1 part names the others by digest), and a state over the
//! staging budget has its tails written into L1 inside the call. Every L1 checkpoint
//! still holds exactly the values at its call, although the program writes right after
//! each call. When L4 is due, or after a failed L1 write, the capture is a whole one; a
//! state over the budget with L4 due has its tails written into L1 and into the durable
//! repository inside the call.

use lazarus::coord::Timeouts;
use lazarus::levels::SEQ_KEY;
use lazarus::store::{RepoOptions, RepoReader};
use lazarus::{Checkpoint, DirtyVec, Job, Levels};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Checkpoint, Debug, PartialEq)]
struct S {
    data: DirtyVec<u64>,
    n: u64,
}

/// 64 KiB chunks of 16 pages of 4 KiB.
const CHUNK: usize = 64 << 10;
const WORDS_PER_CHUNK: usize = CHUNK / 8;
const WORDS_PER_PAGE: usize = 4096 / 8;
/// 4 MiB of state: 64 chunks.
const WORDS: usize = 64 * WORDS_PER_CHUNK;
const FULL: u64 = (WORDS * 8) as u64;

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

/// A one-rank Job with L1 every checkpoint and L4 every `l4` (0: never).
fn open(dir: &Path, l4: u32, budget: Option<u64>) -> Job {
    let mut b = Job::builder()
        .repo(dir.join("repo"))
        .keep(40)
        .repo_options(RepoOptions {
            chunk_size: CHUNK as u32,
            ..Default::default()
        })
        .timeouts(Timeouts {
            round: Duration::from_secs(20),
            retry: Duration::from_millis(50),
            decision: Duration::from_secs(30),
        })
        .levels(Levels::new().l1(1).l4(l4).dir(dir.join("node")))
        .never_checkpoint();
    if let Some(bytes) = budget {
        b = b.staging_budget(bytes);
    }
    b.open().unwrap()
}

/// Writes one word in page `page`; records its chunk as touched.
fn touch(s: &mut S, page: usize, value: u64, touched: &mut BTreeSet<usize>) {
    let i = page * WORDS_PER_PAGE + 3;
    s.data.set(i, value);
    touched.insert(i / WORDS_PER_CHUNK);
}

/// The rank's L1 repository (one host directory under `node`).
fn l1_repo(dir: &Path) -> PathBuf {
    let hosts: Vec<PathBuf> = std::fs::read_dir(dir.join("node"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    hosts[0].join("rank-0")
}

/// Every expected checkpoint (by job-wide number) is in L1 with the values at its call.
fn assert_l1_holds(dir: &Path, expected: &[(u64, S)]) {
    let reader = RepoReader::open(&l1_repo(dir)).unwrap();
    let by_seq: BTreeMap<u64, _> = reader
        .committed()
        .unwrap()
        .into_iter()
        .filter_map(|c| Some((c.app.get(SEQ_KEY)?.parse::<u64>().ok()?, c.id)))
        .collect();
    for (seq, want) in expected {
        let id = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("checkpoint {seq} is not in L1: {by_seq:?}"));
        let objects = reader.load_part(*id, lazarus::Rank(0)).unwrap();
        let mut got = S {
            data: DirtyVec::from(vec![]),
            n: 0,
        };
        lazarus::state::restore(&mut got, objects).unwrap();
        assert!(
            got == *want,
            "checkpoint {seq} (L1 {id}) does not hold the values at its call"
        );
    }
}

/// One checkpoint of `s` after a step touching a few pages, then the program writes at
/// once (pages that belong to the next checkpoint). Returns the checkpoint's number,
/// the values at the call, the chunks the step touched and the flush's report.
fn step(
    job: &mut Job,
    s: &mut S,
    round: u64,
    touched: &mut BTreeSet<usize>,
) -> (u64, S, BTreeSet<usize>, lazarus::CheckpointReport) {
    let r = round as usize;
    touch(s, (r * 37) % 1024, round, touched);
    touch(s, (r * 37 + 1) % 1024, round, touched);
    touch(s, (r * 211) % 1024, round, touched);
    s.n = round;
    let id = job.checkpoint_now(s).unwrap();
    let at_call = copy(s);
    let dirty = std::mem::take(touched);
    touch(s, (r * 101) % 1024, u64::MAX - round, touched);
    touch(s, (r * 37) % 1024, u64::MAX - round, touched);
    s.n = 1_000_000 + round;
    let report = *job.flush().unwrap().unwrap();
    assert_eq!(report.checkpoint, id);
    (id.0, at_call, dirty, report)
}

#[test]
fn an_incremental_capture_with_fast_levels_copies_only_the_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = open(dir.path(), 0, None);
    let mut s = job.restore_or_init(init).unwrap();
    let mut expected = Vec::new();
    let id = job.checkpoint_now(&s).unwrap();
    expected.push((id.0, copy(&s)));
    let r = *job.flush().unwrap().unwrap();
    assert_eq!(r.captured_bytes, FULL, "the first capture is whole: {r}");
    let mut touched = BTreeSet::new();
    for round in 1..=8 {
        let (seq, at_call, dirty, r) = step(&mut job, &mut s, round, &mut touched);
        assert_eq!(
            r.captured_bytes,
            (dirty.len() * CHUNK) as u64,
            "round {round}: the capture copies the {} changed chunks: {r}",
            dirty.len()
        );
        assert!(r.logical_bytes >= FULL, "the part is the whole state: {r}");
        expected.push((seq, at_call));
    }
    drop(job);
    assert_l1_holds(dir.path(), &expected);
}

#[test]
fn a_state_over_the_staging_budget_writes_its_tails_into_l1_inside_the_call() {
    let dir = tempfile::tempdir().unwrap();
    // A quarter of the state; the state changes wholly every checkpoint (no increment).
    let budget = FULL / 4;
    let mut job = open(dir.path(), 0, Some(budget));
    let mut s = job.restore_or_init(init).unwrap();
    let mut expected = Vec::new();
    for round in 1..=4u64 {
        for i in 0..WORDS {
            s.data.set(i, round * 1_000_000 + i as u64);
        }
        s.n = round;
        let id = job.checkpoint_now(&s).unwrap();
        expected.push((id.0, copy(&s)));
        // Written at once, everywhere: none of it may reach the checkpoint.
        for i in 0..WORDS {
            s.data.set(i, u64::MAX - i as u64);
        }
        let r = *job.flush().unwrap().unwrap();
        assert!(
            r.captured_bytes <= budget,
            "round {round}: staged {} bytes over the {budget}-byte budget: {r}",
            r.captured_bytes
        );
        assert!(r.logical_bytes >= FULL, "the part is the whole state: {r}");
    }
    drop(job);
    assert_l1_holds(dir.path(), &expected);
}

#[test]
fn with_l4_due_or_after_a_failed_l1_write_the_capture_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    // L4 on every third checkpoint (numbers 3, 6, ...).
    let mut job = open(dir.path(), 3, None);
    let mut s = job.restore_or_init(init).unwrap();
    let mut expected = Vec::new();
    let id = job.checkpoint_now(&s).unwrap();
    expected.push((id.0, copy(&s)));
    job.flush().unwrap();
    let mut touched = BTreeSet::new();
    for round in 1..=5 {
        let (seq, at_call, dirty, r) = step(&mut job, &mut s, round, &mut touched);
        // L4 is due at numbers 3 and 6 (rounds 2 and 5): a whole capture. Their id is
        // the durable one, not the number, so they are not looked up in L1 below.
        let durable = (round + 1) % 3 == 0;
        let want = if durable {
            FULL
        } else {
            (dirty.len() * CHUNK) as u64
        };
        assert_eq!(r.captured_bytes, want, "round {round}: {r}");
        if !durable {
            expected.push((seq, at_call));
        }
    }
    // A full node-local disk: the next L1 write fails in the background, is reported,
    // and the capture after it is whole (its base is gone), the next incremental again.
    job.set_level_write_budget(0).unwrap();
    touch(&mut s, 9, 9, &mut touched);
    job.checkpoint_now(&s).unwrap();
    assert!(job.flush().is_err(), "the background L1 write fails");
    job.set_level_write_budget(u64::MAX).unwrap();
    // Number 8: whole (no base); 9: whole (L4 due); 10: incremental again.
    let (seq, at_call, _, r) = step(&mut job, &mut s, 20, &mut touched);
    assert_eq!(r.captured_bytes, FULL, "after a failed L1 write: {r}");
    expected.push((seq, at_call));
    let (_, _, _, r) = step(&mut job, &mut s, 21, &mut touched);
    assert_eq!(r.captured_bytes, FULL, "L4 due: {r}");
    let (seq, at_call, dirty, r) = step(&mut job, &mut s, 22, &mut touched);
    assert_eq!(r.captured_bytes, (dirty.len() * CHUNK) as u64, "{r}");
    expected.push((seq, at_call));
    drop(job);
    assert_l1_holds(dir.path(), &expected);
}

/// The durable checkpoints by id, with the job-wide number each carries.
fn durable_seqs(dir: &Path) -> BTreeMap<u64, u64> {
    RepoReader::open(&dir.join("repo"))
        .unwrap()
        .committed()
        .unwrap()
        .into_iter()
        .filter_map(|c| Some((c.id.0, c.app.get(SEQ_KEY)?.parse::<u64>().ok()?)))
        .collect()
}

#[test]
fn with_l4_due_a_state_over_the_budget_writes_its_tails_into_l1_and_l4_inside_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let budget = FULL / 4;
    // L4 on every second checkpoint.
    let mut job = open(dir.path(), 2, Some(budget));
    let mut s = job.restore_or_init(init).unwrap();
    let mut in_l1 = Vec::new();
    let mut in_l4 = Vec::new();
    for round in 1..=5u64 {
        for i in 0..WORDS {
            s.data.set(i, round * 1_000_000 + i as u64);
        }
        s.n = round;
        let id = job.checkpoint_now(&s).unwrap();
        let at_call = copy(&s);
        for i in 0..WORDS {
            s.data.set(i, u64::MAX - i as u64);
        }
        let r = *job
            .flush()
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: written inside the call, not captured"));
        assert!(
            r.captured_bytes <= budget && r.captured_bytes > 0,
            "round {round}: staged {} bytes, budget {budget}: {r}",
            r.captured_bytes
        );
        assert!(r.logical_bytes >= FULL, "the part is the whole state: {r}");
        let durable = durable_seqs(dir.path());
        match durable.get(&id.0) {
            Some(seq) if round % 2 == 0 => {
                in_l4.push((id.0, copy(&at_call)));
                in_l1.push((*seq, at_call));
            }
            _ => {
                assert!(
                    round % 2 == 1,
                    "round {round}: L4 due, not in the repository"
                );
                in_l1.push((id.0, at_call));
            }
        }
    }
    drop(job);
    assert_eq!(in_l4.len(), 2);
    assert_l1_holds(dir.path(), &in_l1);
    let reader = RepoReader::open(&dir.path().join("repo")).unwrap();
    for (id, want) in in_l4 {
        let objects = reader
            .load_part(lazarus::CheckpointId(id), lazarus::Rank(0))
            .unwrap();
        let mut got = S {
            data: DirtyVec::from(vec![]),
            n: 0,
        };
        lazarus::state::restore(&mut got, objects).unwrap();
        assert!(
            got == want,
            "durable checkpoint {id} does not hold the values at its call"
        );
    }
}

/// With L4 due and the state over the budget, the tails go to both repositories inside
/// the call; a part that cannot take them fails alone, as everywhere else (the level
/// round and the durable round of one checkpoint succeed or fail apart): a full durable
/// disk fails the durable round in the background (reported by the next call) while L1
/// gets the checkpoint, a full node-local disk fails the level round while the durable
/// repository gets it, and only both full fail the call.
#[test]
fn with_l4_due_a_part_whose_tails_cannot_be_written_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let budget = FULL / 4;
    // L4 on every second checkpoint (numbers 2, 4, ...).
    let mut job = open(dir.path(), 2, Some(budget));
    let mut s = job.restore_or_init(init).unwrap();
    let mut in_l1 = Vec::new();
    for round in 1..=12u64 {
        for i in 0..WORDS {
            s.data.set(i, round * 1_000_000 + i as u64);
        }
        s.n = round;
        let at_call = copy(&s);
        match round {
            2 => job.set_write_budget(0).unwrap(),
            6 => job.set_level_write_budget(0).unwrap(),
            10 => {
                job.set_write_budget(0).unwrap();
                job.set_level_write_budget(0).unwrap();
            }
            _ => {}
        }
        let called = job.checkpoint_now(&s);
        for i in 0..WORDS {
            s.data.set(i, u64::MAX - i as u64);
        }
        if round == 10 {
            let e = called.expect_err("no part can take the tails: the call fails");
            assert!(matches!(e, lazarus::JobError::Level { .. }), "{e}");
        } else {
            called.unwrap_or_else(|e| panic!("round {round}: the other part goes on: {e}"));
            let flushed = job.flush();
            if round == 2 {
                let e = flushed.expect_err("the durable round fails in the background");
                assert!(matches!(e, lazarus::JobError::Flush { .. }), "{e}");
            } else {
                let r = *flushed.unwrap().unwrap();
                assert!(r.captured_bytes <= budget, "round {round}: {r}");
            }
        }
        job.set_write_budget(u64::MAX).unwrap();
        job.set_level_write_budget(u64::MAX).unwrap();
        if round != 6 && round != 10 {
            in_l1.push((round, at_call));
        }
    }
    let seqs: BTreeSet<u64> = durable_seqs(dir.path()).values().copied().collect();
    assert_eq!(
        seqs,
        BTreeSet::from([4, 6, 8, 12]),
        "L4-due checkpoints whose durable part took its tails"
    );
    drop(job);
    assert_l1_holds(dir.path(), &in_l1);
}
