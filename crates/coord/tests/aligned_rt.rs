//! The aligned runtime over real TCP loopback ranks and a real repository (fsync included):
//! inline manifests (format 1.1), and the fixes of the aligned-path review (docs/PROTOCOL.md
//! "Aligned rounds: failure handling"). Some tests play rank 0 by hand ("fake rank 0") to
//! produce message orders a correct coordinator only produces under loss or failure.

use lazarus_coord::{
    AlignedRuntime, Decision, Outcome, RankStore, RoundError, RoundErrorKind, RoundId, Timeouts,
    ToParticipant, Vote, VoteMsg, TAG_TO_PARTICIPANT, TAG_VOTE,
};
use lazarus_format::{CheckpointId, Epoch, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus_net::{loopback_comms, Comm, NetConfig, Tag};
use lazarus_store::{CommitMeta, PartReceipt, RepoOptions, RepoReader, Repository};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// Timeouts of a test, in milliseconds.
fn timeouts(round: u64, retry: u64, decision: u64) -> Timeouts {
    Timeouts {
        round: ms(round),
        retry: ms(retry),
        decision: ms(decision),
    }
}

fn obj(data: &[u8]) -> ObjectSpec<'_> {
    ObjectSpec {
        info: ObjectInfo {
            name: "state".into(),
            type_name: "Vec<u8>".into(),
            kind: ObjectKind::Serde,
            sharing: None,
            layout: None,
        },
        data: data.into(),
        hint: None,
    }
}

fn meta(step: u64) -> CommitMeta {
    CommitMeta {
        step,
        app: Default::default(),
    }
}

fn participant_store(path: &Path) -> RankStore {
    RankStore::Participant {
        path: path.to_path_buf(),
        options: RepoOptions::default(),
    }
}

