//! Incremental capture of unaligned rounds (issue #16, docs/ASYNC.md): an `AsyncSession`
//! whose state is a `DirtyVec` changing about 1 % between rounds copies only the changed
//! chunks at each local snapshot after the first (the part names the others by digest,
//! the same rule and helper as the Job's, `lazarus_coord::capture`), and every
//! checkpoint restores exactly the values at its snapshot although each rank overwrites
//! every element right after the call that captured it. Two ranks, real loopback TCP.

mod common;

use common::comms;
use lazarus_coord::{AsyncConfig, AsyncSession, Outcome, SessionError, Timeouts};
use lazarus_format::{CheckpointId, Rank};
use lazarus_net::Comm;
use lazarus_state::{Checkpoint, DirtyVec};
use lazarus_store::RepoOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Checkpoint, Debug, PartialEq)]
struct S {
    data: DirtyVec<u64>,
    n: u64,
}

/// 64 KiB chunks of 16 pages of 4 KiB.
const CHUNK: usize = 64 << 10;
const WORDS_PER_CHUNK: usize = CHUNK / 8;
const WORDS_PER_PAGE: usize = 4096 / 8;
/// 16 MiB of state per rank: 256 chunks, 4096 pages.
const CHUNKS: usize = 256;
const WORDS: usize = CHUNKS * WORDS_PER_CHUNK;
const PAGES: usize = WORDS / WORDS_PER_PAGE;
/// Incremental rounds after the first (full) one.
const ROUNDS: u64 = 5;

/// What rank 0 tells rank 1 (and rank 1 answers).
#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    /// Change the pages of round `k`, then answer `Changed(k)`; after the snapshot that
    /// follows, overwrite every element when `scribble`.
    Change {
        k: u64,
        scribble: bool,
    },
    Changed(u64),
    Stop,
}

fn init(rank: u32) -> S {
    S {
        data: DirtyVec::from(
            (0..WORDS as u64)
                .map(|i| i ^ (u64::from(rank) << 40))
                .collect::<Vec<_>>(),
        ),
        n: 0,
    }
}

fn copy(s: &S) -> S {
    S {
        data: DirtyVec::from(s.data.to_vec()),
        n: s.n,
    }
}

/// The step of round `k`: three pages in three chunks (3 of 256 chunks, about 1 %);
/// returns the chunks changed.
fn change(s: &mut S, rank: u32, k: u64) -> BTreeSet<usize> {
    let mut chunks = BTreeSet::new();
    for j in 0..3usize {
        let page = (k as usize * 389 + j * 1361 + rank as usize * 97) % PAGES;
        let i = page * WORDS_PER_PAGE + 5;
        s.data.set(i, k * 1000 + j as u64 + u64::from(rank));
        chunks.insert(i / WORDS_PER_CHUNK);
    }
    s.n = k;
    chunks
}

/// Right after the call that captured the state: every element changes.
fn scribble(s: &mut S) {
    s.n = u64::MAX;
    s.data.fill(0xdead_beef);
}

fn cfg(repo: &Path) -> AsyncConfig {
    let mut c = AsyncConfig::new(repo);
    c.timeouts = Timeouts {
        round: Duration::from_secs(20),
        retry: Duration::from_millis(20),
        decision: Duration::from_secs(30),
    };
    c.keep = Some(20);
    c.store = RepoOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    };
    c
}

fn load(repo: &Path, id: CheckpointId, rank: u32) -> S {
    let reader = lazarus_store::RepoReader::open(repo).unwrap();
    let objects = reader
        .load_part(id, Rank(rank))
        .unwrap()
        .into_iter()
        .filter(|o| o.info.name != lazarus_coord::CHANNELS_OBJECT)
        .collect();
    let mut s = S {
        data: DirtyVec::from(vec![]),
        n: 0,
    };
    lazarus_state::restore(&mut s, objects).unwrap();
    s
}

