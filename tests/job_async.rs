//! Asynchronous checkpoints of the Job API (issue #16, docs/ASYNC.md): what commits is the
//! state at the call whatever the program writes afterwards (snapshot isolation, in the
//! spirit of pytorch/pytorch#144657), `DirtyVec` pages written during a flush stay dirty
//! for the next checkpoint, a background write error is reported by the next call and the
//! job goes on, and COMMIT records the stall and the background flush separately.

use lazarus::coord::meta::RecordedCost;
use lazarus::coord::Timeouts;
use lazarus::net::{loopback_comms, NetConfig};
use lazarus::store::RepoReader;
use lazarus::{Checkpoint, CheckpointId, Comm, DirtyVec, Job, JobError};
use std::path::Path;
use std::time::Duration;

#[derive(Checkpoint, Debug, PartialEq)]
struct S {
    rank: u32,
    xs: Vec<f64>,
    tracked: DirtyVec<u64>,
    n: u64,
}

fn state(rank: u32, len: usize) -> S {
    S {
        rank,
        xs: (0..len).map(|i| i as f64 + f64::from(rank)).collect(),
        tracked: DirtyVec::from((0..len as u64).collect::<Vec<_>>()),
        n: 0,
    }
}

/// Writes every element of every field: the "program goes on" right after the call.
fn scribble(s: &mut S, round: u64) {
    s.n = s.n.wrapping_add(1_000_000);
    s.xs.iter_mut().for_each(|x| *x = -(round as f64) - 0.5);
    if let Some(t) = s.tracked.slice_mut(..) {
        t.iter_mut().for_each(|x| *x = u64::MAX - round);
    }
}

/// A value equal to `s` (DirtyVec's equality is its contents).
fn copy(s: &S) -> S {
    S {
        rank: s.rank,
        xs: s.xs.clone(),
        tracked: DirtyVec::from(s.tracked.to_vec()),
        n: s.n,
    }
}

fn committed(repo: &Path) -> Vec<(CheckpointId, u64, RecordedCost)> {
    RepoReader::open(repo)
        .unwrap()
        .committed()
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.step, RecordedCost::from_app(&c.app)))
        .collect()
}

fn timeouts() -> Timeouts {
    Timeouts {
        round: Duration::from_secs(20),
        retry: Duration::from_millis(50),
        decision: Duration::from_secs(30),
    }
}

fn restored(repo: &Path, comm: Option<Comm>, rank: u32, len: usize) -> S {
    let mut b = Job::builder().repo(repo).sync_writes().timeouts(timeouts());
    if let Some(c) = comm {
        b = b.comm(c);
    }
    let mut job = b.open().unwrap();
    job.restore_or_init(|| state(rank, len)).unwrap()
}

#[test]
fn snapshot_isolation_mutating_right_after_checkpoint_returns() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // 2 MiB per array: large enough that a flush is still running when the program
    // scribbles over the arrays.
    let len = 1 << 18;
    let mut expected = Vec::new();
    {
        let mut job = Job::builder().repo(&repo).keep(10).open().unwrap();
        let mut s = job.restore_or_init(|| state(0, len)).unwrap();
        for round in 0..4u64 {
            s.n = round;
            if let Some(v) = s.xs.get_mut(round as usize) {
                *v = 42.0;
            }
            let id = job.checkpoint_now(&s).unwrap();
            expected.push((id, copy(&s)));
            scribble(&mut s, round);
        }
        let last = *job.flush().unwrap().expect("a committed checkpoint");
        assert_eq!(last.checkpoint, expected[3].0);
        assert!(last.flush.is_some(), "asynchronous by default: {last}");
    }
    let ids: Vec<_> = committed(&repo).iter().map(|c| c.0).collect();
    assert_eq!(ids, expected.iter().map(|e| e.0).collect::<Vec<_>>());
    // Each checkpoint holds the values at its call, not the scribbles after it.
    assert_checkpoints_hold(&repo, &expected);
    assert_eq!(restored(&repo, None, 0, len), expected[3].1);
}

