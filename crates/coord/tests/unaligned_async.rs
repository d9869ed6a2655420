//! Unaligned rounds with parts written in the background (issue #16, docs/ASYNC.md): the
//! program may change its state as soon as the call that captured it returns (what
//! commits is the state at the snapshot), and a background write that fails aborts its
//! round, is reported once by the next session call naming the checkpoint, and the
//! session goes on to commit the next round.

mod common;

use common::comms;
use lazarus_coord::{AsyncConfig, AsyncSession, Outcome, SessionError, SessionErrorKind, Timeouts};
use lazarus_format::{CheckpointId, Rank};
use lazarus_net::Comm;
use lazarus_state::Checkpoint;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Checkpoint, Default, Debug, Clone, PartialEq)]
struct Big {
    n: u64,
    xs: Vec<u64>,
}

/// 4 MiB of words, all equal to a function of `n`: a state whose arrays disagree with
/// its counter was read after the call that captured it.
const WORDS: usize = 1 << 19;

fn big(n: u64) -> Big {
    Big {
        n,
        xs: vec![n.wrapping_mul(0x9e37_79b9_7f4a_7c15); WORDS],
    }
}

/// The program's step right after a call: every word changes, the counter too.
fn scribble(b: &mut Big) {
    b.n += 1;
    let v = b.n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    b.xs.iter_mut().for_each(|x| *x = v);
}

fn cfg(repo: &Path) -> AsyncConfig {
    let mut c = AsyncConfig::new(repo);
    c.timeouts = Timeouts {
        round: Duration::from_secs(10),
        retry: Duration::from_millis(20),
        decision: Duration::from_secs(20),
    };
    c.keep = Some(10);
    c
}

fn load(repo: &Path, id: CheckpointId, rank: u32) -> Big {
    let reader = lazarus_store::RepoReader::open(repo).unwrap();
    let objects = reader
        .load_part(id, Rank(rank))
        .unwrap()
        .into_iter()
        .filter(|o| o.info.name != lazarus_coord::CHANNELS_OBJECT)
        .collect();
    let mut b = Big::default();
    lazarus_state::restore(&mut b, objects).unwrap();
    b
}

/// Rank 1: receives (nothing comes) and scribbles over its state right after every call,
/// until `stop`; the `Flush` errors it got.
fn follower(
    comm: Comm,
    repo: &Path,
    stop: &AtomicBool,
    fail_first: bool,
    recovered: &AtomicBool,
) -> Result<Vec<SessionError>, SessionError> {
    follow_with(comm, cfg(repo), stop, fail_first, recovered)
}

/// [`follower`] with its own configuration.
fn follow_with(
    comm: Comm,
    cfg: AsyncConfig,
    stop: &AtomicBool,
    fail_first: bool,
    recovered: &AtomicBool,
) -> Result<Vec<SessionError>, SessionError> {
    let mut b = big(0);
    let (mut s, _) = AsyncSession::open(comm, cfg, &mut b)?;
    if fail_first {
        s.set_write_budget(Some(0));
    }
    let mut errors = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match s.recv(&b, Duration::from_millis(5)) {
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
        scribble(&mut b);
    }
    s.finish(&b, Duration::from_secs(10))?;
    Ok(errors)
}