/// Runs `f(rank, runtime)` on every rank of an `n`-rank loopback job, rank 0 owning
/// `repo`; returns each rank's result in rank order.
fn run_ranks<T: Send + 'static>(
    n: u32,
    repo: Repository,
    timeouts: Timeouts,
    f: impl Fn(u32, &mut AlignedRuntime) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let path = repo.path().to_path_buf();
    let f = Arc::new(f);
    let mut repo = Some(repo);
    let handles: Vec<_> = loopback_comms(n, NetConfig::default())
        .unwrap()
        .into_iter()
        .map(|comm| {
            let store = match repo.take() {
                Some(r) if comm.rank() == Rank(0) => RankStore::Coordinator(r),
                back => {
                    repo = back;
                    participant_store(&path)
                }
            };
            let f = f.clone();
            std::thread::spawn(move || {
                let r = comm.rank().0;
                let mut rt = AlignedRuntime::new(comm, store, timeouts).unwrap();
                rt.set_output_markers(false);
                f(r, &mut rt)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn dir_names(repo: &Path, id: CheckpointId) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo.join("checkpoints").join(id.to_string()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn rounds_commit_with_manifests_inline_in_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let out = run_ranks(4, repo, Timeouts::default(), |r, rt| {
        (1..=3u64)
            .map(|step| {
                let data = vec![r as u8; 100 * step as usize];
                rt.round(&[obj(&data)], &meta(step)).map(|c| c.checkpoint)
            })
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    });
    assert!(out.iter().all(|ids| *ids == out[0]), "{out:?}");
    let reader = RepoReader::open(dir.path()).unwrap();
    for (k, id) in out[0].iter().enumerate() {
        // One durable file per round: no rank manifest files.
        assert_eq!(dir_names(dir.path(), *id), vec!["COMMIT"]);
        for r in 0..4u32 {
            let o = reader.load_part(*id, Rank(r)).unwrap();
            assert_eq!(o[0].data, vec![r as u8; 100 * (k + 1)]);
        }
    }
}

/// Review finding 2: a directory fsync failing after COMMIT's rename must not turn into an
/// Abort anywhere (COMMIT is visible); the next round still works.
#[test]
fn commit_visible_but_not_durable_is_never_reported_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    repo.fail_next_commit_sync();
    let t = timeouts(5000, 50, 1500);
    let out = run_ranks(2, repo, t, |_, rt| {
        let first = rt.round(&[obj(b"a")], &meta(1));
        let second = rt.round(&[obj(b"b")], &meta(2)).map(|c| c.checkpoint);
        (first.map(|c| c.checkpoint), second)
    });
    let e = out[0].0.as_ref().unwrap_err();
    assert_eq!(e.kind(), RoundErrorKind::OutcomeUnknown, "{e}");
    assert!(!e.is_retryable());
    // Rank 1 got no decision and read the repository: COMMIT is there, so committed.
    let id = *out[1].0.as_ref().unwrap();
    let reader = RepoReader::open(dir.path()).unwrap();
    assert_eq!(reader.load_part(id, Rank(0)).unwrap()[0].data, b"a");
    let second: Vec<_> = out.iter().map(|o| *o.1.as_ref().unwrap()).collect();
    assert_eq!(second[0], second[1]);
    assert!(second[0] > id);
}

/// Review findings 3 and 7: a peer flooding rank 0 with votes (here in another rank's
/// name, faster than the retry period) can neither keep the round open past its deadline
/// nor vote for someone else.
#[test]
fn vote_flood_neither_starves_the_deadline_nor_votes_for_others() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let path = dir.path().to_path_buf();
    let t = timeouts(600, 100, 5000);
    let mut comms = loopback_comms(3, NetConfig::default()).unwrap();
    let flooder = comms.pop().unwrap();
    let c1 = comms.pop().unwrap();
    let c0 = comms.pop().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let done = done.clone();
        std::thread::spawn(move || {
            // Opened like a runtime (`AlignedRuntime::new`'s handshake).
            lazarus_coord::open_aligned_channels(&flooder).unwrap();
            let env = flooder
                .recv_envelope_timeout(
                    Some(Rank(0)),
                    Some(Tag::checkpoint(TAG_TO_PARTICIPANT)),
                    ms(10_000),
                )
                .unwrap();
            let ToParticipant::Prepare { round, .. } = postcard::from_bytes(&env.payload).unwrap()
            else {
                panic!("expected Prepare");
            };
            let forged: VoteMsg<PartReceipt> = VoteMsg {
                round,
                from: Rank(1),
                vote: Vote::Failed("forged".into()),
            };
            let bytes = postcard::to_allocvec(&forged).unwrap();
            let limit = Instant::now() + Duration::from_secs(30);
            let mut sent = 0u64;
            while Instant::now() < limit {
                if done.load(Ordering::SeqCst) {
                    return (true, sent);
                }
                let _ = flooder.send_bytes(Rank(0), Tag::checkpoint(TAG_VOTE), bytes.clone());
                sent += 1;
                std::thread::sleep(ms(2));
            }
            (false, sent)
        })
    };
    let p1 = std::thread::spawn(move || {
        let mut rt = AlignedRuntime::new(c1, participant_store(&path), t).unwrap();
        rt.set_output_markers(false);
        rt.round(&[obj(b"x")], &meta(1)).map(|c| c.checkpoint)
    });
    let mut rt0 = AlignedRuntime::new(c0, RankStore::Coordinator(repo), t).unwrap();
    rt0.set_output_markers(false);
    let r0 = rt0.round(&[obj(b"y")], &meta(1));
    done.store(true, Ordering::SeqCst);
    let (stopped_by_us, sent) = flood.join().unwrap();
    assert!(
        stopped_by_us,
        "rank 0 only decided once the flood ended ({sent} votes)"
    );
    match r0 {
        Err(RoundError::Aborted { reason, .. }) => {
            assert!(
                reason.contains("deadline") && reason.contains("Rank(2)"),
                "{reason}"
            );
            assert!(!reason.contains("forged"), "{reason}");
        }
        other => panic!("expected a deadline abort, got {other:?}"),
    }
    let e = p1.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), RoundErrorKind::Aborted, "{e}");
}

/// A hand-played rank 0 for a world of 2 with a real repository.
struct FakeRank0 {
    comm: Comm,
    repo: Repository,
}

impl FakeRank0 {
    /// Opens like a runtime (`AlignedRuntime::new`'s handshake).
    fn open(comm: Comm, repo: Repository) -> FakeRank0 {
        lazarus_coord::open_aligned_channels(&comm).unwrap();
        FakeRank0 { comm, repo }
    }

    fn prepare(
        &mut self,
        previous: Option<Decision>,
    ) -> (lazarus_store::PendingCheckpoint, RoundId) {
        let p = self.repo.begin(2).unwrap();
        let round = RoundId {
            epoch: Epoch(p.id().0),
            ckpt: p.id(),
        };
        let msg = ToParticipant::Prepare { round, previous };
        self.send(msg);
        (p, round)
    }