#[test]
fn snapshot_isolation_on_four_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let len = 1 << 16;
    let comms = loopback_comms(4, NetConfig::default()).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, comm)| {
            let repo = repo.clone();
            std::thread::spawn(move || {
                let r = r as u32;
                let mut job = Job::builder()
                    .repo(&repo)
                    .comm(comm)
                    .every_steps(2)
                    .timeouts(timeouts())
                    .open()
                    .unwrap();
                let mut s = job.restore_or_init(|| state(r, len)).unwrap();
                let mut at = std::collections::BTreeMap::new();
                while job.step() < 7 {
                    at.insert(job.step(), copy(&s));
                    let step = job.checkpoint(&s).unwrap();
                    // The step's work: every element changes, right after the call.
                    scribble(&mut s, step);
                    s.n = step;
                }
                job.flush().unwrap();
                at
            })
        })
        .collect();
    let at: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let newest = committed(&repo).last().map(|c| c.1).unwrap();
    assert!(
        newest >= 4,
        "checkpoints every 2 steps up to step 6: newest {newest}"
    );
    let comms = loopback_comms(4, NetConfig::default()).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, comm)| {
            let repo = repo.clone();
            std::thread::spawn(move || restored(&repo, Some(comm), r as u32, len))
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        let got = h.join().unwrap();
        assert_eq!(Some(&got), at[r].get(&newest), "rank {r}, step {newest}");
    }
}

#[test]
fn dirty_pages_written_during_a_flush_stay_dirty_for_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let len = 1 << 17; // 1 MiB of u64
    let mut job = Job::builder().repo(&repo).open().unwrap();
    let mut s = job.restore_or_init(|| state(0, len)).unwrap();
    job.checkpoint_now(&s).unwrap();
    job.flush().unwrap();
    // Checkpoint A, then one page written while A is in flight.
    let a = job.checkpoint_now(&s).unwrap();
    s.tracked.set(5000, 7);
    job.flush().unwrap();
    // Checkpoint B: the page must be seen dirty (written after A's capture).
    let b = job.checkpoint_now(&s).unwrap();
    let report = *job.flush().unwrap().unwrap();
    assert_eq!(report.checkpoint, b);
    assert!(
        report.written_bytes > 0,
        "B wrote the changed page: {report}"
    );
    drop(job);
    let reader = RepoReader::open(&repo).unwrap();
    let mut got_a = state(0, 1);
    lazarus::state::restore(&mut got_a, reader.load_part(a, lazarus::Rank(0)).unwrap()).unwrap();
    assert_eq!(got_a.tracked[5000], 5000, "A holds the value at its call");
    let got = restored(&repo, None, 0, len);
    assert_eq!(
        got.tracked[5000], 7,
        "B holds the page written during A's flush"
    );
    assert_eq!(got, s);
}

