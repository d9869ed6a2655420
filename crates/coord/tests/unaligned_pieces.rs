//! Unaligned snapshots larger than the staging budget are captured in pieces (issue #16
//! item 3, docs/ASYNC.md "Unaligned rounds"): what fits in `AsyncConfig::staging_budget`
//! is copied, the rest written as durable chunks inside the session call that takes the
//! snapshot, and the background writer writes the heads and the manifest. What commits is
//! the state at the snapshot; a failure writing the tails aborts the round, is reported
//! once by the next call, and the next round commits.

mod common;

use common::comms;
use lazarus_coord::{
    AsyncConfig, AsyncSession, AsyncStats, Outcome, SessionError, SessionErrorKind, Timeouts,
};
use lazarus_format::{CheckpointId, Rank};
use lazarus_net::Comm;
use lazarus_state::Checkpoint;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Checkpoint, Default, Debug, Clone, PartialEq)]
struct Two {
    n: u64,
    xs: Vec<u64>,
    ys: Vec<f64>,
}

/// 4 MiB per array: 8 MiB of state per rank, in 1 MiB chunks (the store's default).
const WORDS: usize = 1 << 19;

/// The staging budget: three chunks and a bit. `xs` is cut after its third chunk (head
/// staged, tail written in the call), `ys` goes whole to the tails.
const BUDGET: u64 = (3 << 20) + 12_345;

fn word(n: u64, i: u64) -> u64 {
    (n ^ i.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The state after `n` steps: every element a function of `n` and its index.
fn two(n: u64) -> Two {
    Two {
        n,
        xs: (0..WORDS as u64).map(|i| word(n, i)).collect(),
        ys: (0..WORDS as u64).map(|i| word(n + 7, i) as f64).collect(),
    }
}

/// True if every element of `t` agrees with its counter (the state at some call).
fn consistent(t: &Two) -> bool {
    t.xs.len() == WORDS
        && t.ys.len() == WORDS
        && t.xs
            .iter()
            .enumerate()
            .all(|(i, x)| *x == word(t.n, i as u64))
        && t.ys
            .iter()
            .enumerate()
            .all(|(i, y)| y.to_bits() == (word(t.n + 7, i as u64) as f64).to_bits())
}

/// The program's step right after a call: every element changes, the counter too.
fn step(t: &mut Two) {
    t.n += 1;
    let n = t.n;
    t.xs.iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = word(n, i as u64));
    t.ys.iter_mut()
        .enumerate()
        .for_each(|(i, y)| *y = word(n + 7, i as u64) as f64);
}

fn cfg(repo: &Path) -> AsyncConfig {
    let mut c = AsyncConfig::new(repo);
    c.timeouts = Timeouts {
        round: Duration::from_secs(20),
        retry: Duration::from_millis(20),
        decision: Duration::from_secs(30),
    };
    c.keep = Some(10);
    c.staging_budget = BUDGET;
    c
}

fn load(repo: &Path, id: CheckpointId, rank: u32) -> Two {
    let reader = lazarus_store::RepoReader::open(repo).unwrap();
    let objects = reader
        .load_part(id, Rank(rank))
        .unwrap()
        .into_iter()
        .filter(|o| o.info.name != lazarus_coord::CHANNELS_OBJECT)
        .collect();
    let mut t = Two::default();
    lazarus_state::restore(&mut t, objects).unwrap();
    t
}

/// Rank 1: receives (nothing comes) and steps its state right after every call, until
/// `stop`; with `fail_first`, its disk is full (every write fails) until its first
/// `Flush` error. Returns those errors and its stats.
fn follower(
    comm: Comm,
    repo: &Path,
    stop: &AtomicBool,
    fail_first: bool,
    recovered: &AtomicBool,
) -> Result<(Vec<SessionError>, AsyncStats), SessionError> {
    let mut t = two(0);
    let (mut s, _) = AsyncSession::open(comm, cfg(repo), &mut t)?;
    if fail_first {
        s.set_write_budget(Some(0));
    }
    let mut errors = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match s.recv(&t, Duration::from_millis(5)) {
            Err(e) if e.kind() == SessionErrorKind::Flush => {
                assert!(e.is_retryable(), "{e}");
                errors.push(e);
                s.set_write_budget(None);
                recovered.store(true, Ordering::SeqCst);
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e),
            Ok(m) => panic!("unexpected message {m:?}"),
        }
        step(&mut t);
    }
    let stats = s.stats();
    s.finish(&t, Duration::from_secs(10))?;
    Ok((errors, stats))
}