    fn send(&self, msg: ToParticipant) {
        self.comm
            .send_bytes(
                Rank(1),
                Tag::checkpoint(TAG_TO_PARTICIPANT),
                postcard::to_allocvec(&msg).unwrap(),
            )
            .unwrap();
    }

    /// Rank 1's vote on `round` (re-sent votes of earlier rounds are skipped).
    fn vote(&self, round: RoundId) -> VoteMsg<PartReceipt> {
        loop {
            let env = self
                .comm
                .recv_envelope_timeout(Some(Rank(1)), Some(Tag::checkpoint(TAG_VOTE)), ms(10_000))
                .expect("rank 1's vote");
            let v: VoteMsg<PartReceipt> = postcard::from_bytes(&env.payload).unwrap();
            if v.round == round {
                return v;
            }
        }
    }

    fn commit(&mut self, p: lazarus_store::PendingCheckpoint, theirs: VoteMsg<PartReceipt>) {
        let Vote::Durable(r1) = theirs.vote else {
            panic!("rank 1 failed: {:?}", theirs.vote)
        };
        let r0 = p
            .part_writer()
            .with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST)
            .write(Rank(0), &[obj(b"zero")])
            .unwrap();
        self.repo.commit(p, vec![r0, r1], meta(0)).unwrap();
    }
}

/// Review findings 5 and 6: a participant that gets no decision concludes only what the
/// repository proves (COMMIT present: commit; directory gone: abort; otherwise unknown, not
/// abort); and a Prepare that arrives while it waits for a decision is not lost.
#[test]
fn participant_without_decision_trusts_only_definite_answers_and_keeps_new_prepares() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let path: PathBuf = dir.path().to_path_buf();
    let t = timeouts(5000, 50, 700);
    let mut comms = loopback_comms(2, NetConfig::default()).unwrap();
    let c1 = comms.pop().unwrap();
    let c0 = comms.pop().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let rank1 = std::thread::spawn(move || {
        let mut rt = AlignedRuntime::new(c1, participant_store(&path), t).unwrap();
        rt.set_output_markers(false);
        for step in 1..=5u64 {
            let r = rt.round(&[obj(&[step as u8])], &meta(step));
            tx.send(r.map(|c| c.checkpoint)).unwrap();
        }
    });
    let mut f = FakeRank0::open(c0, repo);
    // 1. No decision, directory still there without COMMIT: unknown, never "aborted".
    let (_p1, r1) = f.prepare(None);
    f.vote(r1);
    let e = rx.recv().unwrap().unwrap_err();
    assert_eq!(e.kind(), RoundErrorKind::OutcomeUnknown, "{e}");
    // 2. No decision, directory gone (rank 0 collected the round): aborted.
    let (p2, r2) = f.prepare(None);
    f.vote(r2);
    f.repo.abort(p2).unwrap();
    let e = rx.recv().unwrap().unwrap_err();
    assert_eq!(e.kind(), RoundErrorKind::Aborted, "{e}");
    // 3. No decision, COMMIT written: committed.
    let (p3, r3) = f.prepare(None);
    let v = f.vote(r3);
    f.commit(p3, v);
    assert_eq!(rx.recv().unwrap().unwrap(), r3.ckpt);
    // 4. The decision of round 4 is lost and round 5's Prepare arrives while rank 1 still
    //    waits: round 4 is resolved from the repository, and round 5 is written at the
    //    next call without waiting for a Prepare that was already consumed.
    let (p4, r4) = f.prepare(None);
    let v = f.vote(r4);
    f.commit(p4, v);
    let (p5, r5) = f.prepare(None);
    assert_eq!(rx.recv().unwrap().unwrap(), r4.ckpt);
    let v = f.vote(r5);
    f.commit(p5, v);
    f.send(ToParticipant::Decided(Decision {
        round: r5,
        outcome: Outcome::Commit,
    }));
    assert_eq!(rx.recv().unwrap().unwrap(), r5.ckpt);
    rank1.join().unwrap();
}