#[test]
fn background_write_error_is_reported_by_the_next_call_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let len = 1 << 14;
    let mut job = Job::builder().repo(&repo).every_steps(1000).open().unwrap();
    let mut s = job.restore_or_init(|| state(0, len)).unwrap();
    job.checkpoint_now(&s).unwrap(); // step 0: checkpoint 1
    job.flush().unwrap();
    let first = copy(&s);
    // A full disk: the next checkpoint's part cannot be written.
    job.set_write_budget(0).unwrap();
    job.checkpoint(&s).unwrap(); // step 0: just saved
    scribble(&mut s, 1);
    job.checkpoint(&s).unwrap(); // step 1: not due
    scribble(&mut s, 2);
    // At step 2: the capture succeeds, the background write fails.
    let captured = job.checkpoint_now(&s);
    assert_eq!(
        captured.unwrap(),
        CheckpointId(2),
        "the capture itself succeeds"
    );
    // The failure surfaces at a following `checkpoint()` call (each one polls).
    let e = loop {
        match job.checkpoint(&s) {
            Err(e) => break e,
            Ok(step) => assert!(step < 50, "the flush error was never reported"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match &e {
        JobError::Flush {
            checkpoint, step, ..
        } => {
            assert_eq!(*step, 2, "{e}");
            assert_eq!(checkpoint.0, 2, "{e}");
        }
        other => panic!("expected a Flush error, got {other:?}"),
    }
    assert!(e.is_retryable(), "a full disk may pass: {e}");
    assert!(
        e.to_string().contains(&CheckpointId(2).to_string()),
        "names the checkpoint: {e}"
    );
    assert!(job.flush().is_ok(), "reported once, not again");
    // The disk has room again: the job goes on and the next checkpoint commits.
    job.set_write_budget(u64::MAX).unwrap();
    let id = job.checkpoint_now(&s).unwrap();
    assert_eq!(job.flush().unwrap().unwrap().checkpoint, id);
    drop(job);
    let ids: Vec<_> = committed(&repo).iter().map(|c| c.0 .0).collect();
    assert_eq!(ids, vec![1, id.0], "checkpoint 2 never committed");
    let reader = RepoReader::open(&repo).unwrap();
    let mut got = state(0, 1);
    lazarus::state::restore(
        &mut got,
        reader.load_part(CheckpointId(1), lazarus::Rank(0)).unwrap(),
    )
    .unwrap();
    assert_eq!(got, first, "the previous checkpoint is intact");
    assert_eq!(restored(&repo, None, 0, len), s);
}

#[test]
fn error_at_finish_is_returned_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut job = Job::builder().repo(&repo).open().unwrap();
    let s = job.restore_or_init(|| state(0, 1024)).unwrap();
    job.set_write_budget(0).unwrap();
    let id = job.checkpoint_now(&s).unwrap();
    // Waits for the flush of `id` and returns its error: that checkpoint, at step 0.
    let e = job.set_write_budget(u64::MAX).unwrap_err();
    match &e {
        JobError::Flush {
            checkpoint, step, ..
        } => assert_eq!((*checkpoint, *step), (id, 0), "{e}"),
        other => panic!("expected the Flush error of checkpoint {id}, got {other:?}"),
    }
    assert!(
        e.to_string().contains(&id.to_string()),
        "names the checkpoint: {e}"
    );
    // finish writes synchronously and succeeds; the earlier error was reported above.
    job.finish(&s).unwrap();
    assert!(id.0 >= 1);
    drop(job);
    // And finish reports a flush error it finds.
    let mut job = Job::builder().repo(&repo).open().unwrap();
    let mut s = job.restore_or_init(|| state(0, 1024)).unwrap();
    s.n = 77;
    job.set_write_budget(0).unwrap();
    job.checkpoint_now(&s).unwrap();
    let e = job.finish(&s).unwrap_err();
    assert!(matches!(e, JobError::Flush { .. }), "{e:?}");
}

#[test]
fn commit_records_stall_and_background_flush_separately() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut job = Job::builder().repo(&repo).open().unwrap();
    let s = job.restore_or_init(|| state(0, 1 << 16)).unwrap();
    job.checkpoint_now(&s).unwrap();
    let asynchronous = *job.flush().unwrap().unwrap();
    drop(job);
    let mut job = Job::builder().repo(&repo).sync_writes().open().unwrap();
    let s = job.restore_or_init(|| state(0, 1 << 16)).unwrap();
    job.checkpoint_now(&s).unwrap();
    let synchronous = *job.last_checkpoint().unwrap();
    drop(job);
    assert!(asynchronous.flush.is_some() && synchronous.flush.is_none());
    assert!(asynchronous.to_string().contains("background flush"));
    let c = committed(&repo);
    assert_eq!(c.len(), 2);
    let (a, b) = (c[0].2, c[1].2);
    assert!(
        a.stall.is_some() && a.write.is_some() && a.flush.is_some(),
        "{a:?}"
    );
    assert!(
        b.stall.is_some() && b.write.is_some() && b.flush.is_none(),
        "{b:?}"
    );
}