/// One local snapshot of a rank: the checkpoint, the state at the snapshot, the bytes
/// copied, and the chunks changed since the previous snapshot (`None`: the first).
type Snapshot = (CheckpointId, S, u64, Option<BTreeSet<usize>>);

/// Rank 1: changes its pages when told, notes each snapshot (taken inside one of its
/// `recv` calls) right after the call that took it, and then scribbles if told to.
fn follower(comm: Comm, repo: &Path) -> Result<Vec<Snapshot>, SessionError> {
    let mut s = init(1);
    let (mut session, _) = AsyncSession::open(comm, cfg(repo), &mut s)?;
    let mut snaps = Vec::new();
    let mut changed: Option<BTreeSet<usize>> = None;
    let mut scribble_next = false;
    let mut seen = session.stats();
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "rank 1 never told to stop"
        );
        let got = session.recv(&s, Duration::from_millis(5));
        let stats = session.stats();
        if stats.snapshots > seen.snapshots {
            assert_eq!(stats.snapshots, seen.snapshots + 1);
            let id = CheckpointId(session.epoch().0);
            let captured = stats.captured_bytes - seen.captured_bytes;
            snaps.push((id, copy(&s), captured, changed.take()));
            if std::mem::take(&mut scribble_next) {
                scribble(&mut s);
            }
        }
        seen = stats;
        match got {
            Ok(m) => match m.decode::<Msg>()? {
                Msg::Change { k, scribble } => {
                    let c = change(&mut s, 1, k);
                    if !snaps.is_empty() {
                        changed.get_or_insert_with(BTreeSet::new).extend(c);
                    }
                    scribble_next = scribble;
                    session.send(Rank(0), 0, &Msg::Changed(k))?;
                }
                Msg::Stop => break,
                other => panic!("rank 1 got {other:?}"),
            },
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e),
        }
    }
    session.finish(&s, Duration::from_secs(20))?;
    Ok(snaps)
}

#[test]
fn unaligned_rounds_capture_only_the_changed_chunks_and_keep_snapshot_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut cs = comms(2);
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    let r1 = {
        let repo = repo.clone();
        std::thread::spawn(move || follower(c1, &repo))
    };
    let full = (WORDS * 8) as u64;
    let mut s = init(0);
    let (mut session, _) = AsyncSession::open(c0, cfg(&repo), &mut s).unwrap();
    let mut snaps: Vec<Snapshot> = Vec::new();
    for k in 0..=ROUNDS {
        // Every element is overwritten after the last snapshot (an incremental one) of
        // both ranks; before, the program's step is about 1 % of the pages.
        let last = k == ROUNDS;
        let changed = change(&mut s, 0, k);
        session
            .send(Rank(1), 0, &Msg::Change { k, scribble: last })
            .unwrap();
        let t = Instant::now();
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "rank 1 never answered"
            );
            match session.recv(&s, Duration::from_millis(50)) {
                Ok(m) => match m.decode::<Msg>().unwrap() {
                    Msg::Changed(j) if j == k => break,
                    other => panic!("rank 0 got {other:?}"),
                },
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("{e}"),
            }
        }
        let before = session.stats();
        assert!(session.start_checkpoint(&s).unwrap(), "a round starts");
        let after = session.stats();
        assert_eq!(
            after.snapshots,
            before.snapshots + 1,
            "rank 0 snapshots in the call"
        );
        let id = CheckpointId(session.epoch().0);
        let captured = after.captured_bytes - before.captured_bytes;
        snaps.push((id, copy(&s), captured, (k > 0).then_some(changed)));
        if last {
            scribble(&mut s);
        }
        let t = Instant::now();
        let r = loop {
            if let Some(r) = session.take_report() {
                break r;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "round never decided");
            session.poll(&s).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
        assert_eq!(r.round.ckpt, id);
    }
    session.send(Rank(1), 0, &Msg::Stop).unwrap();
    session.finish(&s, Duration::from_secs(20)).unwrap();
    let snaps1 = r1.join().unwrap().unwrap();
    assert_eq!(
        snaps1.len(),
        snaps.len(),
        "rank 1 took one snapshot per round"
    );
    for (rank, snaps) in [(0u32, &snaps), (1, &snaps1)] {
        for (i, (id, want, captured, changed)) in snaps.iter().enumerate() {
            match changed {
                None => assert_eq!(
                    *captured, full,
                    "rank {rank}, checkpoint {id}: the first capture is full"
                ),
                Some(c) => {
                    assert_eq!(
                        *captured,
                        (c.len() * CHUNK) as u64,
                        "rank {rank}, checkpoint {id} (round {i}): the capture copies the {} \
                         changed chunks, not the {full}-byte state",
                        c.len()
                    );
                    assert!(*captured * 50 <= full, "at most 2 % of the state");
                }
            }
            let got = load(&repo, *id, rank);
            assert!(
                got == *want,
                "rank {rank}, checkpoint {id}: the part does not hold the values at the snapshot \
                 (n = {} not {})",
                got.n,
                want.n
            );
        }
    }
}