/// Review (2026-12-07): a round aborted by its deadline was fatal on rank 0 (which knew
/// the reason: a missing vote) and retryable on rank 1 (which never learns it): rank 0
/// stopped while rank 1 went on to wait for a round that never started. Every rank must
/// make the same decision about going on.
#[test]
fn ranks_agree_whether_a_deadline_abort_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let t = timeouts(500, 50, 5000);
    let out = run_ranks(3, repo, t, |r, rt| {
        if r == 2 {
            // Alive but silent: never votes, so rank 0 aborts by the deadline.
            std::thread::sleep(ms(2500));
            return None;
        }
        Some(rt.round(&[obj(b"x")], &meta(1)).map(|c| c.checkpoint))
    });
    let errs: Vec<RoundError> = out
        .into_iter()
        .take(2)
        .map(|r| r.unwrap().unwrap_err())
        .collect();
    for (r, e) in errs.iter().enumerate() {
        assert_eq!(e.kind(), RoundErrorKind::Aborted, "rank {r}: {e}");
    }
    assert!(
        errs[0].to_string().contains("deadline"),
        "rank 0 knows why: {}",
        errs[0]
    );
    assert_eq!(
        errs[0].is_retryable(),
        errs[1].is_retryable(),
        "rank 0 says {}, rank 1 says {}",
        errs[0],
        errs[1]
    );
    assert!(
        errs[0].is_retryable(),
        "a slow rank may vote in time next round"
    );
}

/// With every abort retryable (`AbortReason::retryable`), a rank that rank 0 saw die in
/// the round is reported by rank 0 as that peer's net error, not as a retryable abort:
/// rank 0 must not go on as if a slow rank had missed the deadline. In-process ranks
/// (`local_comms`): a rank dropped while its thread unwinds is failed, not finished.
#[test]
fn rank0_reports_a_rank_that_died_in_the_round_as_a_net_error() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let path = dir.path().to_path_buf();
    let t = timeouts(5000, 50, 5000);
    let mut comms = lazarus_net::local_comms(3).unwrap();
    let c2 = comms.pop().unwrap();
    let c1 = comms.pop().unwrap();
    let c0 = comms.pop().unwrap();
    // Rank 2 opens its runtime with the others (collective), then dies before the round.
    let path2 = path.clone();
    let dead = std::thread::spawn(move || {
        let _held = AlignedRuntime::new(c2, participant_store(&path2), t).unwrap();
        std::panic::resume_unwind(Box::new("rank 2 dies on purpose"));
    });
    let p1 = std::thread::spawn(move || {
        let mut rt = AlignedRuntime::new(c1, participant_store(&path), t).unwrap();
        rt.set_output_markers(false);
        rt.round(&[obj(b"x")], &meta(1)).map(|c| c.checkpoint)
    });
    let mut rt0 = AlignedRuntime::new(c0, RankStore::Coordinator(repo), t).unwrap();
    rt0.set_output_markers(false);
    assert!(dead.join().is_err());
    let e0 = rt0.round(&[obj(b"y")], &meta(1)).unwrap_err();
    assert_eq!(e0.kind(), RoundErrorKind::Net, "{e0}");
    assert!(!e0.is_retryable(), "{e0}");
    assert!(
        e0.to_string().contains("rank 2"),
        "names the dead rank: {e0}"
    );
    let e1 = p1.join().unwrap().unwrap_err();
    assert_eq!(e1.kind(), RoundErrorKind::Aborted, "{e1}");
}