/// Small chunks, so a 64 KiB budget cuts an array in the middle.
fn small_chunks() -> lazarus::store::RepoOptions {
    lazarus::store::RepoOptions {
        chunk_size: lazarus::store::MIN_CHUNK_SIZE,
        ..Default::default()
    }
}

#[test]
fn a_state_over_the_staging_budget_is_captured_in_pieces() {
    // 128 KiB of xs and 128 KiB of DirtyVec, a 72 KiB budget: xs is cut after 72 KiB
    // (staged), its tail and the whole DirtyVec are written inside the call, the rest of
    // the part, the vote and COMMIT in the background.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let len = 1 << 14;
    let mut expected = Vec::new();
    {
        let mut job = Job::builder()
            .repo(&repo)
            .repo_options(small_chunks())
            .staging_budget(72 << 10)
            .keep(10)
            .open()
            .unwrap();
        let mut s = job.restore_or_init(|| state(0, len)).unwrap();
        for round in 0..3u64 {
            s.n = round;
            if let Some(t) = s.tracked.slice_mut(100..101) {
                t[0] = round;
            }
            let id = job.checkpoint_now(&s).unwrap();
            expected.push((id, copy(&s)));
            scribble(&mut s, round);
        }
        let r = *job.flush().unwrap().unwrap();
        assert_eq!(r.checkpoint, expected[2].0);
        // Not a synchronous checkpoint: the staged heads were flushed in the background.
        assert!(r.flush.is_some(), "{r}");
    }
    assert_checkpoints_hold(&repo, &expected);
    assert_eq!(restored(&repo, None, 0, len), expected[2].1);
}

#[test]
fn pieces_on_three_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let len = 1 << 14;
    let comms = loopback_comms(3, NetConfig::default()).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, comm)| {
            let repo = repo.clone();
            std::thread::spawn(move || {
                let r = r as u32;
                let mut job = Job::builder()
                    .repo(&repo)
                    .comm(comm)
                    .repo_options(small_chunks())
                    .staging_budget(40 << 10)
                    .every_steps(2)
                    .timeouts(timeouts())
                    .open()
                    .unwrap();
                let mut s = job.restore_or_init(|| state(r, len)).unwrap();
                let mut at = std::collections::BTreeMap::new();
                while job.step() < 7 {
                    at.insert(job.step(), copy(&s));
                    let step = job.checkpoint(&s).unwrap();
                    scribble(&mut s, step);
                    s.n = step;
                }
                let r = *job.flush().unwrap().unwrap();
                assert!(r.flush.is_some(), "{r}");
                at
            })
        })
        .collect();
    let at: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let newest = committed(&repo).last().map(|c| c.1).unwrap();
    assert_eq!(newest, 6);
    let comms = loopback_comms(3, NetConfig::default()).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, comm)| {
            let repo = repo.clone();
            std::thread::spawn(move || restored(&repo, Some(comm), r as u32, len))
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        let got = h.join().unwrap();
        assert_eq!(Some(&got), at[r].get(&newest), "rank {r}, step {newest}");
    }
}