/// Rank 0: one round started with `start_checkpoint`, the state scribbled right after the
/// call, then polled until decided.
fn round(s: &mut AsyncSession, b: &mut Big) -> (lazarus_coord::AsyncReport, Big) {
    let t = Instant::now();
    assert!(s.start_checkpoint(b).unwrap(), "a round starts");
    let at_call = b.clone();
    scribble(b);
    loop {
        if let Some(r) = s.take_report() {
            return (r, at_call);
        }
        assert!(t.elapsed() < Duration::from_secs(15), "round never decided");
        s.poll(b).unwrap();
        scribble(b);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn unaligned_snapshot_isolation_with_background_writes() {
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
    let mut b = big(1000);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut b).unwrap();
    let mut expected = Vec::new();
    for _ in 0..3 {
        let (r, at_call) = round(&mut s0, &mut b);
        assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
        expected.push((r.round.ckpt, at_call));
    }
    stop.store(true, Ordering::SeqCst);
    s0.finish(&b, Duration::from_secs(10)).unwrap();
    let errors = r1.join().unwrap().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    for (id, want) in &expected {
        // Rank 0: exactly the state at its `start_checkpoint` call, not the scribbles.
        let got = load(&repo, *id, 0);
        assert!(
            got == *want,
            "checkpoint {id}: rank 0 holds n={} not {}",
            got.n,
            want.n
        );
        // Rank 1 (captured inside one of its `recv` calls): one consistent state.
        let got = load(&repo, *id, 1);
        assert!(
            got == big(got.n),
            "checkpoint {id}: rank 1's state was read after its call"
        );
    }
}

/// With `keep = 1`, rank 0's collections keep dead chunks' files as spares, and the next
/// round's parts (both ranks', written in the background) put their new chunks into them;
/// a finished session leaves no spare behind, and what committed is exact. With recycling
/// off, no collection keeps a spare.
#[test]
fn unaligned_rounds_write_new_chunks_into_dead_ones_files_and_leave_no_spares_at_finish() {
    for recycle in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let spare_dir = repo.join("chunks/.tmp-spare");
        let mut c = cfg(&repo);
        c.keep = Some(1);
        c.recycle_chunk_files = recycle;
        let mut cs = comms(2);
        let c1 = cs.pop().unwrap();
        let c0 = cs.pop().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let r1 = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || follow_with(c1, c, &stop, false, &AtomicBool::new(false)))
        };
        let mut b = big(7);
        let (mut s0, _) = AsyncSession::open(c0, c, &mut b).unwrap();
        let (mut reused, mut spares_seen) = (0, 0);
        let mut spares = std::collections::BTreeSet::new();
        let mut last = None;
        for _ in 0..4 {
            let (r, at_call) = round(&mut s0, &mut b);
            assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
            // The round's chunks (both ranks') in files the previous collection kept.
            reused += lazarus_testbed::inodes_under(&repo.join("chunks"))
                .intersection(&spares)
                .count();
            spares = lazarus_testbed::inodes_under(&spare_dir);
            spares_seen += spares.len();
            last = Some((r.round.ckpt, at_call));
        }
        stop.store(true, Ordering::SeqCst);
        s0.finish(&b, Duration::from_secs(10)).unwrap();
        assert!(r1.join().unwrap().unwrap().is_empty());
        if recycle {
            assert!(spares_seen > 0, "no collection kept a spare");
            assert!(reused > 0, "no round wrote into a spare");
        } else {
            assert_eq!(
                spares_seen, 0,
                "a collection kept spares with recycling off"
            );
        }
        assert!(
            !spare_dir.exists(),
            "spares left after finish (recycle {recycle})"
        );
        let (id, want) = last.unwrap();
        assert!(load(&repo, id, 0) == want, "checkpoint {id}: rank 0");
        let got = load(&repo, id, 1);
        assert!(got == big(got.n), "checkpoint {id}: rank 1 inconsistent");
        let report = lazarus_store::RepoReader::open(&repo)
            .unwrap()
            .verify(&|_, _| {})
            .unwrap();
        assert!(report.problems.is_empty(), "{report:?}");
    }
}

#[test]
fn unaligned_background_write_error_is_reported_by_the_next_call() {
    background_write_error_of_rank_1();
}

/// Found by CI (the test above, about 1 run in 3 after COMMIT moved to the background
/// writer): rank 0 collected the aborted round's directory at once, and its own part of
/// that round, started only afterwards, failed ("not pending") and was reported to rank
/// 0's program as its own flush error, although the round had aborted for rank 1's
/// failure. Repeated so that the race is met in nearly every run of the old code.
#[test]
fn rank0_is_not_told_of_its_part_of_a_round_that_aborted_for_another_rank() {
    for _ in 0..6 {
        background_write_error_of_rank_1();
    }
}

/// Rank 1's part fails in the background (a full disk): the round aborts, rank 1's next
/// call reports it once, rank 0 sees only the aborted round, and the next round commits.
fn background_write_error_of_rank_1() {
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
    let mut b = big(1);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut b).unwrap();
    // Rank 1's disk is full: its part fails in the background, the round aborts.
    let (r, _) = round(&mut s0, &mut b);
    assert_eq!(r.outcome, Outcome::Abort, "{r:?}");
    eprintln!(
        "DBG {r:?} {:?}",
        std::fs::read_dir(repo.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>()
    );
    let failed = r.round.ckpt;
    let t = Instant::now();
    while !recovered.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "rank 1 never got the error"
        );
        s0.poll(&b).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    // The session goes on: the next round commits.
    let (r, at_call) = round(&mut s0, &mut b);
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    stop.store(true, Ordering::SeqCst);
    s0.finish(&b, Duration::from_secs(10)).unwrap();
    let errors = r1.join().unwrap().unwrap();
    assert_eq!(errors.len(), 1, "reported once: {errors:?}");
    let e = &errors[0];
    assert!(
        e.to_string().contains(&failed.to_string()),
        "names the checkpoint {failed}: {e}"
    );
    let reader = lazarus_store::RepoReader::open(&repo).unwrap();
    let committed: Vec<_> = reader.committed().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(
        committed,
        vec![r.round.ckpt],
        "the failed round never committed"
    );
    assert!(load(&repo, r.round.ckpt, 0) == at_call);
}