/// Regression (found by `lazarus bench levels`, 2026-12-07): a runtime opened on a
/// communicator after another one (a Job after a Job, each with a fresh repository) took
/// what the first runtime's last round left in the mailboxes as its own: round ids are
/// checkpoint ids, which two repositories repeat, and a vote or `Prepare` re-sent late
/// (rank 0 re-sends `Prepare` every `retry` while votes are missing; a participant
/// answers each with its vote again) outlives the round. Rank 0 then counted rank 1's
/// receipt of the *other repository* as its vote for checkpoint 1 and failed the commit
/// ("chunk ... is missing"), or, had the chunks been there, committed another run's part;
/// rank 1 wrote its part for a `Prepare` of the past. The fence of `AlignedRuntime::new`
/// drops what a peer sent before its runtime opened.
#[test]
fn a_vote_left_by_an_earlier_runtime_on_the_communicator_is_not_taken_for_a_new_ones() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let t = timeouts(5000, 50, 5000);
    let comms = loopback_comms(2, NetConfig::default()).unwrap();
    let paths = [first.path().to_path_buf(), second.path().to_path_buf()];
    let handles: Vec<_> = comms
        .into_iter()
        .map(|comm| {
            let paths = paths.clone();
            std::thread::spawn(move || {
                let me = comm.rank();
                let store = |p: &Path| {
                    if me == Rank(0) {
                        RankStore::Coordinator(Repository::open(p, RepoOptions::default()).unwrap())
                    } else {
                        participant_store(p)
                    }
                };
                // The first runtime: one committed round, then what a late re-send
                // leaves behind: rank 1's vote for round 1 again, rank 0's Prepare again.
                let mut a = AlignedRuntime::new(comm.clone(), store(&paths[0]), t).unwrap();
                a.set_output_markers(false);
                let c = a.round(&[obj(b"first run")], &meta(1)).unwrap();
                let round = RoundId {
                    epoch: Epoch(c.checkpoint.0),
                    ckpt: c.checkpoint,
                };
                comm.barrier().unwrap();
                if me == Rank(1) {
                    let stale = VoteMsg {
                        round,
                        from: me,
                        vote: Vote::Durable(c.receipt.clone()),
                    };
                    let bytes = postcard::to_allocvec(&stale).unwrap();
                    comm.send_bytes(Rank(0), Tag::checkpoint(TAG_VOTE), bytes)
                        .unwrap();
                } else {
                    let stale = ToParticipant::Prepare {
                        round,
                        previous: None,
                    };
                    let bytes = postcard::to_allocvec(&stale).unwrap();
                    comm.send_bytes(Rank(1), Tag::checkpoint(TAG_TO_PARTICIPANT), bytes)
                        .unwrap();
                }
                drop(a);
                // The second runtime, on another (fresh) repository: its round 1 too.
                let mut b = AlignedRuntime::new(comm.clone(), store(&paths[1]), t).unwrap();
                b.set_output_markers(false);
                if me == Rank(1) {
                    // Rank 1's part lands late: on the old code rank 0 had its stale vote
                    // long before.
                    std::thread::sleep(ms(300));
                }
                let data = format!("second run, {me}");
                b.round(&[obj(data.as_bytes())], &meta(1))
                    .map(|c| c.checkpoint)
            })
        })
        .collect();
    let ids: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let id = match &ids[0] {
        Ok(id) => *id,
        Err(e) => panic!("rank 0's first round on the second repository: {e}"),
    };
    assert_eq!(ids[1].as_ref().ok(), Some(&id), "{ids:?}");
    let reader = RepoReader::open(second.path()).unwrap();
    for r in 0..2u32 {
        let o = reader.load_part(id, Rank(r)).unwrap();
        assert_eq!(o[0].data, format!("second run, rank {r}").into_bytes());
    }
}