#[test]
fn a_rank_that_cannot_write_in_the_background_fails_the_round_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let elsewhere = dir.path().join("not-the-repo");
    let comms = loopback_comms(3, NetConfig::default()).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, comm)| {
            // Rank 2 points at a directory that is not the repository: its write fails.
            let path = if r == 2 {
                elsewhere.clone()
            } else {
                repo.clone()
            };
            std::thread::spawn(move || {
                let mut job = Job::builder()
                    .repo(&path)
                    .comm(comm)
                    .never_checkpoint()
                    .timeouts(timeouts())
                    .open()
                    .unwrap();
                let s = job.restore_or_init(|| state(r as u32, 4096)).unwrap();
                let id = job.checkpoint_now(&s).expect("the capture succeeds");
                let e = job.flush().unwrap_err();
                // Reported once; the job goes on and takes part in the next round.
                assert!(job.flush().is_ok());
                let next = job.checkpoint_now(&s).expect("the next capture");
                let again = job.flush().unwrap_err();
                (id, next, e.is_retryable(), e.to_string(), again.to_string())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (r, (id, next, retryable, msg, again)) in results.iter().enumerate() {
        assert_eq!(*id, results[0].0, "rank {r}: one round, one id");
        assert!(next > id, "rank {r}");
        assert!(*retryable, "rank {r}: {msg}");
        assert!(
            msg.contains(&id.to_string()) && msg.contains("aborted"),
            "rank {r}: {msg}"
        );
        assert!(again.contains(&next.to_string()), "rank {r}: {again}");
    }
    assert!(
        results[0].3.contains("rank 2"),
        "rank 0 names the rank: {}",
        results[0].3
    );
    assert!(committed(&repo).is_empty(), "nothing committed");
}

/// Records what the Job tells its policy.
#[derive(Clone, Default)]
struct Spy(std::sync::Arc<std::sync::Mutex<(Vec<Duration>, Vec<Duration>)>>);

impl lazarus::policy::Policy for Spy {
    fn should_checkpoint(&mut self, _at: lazarus::policy::Opportunity) -> bool {
        true
    }
    fn checkpoint_taken(&mut self, _at: lazarus::policy::Opportunity, cost: Duration) {
        self.0.lock().unwrap().0.push(cost);
    }
    fn flush_completed(&mut self, flush: Duration) {
        self.0.lock().unwrap().1.push(flush);
    }
}

#[test]
fn the_policy_is_told_the_stall_as_cost_and_the_background_flush_time() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let spy = Spy::default();
    let mut job = Job::builder()
        .repo(&repo)
        .policy(spy.clone())
        .open()
        .unwrap();
    let s = job.restore_or_init(|| state(0, 1 << 16)).unwrap();
    for _ in 0..3 {
        job.checkpoint(&s).unwrap();
    }
    let last = *job.flush().unwrap().unwrap();
    let (costs, flushes) = spy.0.lock().unwrap().clone();
    assert_eq!(costs.len(), 3, "{costs:?}");
    // Every committed flush, with the time COMMIT records; the last one too.
    assert_eq!(flushes.len(), 3, "{flushes:?}");
    assert_eq!(Some(flushes[2]), last.flush);
    assert_eq!(costs[2], last.stall);
    // A synchronous checkpoint has no background part.
    drop(job);
    let mut job = Job::builder()
        .repo(&repo)
        .sync_writes()
        .policy(spy.clone())
        .open()
        .unwrap();
    let s = job.restore_or_init(|| state(0, 1 << 16)).unwrap();
    job.checkpoint_now(&s).unwrap();
    assert_eq!(spy.0.lock().unwrap().1.len(), 3);
    assert_eq!(spy.0.lock().unwrap().0.len(), 4);
}

/// Records the clock reading and the cost the Job reports with each checkpoint.
#[derive(Clone, Default)]
struct ClockSpy(std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, Duration)>>>);

impl lazarus::policy::Policy for ClockSpy {
    fn should_checkpoint(&mut self, _at: lazarus::policy::Opportunity) -> bool {
        true
    }
    fn checkpoint_taken(&mut self, at: lazarus::policy::Opportunity, cost: Duration) {
        self.0.lock().unwrap().push((at.now, cost));
    }
}