/// Rank 0 alone: one round started and polled until decided; the state at the call, the
/// bytes copied, and the errors the polls returned.
fn one_round(
    session: &mut AsyncSession,
    s: &S,
) -> (lazarus_coord::AsyncReport, u64, Vec<SessionError>) {
    let before = session.stats();
    assert!(session.start_checkpoint(s).unwrap(), "a round starts");
    let captured = session.stats().captured_bytes - before.captured_bytes;
    let mut errors = Vec::new();
    let t = Instant::now();
    let r = loop {
        if let Some(r) = session.take_report() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "round never decided");
        if let Err(e) = session.poll(s) {
            errors.push(e);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // A background error comes with the call that finds the part written.
    if let Err(e) = session.poll(s) {
        errors.push(e);
    }
    (r, captured, errors)
}

/// The chunks an incremental snapshot reuses are gone when its part is written (an
/// outside hand removed them): the part fails naming a chunk and the base checkpoint,
/// the round aborts, the error is reported once, and the next snapshot is a full copy
/// that commits. Never a part that names bytes that are not there.
#[test]
fn a_reused_chunk_that_is_gone_fails_the_part_and_the_next_capture_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let c0 = comms(1).pop().unwrap();
    let full = (WORDS * 8) as u64;
    let mut s = init(0);
    let (mut session, _) = AsyncSession::open(c0, cfg(&repo), &mut s).unwrap();
    let (r, captured, errors) = one_round(&mut session, &s);
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(captured, full);
    let base = r.round.ckpt;
    // Every chunk of the repository disappears.
    fn remove_files(d: &Path) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                remove_files(&p);
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    remove_files(&repo.join("chunks"));
    change(&mut s, 0, 1);
    let (r, captured, errors) = one_round(&mut session, &s);
    assert!(
        captured < full,
        "the snapshot was incremental ({captured} bytes)"
    );
    assert_eq!(r.outcome, Outcome::Abort, "{r:?}");
    assert_eq!(errors.len(), 1, "reported once: {errors:?}");
    let e = errors[0].to_string();
    assert_eq!(
        errors[0].kind(),
        lazarus_coord::SessionErrorKind::Flush,
        "{e}"
    );
    assert!(e.contains("of object"), "names the chunk: {e}");
    assert!(e.contains(&base.to_string()), "names the base {base}: {e}");
    change(&mut s, 0, 2);
    let (r, captured, errors) = one_round(&mut session, &s);
    assert_eq!(r.outcome, Outcome::Commit, "{r:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        captured, full,
        "after a failed part the snapshot is a full copy"
    );
    assert!(
        load(&repo, r.round.ckpt, 0) == s,
        "the part holds the state at the call"
    );
    session.finish(&s, Duration::from_secs(20)).unwrap();
}