/// The same on one repository, where it was silent: a program that drops its Job after a
/// retryable abort and opens a new one on the same communicator. A `Durable` vote for the
/// aborted round arrived after rank 0 had decided (a re-sent vote, or rank 0's own vote to
/// itself when another rank's `Failed` came first), so it stayed in rank 0's mailbox; the
/// new runtime's first round reuses the aborted round's id (its directory was collected),
/// and on the old code rank 0 took that vote, a receipt whose chunks were still in the
/// repository, and committed that rank's part of the *aborted* round: a restore gave it
/// the wrong state. Rank 0's channel to itself is opened like the others (a first version
/// of the fence covered only the other ranks' channels: found in review).
#[test]
fn a_vote_of_an_aborted_round_is_not_committed_by_the_next_runtime_on_the_same_repository() {
    let dir = tempfile::tempdir().unwrap();
    let t = timeouts(5000, 50, 5000);
    let path = dir.path().to_path_buf();
    let handles: Vec<_> = loopback_comms(2, NetConfig::default())
        .unwrap()
        .into_iter()
        .map(|comm| {
            let path = path.clone();
            std::thread::spawn(move || {
                let me = comm.rank();
                let store = || {
                    if me == Rank(0) {
                        RankStore::Coordinator(
                            Repository::open(&path, RepoOptions::default()).unwrap(),
                        )
                    } else {
                        participant_store(&path)
                    }
                };
                let mut a = AlignedRuntime::new(comm.clone(), store(), t).unwrap();
                a.set_output_markers(false);
                let data = format!("step 1, {me}");
                let first = a.round(&[obj(data.as_bytes())], &meta(1)).unwrap();
                // Round 2 aborts. Each rank's part of it is durable (its chunks stay in the
                // repository after the abort) and a `Durable` vote for it is left in rank
                // 0's mailbox, as a vote re-sent for a re-sent `Prepare` is, or rank 0's
                // own vote when another rank's `Failed` decided the round first (here
                // each rank writes its part and sends that vote by hand, rank 0 to
                // itself, then votes `Failed`: the same leftovers, deterministically).
                let started = a.begin_round(&meta(2)).unwrap();
                let ckpt = started.checkpoint();
                // Round ids are the checkpoint id twice (`AlignedRuntime::begin_round`).
                let round = RoundId {
                    epoch: Epoch(ckpt.0),
                    ckpt,
                };
                let stale_data = format!("step 2 of the aborted round, {me}");
                let receipt = lazarus_store::PartWriter::open(&path, ckpt, RepoOptions::default())
                    .unwrap()
                    .with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST)
                    .write(me, &[obj(stale_data.as_bytes())])
                    .unwrap();
                let stale = VoteMsg {
                    round,
                    from: me,
                    vote: Vote::Durable(receipt),
                };
                let e = a
                    .complete_round(started, Err("fails on purpose".into()), &meta(2))
                    .unwrap_err();
                assert_eq!(e.kind(), RoundErrorKind::Aborted, "{e}");
                let bytes = postcard::to_allocvec(&stale).unwrap();
                comm.send_bytes(Rank(0), Tag::checkpoint(TAG_VOTE), bytes)
                    .unwrap();
                comm.barrier().unwrap();
                drop(a);
                // The program goes on with a new runtime on the same repository.
                let mut b = AlignedRuntime::new(comm.clone(), store(), t).unwrap();
                b.set_output_markers(false);
                if me == Rank(1) {
                    std::thread::sleep(ms(300));
                }
                let data = format!("step 2, {me}");
                assert_eq!(first.checkpoint, CheckpointId(1));
                b.round(&[obj(data.as_bytes())], &meta(2))
                    .map(|c| c.checkpoint)
            })
        })
        .collect();
    let ids: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Whatever the ranks said (on the old code rank 1 failed with "a round committed
    // without this rank's receipt", too late): a committed checkpoint 2 holds the new
    // runtime's parts, never the aborted round's.
    let reader = RepoReader::open(dir.path()).unwrap();
    if reader.commit_record(CheckpointId(2)).is_ok() {
        for r in 0..2u32 {
            let o = reader.load_part(CheckpointId(2), Rank(r)).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&o[0].data),
                format!("step 2, rank {r}"),
                "committed checkpoint 2 of rank {r}"
            );
        }
    }
    assert!(
        ids.iter().all(|id| matches!(id, Ok(CheckpointId(2)))),
        "{ids:?}"
    );
}

/// Review (2026-12-07): with every abort retryable on every rank, a rank alive but stuck
/// made every later round abort by its deadline, for as long as the program went on
/// (before, rank 0 stopped at the first deadline abort and the others once no round
/// started). The third abort in a row is not retryable, on every rank alike; a commit
/// resets the count.
#[test]
fn the_third_abort_in_a_row_is_not_retryable_on_any_rank() {
    use lazarus_coord::MAX_ABORTS_IN_A_ROW;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let t = timeouts(300, 50, 5000);
    let rounds = MAX_ABORTS_IN_A_ROW as usize + 1;
    let out = run_ranks(3, repo, t, move |r, rt| {
        let mut seen = Vec::new();
        // One commit, then rank 2 stays silent: the aborts count from the commit on.
        if r == 2 {
            rt.round(&[obj(b"x")], &meta(1)).unwrap();
            std::thread::sleep(ms(300 * rounds as u64 + 1500));
            return seen;
        }
        rt.round(&[obj(b"x")], &meta(1)).unwrap();
        for step in 2..2 + rounds as u64 {
            match rt.round(&[obj(b"x")], &meta(step)) {
                Err(e) => {
                    assert_eq!(e.kind(), RoundErrorKind::Aborted, "rank {r}: {e}");
                    seen.push(e.is_retryable());
                }
                Ok(c) => panic!("rank {r}: round {step} committed {}", c.checkpoint),
            }
        }
        seen
    });
    let mut expected = vec![true; MAX_ABORTS_IN_A_ROW as usize - 1];
    expected.extend([false, false]);
    assert_eq!(out[0], expected, "rank 0");
    assert_eq!(out[1], expected, "rank 1");
}