/// The policies count their interval from the `now` given to `checkpoint_taken`, which
/// docs/POLICY.md defines as the end of the checkpoint. The Job passed the instant the
/// checkpoint *started*, so the checkpoint's own cost counted as work done: a checkpoint
/// slower than an `every:` interval (or the adaptive τ) made the job checkpoint again at
/// the very next step, forever.
#[test]
fn the_policy_is_told_the_end_of_the_checkpoint_not_its_start() {
    for sync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let spy = ClockSpy::default();
        let mut b = Job::builder()
            .repo(dir.path().join("repo"))
            .policy(spy.clone());
        if sync {
            b = b.sync_writes();
        }
        let mut job = b.open().unwrap();
        let s = job.restore_or_init(|| state(0, 1 << 20)).unwrap();
        for i in 0..3 {
            let before = std::time::Instant::now();
            job.checkpoint(&s).unwrap();
            let after = std::time::Instant::now();
            let seen = spy.0.lock().unwrap().clone();
            assert_eq!(seen.len(), i + 1, "sync {sync}: {seen:?}");
            let (now, cost) = seen[i];
            assert!(
                now >= before + cost && now <= after,
                "sync {sync}, checkpoint {i}: told now = before + {:?} for a cost of {cost:?}",
                now - before
            );
        }
        job.flush().unwrap();
    }
}

/// Each checkpoint `id` of `repo` holds rank 0's state `want` (the values at its call).
fn assert_checkpoints_hold(repo: &Path, expected: &[(CheckpointId, S)]) {
    let reader = RepoReader::open(repo).unwrap();
    for (id, want) in expected {
        let objects = reader.load_part(*id, lazarus::Rank(0)).unwrap();
        let mut got = state(9, 1);
        lazarus::state::restore(&mut got, objects).unwrap();
        assert_eq!(&got, want, "checkpoint {id}");
    }
}

/// The Job's collections keep dead chunks' files as spares and its next checkpoint writes
/// its new chunks into them (docs/PERFORMANCE.md, "Recycled chunk files"); a finished job
/// leaves no spare behind, and what it restores is exact.
#[test]
fn a_job_writes_new_chunks_into_dead_ones_files_and_leaves_no_spares_at_finish() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let spare_dir = repo.join("chunks/.tmp-spare");
    let len = 1 << 18;
    let mut job = Job::builder().repo(&repo).keep(1).open().unwrap();
    let mut s = job.restore_or_init(|| state(0, len)).unwrap();
    let (mut reused, mut spares_seen) = (0, 0);
    let mut spares = std::collections::BTreeSet::new();
    for round in 0..4u64 {
        job.checkpoint_now(&s).unwrap();
        job.flush().unwrap();
        reused += lazarus_testbed::inodes_under(&repo.join("chunks"))
            .intersection(&spares)
            .count();
        spares = lazarus_testbed::inodes_under(&spare_dir);
        spares_seen += spares.len();
        scribble(&mut s, round);
    }
    assert!(spares_seen > 0, "no collection kept a spare");
    assert!(reused > 0, "no checkpoint wrote into a spare");
    let expected = copy(&s);
    job.finish(&s).unwrap();
    assert!(!spare_dir.exists(), "spares left after finish");
    drop(job);
    assert_eq!(restored(&repo, None, 0, len), expected);
}

/// A state that does not compress: 64 MiB of pseudo-random words.
#[derive(Checkpoint)]
struct Noise {
    words: Vec<u64>,
}

fn noise(bytes: usize) -> Noise {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let words = (0..bytes / 8)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    Noise { words }
}