/// Rank 0's own part fails in the background: its round aborts, and the error is
/// returned once, by a later call of rank 0 (`finish` at the latest).
#[test]
fn rank0_background_write_error_is_reported_once_by_finish_at_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut cs = comms(1);
    let c0 = cs.pop().unwrap();
    let mut b = big(7);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut b).unwrap();
    s0.set_write_budget(Some(0));
    let t = Instant::now();
    assert!(s0.start_checkpoint(&b).unwrap());
    let mut errors = Vec::new();
    let r = loop {
        if let Some(r) = s0.take_report() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "round never decided");
        if let Err(e) = s0.poll(&b) {
            errors.push(e);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(r.outcome, Outcome::Abort, "{r:?}");
    eprintln!(
        "DBG {r:?} {:?}",
        std::fs::read_dir(repo.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>()
    );
    if let Err(e) = s0.finish(&b, Duration::from_secs(10)) {
        errors.push(e);
    }
    assert_eq!(errors.len(), 1, "reported once: {errors:?}");
    assert_eq!(errors[0].kind(), SessionErrorKind::Flush, "{}", errors[0]);
    assert!(
        errors[0].to_string().contains(&r.round.ckpt.to_string()),
        "{}",
        errors[0]
    );
}

/// Rank 0 writes COMMIT in the background: while the write is held, the session calls of
/// rank 0 return (every part durable, the round not decided, no COMMIT in the
/// repository); once released, a later call finds it written and decides Commit, and the
/// checkpoint holds the state at the call. Fails when COMMIT is written inside the call
/// that collects the last vote (that call would wait for the hold, and no call would
/// ever return with the COMMIT in flight).
#[test]
fn rank0_writes_commit_in_the_background() {
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
    let mut b = big(3);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut b).unwrap();
    let committed = || -> Vec<CheckpointId> {
        let reader = lazarus_store::RepoReader::open(&repo).unwrap();
        reader.committed().unwrap().iter().map(|c| c.id).collect()
    };
    let mut expected = Vec::new();
    for _ in 0..2 {
        let hold = Arc::new(AtomicBool::new(true));
        s0.hold_commits(Some(hold.clone()));
        assert!(s0.start_checkpoint(&b).unwrap(), "a round starts");
        let id = CheckpointId(s0.epoch().0);
        let at_call = b.clone();
        scribble(&mut b);
        // Every vote comes in while the COMMIT write is held: the calls go on returning.
        let t = Instant::now();
        while !s0.commit_in_flight() {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "no session call returned with the COMMIT of {id} in flight"
            );
            s0.poll(&b).unwrap();
            scribble(&mut b);
            std::thread::sleep(Duration::from_millis(2));
        }
        for _ in 0..5 {
            s0.poll(&b).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            s0.take_report().is_none(),
            "decided before COMMIT was written"
        );
        assert!(s0.round_in_progress());
        assert!(
            !committed().contains(&id),
            "COMMIT of {id} written while held"
        );
        // Released: a later call finds COMMIT written and decides.
        hold.store(false, Ordering::SeqCst);
        let t = Instant::now();
        let r = loop {
            if let Some(r) = s0.take_report() {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "round never decided");
            s0.poll(&b).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
        assert_eq!(r.round.ckpt, id);
        assert!(committed().contains(&id), "decided Commit without COMMIT");
        assert!(!s0.commit_in_flight());
        expected.push((id, at_call));
    }
    // Rounds commit in order, each with the state at its call.
    stop.store(true, Ordering::SeqCst);
    s0.finish(&b, Duration::from_secs(10)).unwrap();
    let errors = r1.join().unwrap().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let ids: Vec<CheckpointId> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(committed(), ids);
    for (id, want) in &expected {
        assert!(load(&repo, *id, 0) == *want, "checkpoint {id}");
    }
}