/// Review (2026-12-07): rank 0 failing to begin a round (creating the checkpoint's
/// directory: a full disk, an I/O error) returned the store's error, retryable, although
/// no `Prepare` went out: the other ranks still waited in that step's call, and a retry by
/// rank 0 at a later step began a round they joined with their state of the earlier step,
/// a COMMIT mixing two steps. The error is now never retryable.
#[test]
fn a_round_rank_0_could_not_begin_is_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let t = timeouts(2000, 50, 1500);
    let checkpoints = dir.path().join("checkpoints");
    let out = run_ranks(2, repo, t, move |r, rt| {
        let first = rt.round(&[obj(b"x")], &meta(1)).map(|c| c.checkpoint);
        assert!(first.is_ok(), "rank {r}: {first:?}");
        rt.comm().barrier().unwrap();
        if r == 0 {
            // The next checkpoint's directory cannot be created.
            std::fs::rename(&checkpoints, checkpoints.with_extension("moved")).unwrap();
            std::fs::write(&checkpoints, b"not a directory").unwrap();
        }
        rt.round(&[obj(b"y")], &meta(2)).map(|c| c.checkpoint)
    });
    let e0 = out[0].as_ref().unwrap_err();
    assert!(!e0.is_retryable(), "rank 0 must not go on: {e0}");
    assert!(e0.to_string().contains("could not begin"), "{e0}");
    // Rank 1 never got a Prepare: it ends when rank 0 leaves (or by its deadline).
    let e1 = out[1].as_ref().unwrap_err();
    assert!(!e1.is_retryable(), "{e1}");
}

/// Review finding 2 (2026-12-07): when writing COMMIT failed and COMMIT is definitely not
/// there, rank 0 decides Abort; `Repository::commit` had consumed the pending checkpoint,
/// so `CollectLeftovers` found nothing and the directory stayed. A rank that missed the
/// decision then read "pending" (outcome unknown, not retryable) while rank 0 said
/// "aborted, retry". The directory must be gone before Abort is announced: by the time any
/// rank learns the abort, the repository says so too, and the next round commits.
///
/// Rank 0's part is large and cut into small chunks, so its manifest is a file in the
/// directory (too big to ride in the vote): no participant's `discard_part` can empty
/// the directory, only rank 0's removal.
#[test]
fn an_abort_after_a_failed_commit_write_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RepoOptions {
        chunk_size: lazarus_store::MIN_CHUNK_SIZE,
        ..RepoOptions::default()
    };
    let repo = Repository::open(dir.path(), opts).unwrap();
    let path = dir.path().to_path_buf();
    let t = timeouts(5000, 50, 5000);
    let p = path.clone();
    let out = run_ranks(2, repo, t, move |r, rt| {
        let path = &p;
        // 8 MiB in 4 KiB chunks: a manifest over the inline limit on rank 0.
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + r) as u8).collect();
        let started = rt.begin_round(&meta(1)).unwrap();
        let id = started.checkpoint();
        // Rank 0's part writer keeps the budget it was begun with (none); only what the
        // repository writes from now on, COMMIT, finds the disk full.
        if let Some(repo) = rt.repository_mut() {
            repo.set_write_budget(0);
        }
        let first = rt.complete_round(started, Ok(&[obj(&big)]), &meta(1));
        // What a rank that missed `Decided` would read, at the moment this rank returns.
        let presence = RepoReader::open(path).unwrap().commit_presence(id).unwrap();
        if let Some(repo) = rt.repository_mut() {
            repo.set_write_budget(u64::MAX);
        }
        let second = rt.round(&[obj(b"b")], &meta(2)).map(|c| c.checkpoint);
        (id, first.map(|c| c.checkpoint), presence, second)
    });
    for (r, (id, first, presence, _)) in out.iter().enumerate() {
        let e = first.as_ref().unwrap_err();
        assert_eq!(e.kind(), RoundErrorKind::Aborted, "rank {r}: {e}");
        assert!(e.is_retryable(), "rank {r}: {e}");
        assert_eq!(
            *presence,
            lazarus_store::Presence::Gone,
            "rank {r}: checkpoint {id} after its abort"
        );
        assert!(!path.join("checkpoints").join(id.to_string()).exists());
    }
    let second: Vec<_> = out.iter().map(|o| *o.3.as_ref().unwrap()).collect();
    assert_eq!(second[0], second[1]);
    assert!(second[0] > out[0].0);
    let reader = RepoReader::open(dir.path()).unwrap();
    assert_eq!(reader.load_part(second[0], Rank(1)).unwrap()[0].data, b"b");
}