/// Rank 0: one round started with `start_checkpoint`, the state stepped right after the
/// call (and after every later call), polled until decided.
fn round(s: &mut AsyncSession, t: &mut Two) -> (lazarus_coord::AsyncReport, Two) {
    let started = Instant::now();
    assert!(s.start_checkpoint(t).unwrap(), "a round starts");
    let at_call = t.clone();
    step(t);
    loop {
        if let Some(r) = s.take_report() {
            return (r, at_call);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "round never decided"
        );
        s.poll(t).unwrap();
        step(t);
        std::thread::sleep(Duration::from_millis(2));
    }
}

const STATE: u64 = 2 * WORDS as u64 * 8;

#[test]
fn unaligned_snapshots_over_the_budget_commit_in_pieces_and_keep_snapshot_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut cs = comms(2);
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let r1 = {
        let (repo, stop) = (repo.clone(), stop.clone());
        std::thread::spawn(move || follower(c1, &repo, &stop, false, &AtomicBool::new(false)))
    };
    let mut t = two(1000);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut t).unwrap();
    let mut expected = Vec::new();
    let rounds = 3;
    for _ in 0..rounds {
        let (r, at_call) = round(&mut s0, &mut t);
        assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
        expected.push((r.round.ckpt, at_call));
    }
    stop.store(true, Ordering::SeqCst);
    let stats0 = s0.stats();
    s0.finish(&t, Duration::from_secs(10)).unwrap();
    let (errors, stats1) = r1.join().unwrap().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    for (rank, stats) in [(0, stats0), (1, stats1)] {
        // Each snapshot copied at most the budget (three whole chunks of `xs`) and wrote
        // the rest inside the call: a whole copy (no split) copies 8 MiB each.
        assert_eq!(stats.snapshots, rounds, "rank {rank}: {stats:?}");
        assert_eq!(
            stats.captured_bytes,
            rounds * (3 << 20),
            "rank {rank}: {stats:?}"
        );
        assert_eq!(
            stats.ahead_bytes,
            rounds * (STATE - (3 << 20)),
            "rank {rank}: {stats:?}"
        );
        assert_eq!(stats.parts_written, rounds, "rank {rank}: {stats:?}");
    }
    for (id, at_call) in &expected {
        let got = load(&repo, *id, 0);
        assert!(
            got == *at_call,
            "checkpoint {id}: rank 0 holds its state at n = {}, not at its call (n = {})",
            got.n,
            at_call.n
        );
        let got = load(&repo, *id, 1);
        assert!(
            consistent(&got),
            "checkpoint {id}: rank 1's state (n = {}) is not the state at one call",
            got.n
        );
    }
    // Rank 1's snapshots are successive states of its program.
    let ns: Vec<u64> = expected
        .iter()
        .map(|(id, _)| load(&repo, *id, 1).n)
        .collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
}

/// Rank 1's disk is full when its snapshot (over the budget) writes its tails inside the
/// call: it votes Failed, the round aborts, its next call reports the error once (naming
/// the checkpoint and the tails written ahead), and the next round commits.
#[test]
fn a_failed_write_of_the_tails_aborts_the_round_is_reported_and_the_next_round_commits() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut cs = comms(2);
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let recovered = Arc::new(AtomicBool::new(false));
    let r1 = {
        let (repo, stop, recovered) = (repo.clone(), stop.clone(), recovered.clone());
        std::thread::spawn(move || follower(c1, &repo, &stop, true, &recovered))
    };
    let mut t = two(1);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut t).unwrap();
    let (r, _) = round(&mut s0, &mut t);
    assert_eq!(r.outcome, Outcome::Abort, "{r:?}");
    let failed = r.round.ckpt;
    let waited = Instant::now();
    while !recovered.load(Ordering::SeqCst) {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "rank 1 never got the error"
        );
        s0.poll(&t).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let (r, at_call) = round(&mut s0, &mut t);
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    stop.store(true, Ordering::SeqCst);
    s0.finish(&t, Duration::from_secs(10)).unwrap();
    let (errors, stats1) = r1.join().unwrap().unwrap();
    assert_eq!(errors.len(), 1, "reported once: {errors:?}");
    let e = errors[0].to_string();
    assert!(
        e.contains(&failed.to_string()),
        "names checkpoint {failed}: {e}"
    );
    assert!(
        e.contains("in pieces") && e.contains("written ahead"),
        "says the tails written inside the call failed: {e}"
    );
    // Only the second snapshot wrote its part.
    assert_eq!(stats1.snapshots, 2, "{stats1:?}");
    assert_eq!(stats1.parts_written, 1, "{stats1:?}");
    let reader = lazarus_store::RepoReader::open(&repo).unwrap();
    let committed: Vec<_> = reader.committed().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(
        committed,
        vec![r.round.ckpt],
        "the failed round never committed"
    );
    assert!(load(&repo, r.round.ckpt, 0) == at_call);
    assert!(consistent(&load(&repo, r.round.ckpt, 1)));
}