/// Review finding 2 (2026-12-07), unaligned runtime: a COMMIT write that fails while
/// COMMIT is definitely not there aborts the round; `Repository::commit` had consumed the
/// pending checkpoint, so its directory stayed, and a rank that missed the decision read
/// "pending" from the repository while rank 0 reported an abort. The directory must be
/// gone by the time the abort is reported, and the next round commits.
///
/// Here rank 1 misses the decision for a while (it makes no session call once its vote
/// is in), and its manifest is a file in the directory (small chunks: too many to be
/// inlined), so only rank 0's removal can make the directory go away.
#[test]
fn an_abort_after_a_failed_commit_write_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut c = cfg(&repo);
    c.store.chunk_size = lazarus_store::MIN_CHUNK_SIZE;
    let mut cs = comms(2);
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Rank 1 stops making session calls while `pause` is set, and says so in `paused`.
    let pause = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let r1 = {
        let (c, stop, pause, paused) = (c.clone(), stop.clone(), pause.clone(), paused.clone());
        std::thread::spawn(move || -> Result<(), SessionError> {
            let mut b = Big {
                n: 0,
                xs: vec![7; 2 * WORDS],
            };
            let (mut s, _) = AsyncSession::open(c1, c, &mut b)?;
            while !stop.load(Ordering::SeqCst) {
                paused.store(pause.load(Ordering::SeqCst), Ordering::SeqCst);
                if pause.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                match s.recv(&b, Duration::from_millis(5)) {
                    Err(e) if e.is_retryable() => {}
                    Err(e) => return Err(e),
                    Ok(m) => panic!("unexpected message {m:?}"),
                }
                b.n += 1;
            }
            s.finish(&b, Duration::from_secs(10))?;
            Ok(())
        })
    };
    let mut b = big(1);
    let (mut s0, _) = AsyncSession::open(c0, c, &mut b).unwrap();
    // The parts have their own writers: only COMMIT finds the disk full.
    assert!(s0.set_commit_write_budget(0));
    let hold = Arc::new(AtomicBool::new(true));
    s0.hold_commits(Some(hold.clone()));
    assert!(s0.start_checkpoint(&b).unwrap());
    let t = Instant::now();
    // Every vote is in once COMMIT is being written: then rank 1 goes quiet.
    while !s0.commit_in_flight() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "COMMIT never started"
        );
        s0.poll(&b).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    pause.store(true, Ordering::SeqCst);
    while !paused.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    s0.hold_commits(None);
    hold.store(false, Ordering::SeqCst);
    let r = loop {
        if let Some(r) = s0.take_report() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "round never decided");
        s0.poll(&b).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(r.outcome, Outcome::Abort, "{r:?}");
    assert!(format!("{:?}", r.reason).contains("No space left"), "{r:?}");
    let id = r.round.ckpt;
    // What rank 1 would read now, had it missed `Decided` for good.
    let presence = lazarus_store::RepoReader::open(&repo)
        .unwrap()
        .commit_presence(id)
        .unwrap();
    assert_eq!(
        presence,
        lazarus_store::Presence::Gone,
        "checkpoint {id} when its abort is reported"
    );
    pause.store(false, Ordering::SeqCst);
    assert!(s0.set_commit_write_budget(u64::MAX));
    let (r, at_call) = round(&mut s0, &mut b);
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    assert!(r.round.ckpt > id);
    stop.store(true, Ordering::SeqCst);
    s0.finish(&b, Duration::from_secs(10)).unwrap();
    r1.join().unwrap().unwrap();
    assert!(load(&repo, r.round.ckpt, 0) == at_call);
}