/// A checkpoint first waits for the previous background flush (one in flight); the
/// program pays that wait, so the stall (the policy's cost, `CheckpointReport::stall`,
/// COMMIT's `lazarus.stall_us`) includes it (docs/ASYNC.md). The clock started after the
/// wait: the stall of a checkpoint taken right after another was the copy alone, a small
/// part of what the call cost.
#[test]
fn the_stall_includes_the_wait_for_the_previous_flush() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let spy = Spy::default();
    let mut job = Job::builder()
        .repo(&repo)
        .policy(spy.clone())
        .staging_budget(1 << 30)
        .open()
        .unwrap();
    let s = job.restore_or_init(|| noise(64 << 20)).unwrap();
    job.checkpoint_now(&s).unwrap();
    // The first flush (64 MiB to hash and write) is still running: this call waits for it.
    let t = std::time::Instant::now();
    let second = job.checkpoint_now(&s).unwrap();
    let wall = t.elapsed();
    let report = *job.flush().unwrap().expect("both committed");
    assert_eq!(report.checkpoint, second);
    let costs = spy.0.lock().unwrap().0.clone();
    assert_eq!(costs.len(), 2, "{costs:?}");
    // The first call waited for no flush: its stall is a capture. The second call must
    // have waited for the first flush, or this test shows nothing: on a machine whose
    // cores flush 64 MiB about as fast as they copy it, say so and stop (on the 2-core CI
    // machine the flush takes ~10x the capture).
    if wall <= costs[0] * 2 {
        eprintln!(
            "SKIPPED the_stall_includes_the_wait_for_the_previous_flush: the second call \
             ({wall:?}) did not wait for the first flush (a capture: {:?})",
            costs[0]
        );
        return;
    }
    for (what, stall) in [
        ("the policy's cost", costs[1]),
        ("the report's", report.stall),
    ] {
        assert!(
            stall.as_secs_f64() >= 0.8 * wall.as_secs_f64(),
            "{what} stall {stall:?} leaves out most of the call's {wall:?}"
        );
        assert!(
            stall <= wall,
            "{what} stall {stall:?} over the call's {wall:?}"
        );
    }
    drop(job);
    let recorded = committed(&repo)[1]
        .2
        .stall
        .expect("COMMIT records the stall");
    assert_eq!(recorded.as_micros(), report.stall.as_micros());
}

/// A background flush that fails did not commit, so it must not count as a checkpoint
/// for the policy (told at capture, before the outcome was known): with `every(1 h)` the
/// next attempt came an hour later, while a failed synchronous checkpoint is retried at
/// the next opportunity.
#[test]
fn a_failed_background_flush_lets_the_policy_retry_at_the_next_opportunity() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut job = Job::builder()
        .repo(&repo)
        .every(Duration::from_secs(3600))
        .open()
        .unwrap();
    let s = job.restore_or_init(|| state(0, 1 << 12)).unwrap();
    assert_eq!(job.checkpoint(&s).unwrap(), 0, "starts the clock, not due");
    // A full disk: step 1's checkpoint is captured, then its background write fails.
    job.set_write_budget(0).unwrap();
    let lost = job.checkpoint_now(&s).unwrap();
    match job.flush() {
        Err(JobError::Flush { checkpoint, .. }) => assert_eq!(checkpoint, lost),
        other => panic!("expected the Flush error of {lost}, got {other:?}"),
    }
    job.set_write_budget(u64::MAX).unwrap();
    // Step 1 was saved (failed) already: its checkpoint() only counts the step.
    assert_eq!(job.checkpoint(&s).unwrap(), 1);
    assert!(job.last_checkpoint().is_none() && !job.flushing());
    // The next opportunity, well within the hour: the policy asks again.
    assert_eq!(job.checkpoint(&s).unwrap(), 2);
    let report = job
        .flush()
        .unwrap()
        .copied()
        .expect("the policy took a checkpoint at step 2");
    assert_eq!(report.step, 2);
    // Then the interval counts from it again.
    assert_eq!(job.checkpoint(&s).unwrap(), 3);
    assert!(!job.flushing());
    assert_eq!(job.flush().unwrap().map(|r| r.step), Some(2));
    drop(job);
    let steps: Vec<_> = committed(&repo).iter().map(|c| c.1).collect();
    assert_eq!(steps, vec![2]);
}