#[derive(Checkpoint)]
struct Tracked {
    d: lazarus_state::DirtyVec<u64>,
    v: Vec<u64>,
}

/// 2 MiB per object, in 64 KiB chunks.
const TRACKED_WORDS: usize = 1 << 18;
const SMALL_CHUNK: u64 = 64 << 10;

/// An incremental snapshot whose sparse copy is over the budget is a full one in pieces.
/// One rank, a tracked 2 MiB `DirtyVec` then a plain 2 MiB array, a 2.5 MiB budget:
/// round 1 (no committed base) is in pieces (the `DirtyVec` whole in the heads, the array
/// cut after 512 KiB); round 2 changes two chunks (one after the call before, one
/// before this call): incremental, those two chunks of the `DirtyVec` and the array
/// copied, under the budget; round 3 changes every page: the sparse copy
/// (4 MiB) is over the budget, so the snapshot is in pieces again. Every checkpoint holds
/// the values at its call.
#[test]
fn an_incremental_snapshot_over_the_budget_falls_back_to_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut c = cfg(&repo);
    c.staging_budget = (5 << 20) / 2;
    c.store = lazarus_store::RepoOptions {
        chunk_size: SMALL_CHUNK as u32,
        ..Default::default()
    };
    let mut t = Tracked {
        d: lazarus_state::DirtyVec::from((0..TRACKED_WORDS as u64).collect::<Vec<_>>()),
        v: (0..TRACKED_WORDS as u64).map(|i| word(3, i)).collect(),
    };
    let (mut s, _) = AsyncSession::open(comms(1).remove(0), c, &mut t).unwrap();
    let mut expected = Vec::new();
    let mut copied = Vec::new();
    let mut ahead = Vec::new();
    for k in 1..=3u64 {
        match k {
            2 => {
                t.d.set(12_345, 7);
            }
            3 => (0..TRACKED_WORDS).for_each(|i| {
                t.d.set(i, i as u64 * k);
            }),
            _ => {}
        }
        let before = s.stats();
        let started = Instant::now();
        assert!(s.start_checkpoint(&t).unwrap(), "a round starts");
        copied.push(s.stats().captured_bytes - before.captured_bytes);
        ahead.push(s.stats().ahead_bytes - before.ahead_bytes);
        let at_call = (t.d.to_vec(), t.v.clone());
        // Right after the call: the first chunk of the `DirtyVec` (so the next round
        // copies it too) and every element of the array change.
        t.d.set(0, u64::MAX - k);
        t.v.iter_mut().for_each(|x| *x = !*x);
        let r = loop {
            if let Some(r) = s.take_report() {
                break r;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never decided");
            s.poll(&t).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(r.outcome, Outcome::Commit, "round {k}: {r:?}");
        expected.push((r.round.ckpt, at_call));
    }
    s.finish(&t, Duration::from_secs(10)).unwrap();
    let half = 1 << 19;
    let object = (TRACKED_WORDS * 8) as u64;
    assert_eq!(
        copied,
        vec![object + half, 2 * SMALL_CHUNK + object, object + half],
        "bytes copied per snapshot (ahead: {ahead:?})"
    );
    assert_eq!(ahead, vec![object - half, 0, object - half]);
    let reader = lazarus_store::RepoReader::open(&repo).unwrap();
    for (id, (d, v)) in &expected {
        let objects = reader
            .load_part(*id, Rank(0))
            .unwrap()
            .into_iter()
            .filter(|o| o.info.name != lazarus_coord::CHANNELS_OBJECT)
            .collect();
        let mut got = Tracked {
            d: lazarus_state::DirtyVec::from(Vec::new()),
            v: Vec::new(),
        };
        lazarus_state::restore(&mut got, objects).unwrap();
        assert!(
            got.d.to_vec() == *d,
            "checkpoint {id}: the DirtyVec differs"
        );
        assert!(got.v == *v, "checkpoint {id}: the array differs");
    }
}