/// Review finding 1 (2026-12-07): a participant re-sends its vote until it sees the
/// decision, also from inside `finish` after its `Done`, so rank 0 may return from
/// `finish` with such a vote unread. A second session on the same `Comm` and repository
/// hands out the id of the first session's aborted round again (its directory was
/// deleted), and on the old code rank 0 read the leftover vote first and committed the
/// first session's part of rank 1. Here the leftover is sent by hand after rank 1's
/// `finish` (deterministic): a vote for the reused id, its receipt naming a real part
/// (inline manifest, chunks in the repository).
#[test]
fn a_vote_left_by_a_finished_session_is_not_taken_by_the_next_session_on_the_same_comm() {
    use lazarus_coord::{RoundId, Vote, VoteMsg, UNALIGNED_TAG_BASE};
    use lazarus_format::{Epoch, ObjectInfo, ObjectKind, ObjectSpec};
    use lazarus_net::Tag;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut cs = comms(2);
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    let stop1 = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<CheckpointId>();
    let r1 = {
        let (repo, stop1, stop2) = (repo.clone(), stop1.clone(), stop2.clone());
        std::thread::spawn(move || {
            let mut b = big(0);
            let (mut s, _) = AsyncSession::open(c1, cfg(&repo), &mut b).unwrap();
            while !stop1.load(Ordering::SeqCst) {
                match s.recv(&b, Duration::from_millis(5)) {
                    Err(e) if e.is_retryable() => {}
                    other => panic!("rank 1, first session: {other:?}"),
                }
            }
            let comm = s.finish(&b, Duration::from_secs(10)).unwrap();
            // The vote the first session's participant would re-send for the aborted
            // round, with the receipt of a part written for it.
            let id = rx.recv().unwrap();
            let spec = ObjectSpec {
                info: ObjectInfo {
                    name: "stale".into(),
                    type_name: "Vec<u8>".into(),
                    kind: ObjectKind::Serde,
                    sharing: None,
                    layout: None,
                },
                data: b"the first session's part"[..].into(),
                hint: None,
            };
            // Written while the round ran, in the real case: its directory was there.
            let ckpt_dir = repo.join("checkpoints").join(id.to_string());
            std::fs::create_dir(&ckpt_dir).unwrap();
            let receipt =
                lazarus_store::PartWriter::open(&repo, id, lazarus_store::RepoOptions::default())
                    .unwrap()
                    .with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST)
                    .write(Rank(1), &[spec])
                    .unwrap();
            // Then rank 0 collected the aborted round's directory (its chunks stay for GC).
            std::fs::remove_dir_all(&ckpt_dir).unwrap();
            let stale = VoteMsg {
                round: RoundId {
                    epoch: Epoch(id.0),
                    ckpt: id,
                },
                from: Rank(1),
                vote: Vote::Durable(receipt),
            };
            // The session's vote tag (`UNALIGNED_TAG_BASE + 2`, docs/PROTOCOL.md).
            comm.send_bytes(
                Rank(0),
                Tag::checkpoint(UNALIGNED_TAG_BASE + 2),
                postcard::to_allocvec(&stale).unwrap(),
            )
            .unwrap();
            let mut b = big(0);
            let (mut s, _) = AsyncSession::open(comm, cfg(&repo), &mut b).unwrap();
            while !stop2.load(Ordering::SeqCst) {
                match s.recv(&b, Duration::from_millis(5)) {
                    Err(e) if e.is_retryable() => {}
                    // On the old code rank 1 learns that a round committed without its
                    // vote; the repository check below says what went wrong.
                    Err(e) => return Err(e),
                    Ok(m) => panic!("unexpected message {m:?}"),
                }
            }
            s.finish(&b, Duration::from_secs(10)).map(|_| ())
        })
    };
    let mut b = big(1);
    let (mut s0, _) = AsyncSession::open(c0, cfg(&repo), &mut b).unwrap();
    let (r, _) = round(&mut s0, &mut b);
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    // The second round aborts: rank 0's part cannot be written.
    s0.set_write_budget(Some(0));
    assert!(s0.start_checkpoint(&b).unwrap());
    let t = Instant::now();
    // The decision, and the write error (reported once, by a later call: taken here so
    // that `finish` hands the communicator back).
    let (mut aborted, mut reported) = (None, false);
    while aborted.is_none() || !reported {
        assert!(t.elapsed() < Duration::from_secs(15), "round never decided");
        match s0.poll(&b) {
            Err(e) if e.kind() == SessionErrorKind::Flush => reported = true,
            other => other.unwrap(),
        }
        aborted = aborted.or_else(|| s0.take_report());
        std::thread::sleep(Duration::from_millis(1));
    }
    let aborted = aborted.unwrap();
    assert_eq!(aborted.outcome, Outcome::Abort, "{aborted:?}");
    let id = aborted.round.ckpt;
    s0.set_write_budget(None);
    stop1.store(true, Ordering::SeqCst);
    let comm = match s0.finish(&b, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => panic!("rank 0, first session: {e}"),
    };
    tx.send(id).unwrap();
    // The second session: a fresh repository handle hands out the aborted round's id.
    let mut b = big(50);
    let (mut s0, _) = AsyncSession::open(comm, cfg(&repo), &mut b).unwrap();
    let (r, at_call) = round(&mut s0, &mut b);
    assert_eq!(
        r.round.ckpt, id,
        "the id of the aborted round is handed out again"
    );
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    let reader = lazarus_store::RepoReader::open(&repo).unwrap();
    let names: Vec<String> = reader
        .load_part(id, Rank(1))
        .unwrap()
        .into_iter()
        .map(|o| o.info.name)
        .collect();
    assert!(
        !names.iter().any(|n| n == "stale"),
        "checkpoint {id} holds the first session's part of rank 1: {names:?}"
    );
    assert!(load(&repo, id, 0) == at_call);
    stop2.store(true, Ordering::SeqCst);
    s0.finish(&b, Duration::from_secs(10)).unwrap();
    r1.join().unwrap().unwrap();
}
