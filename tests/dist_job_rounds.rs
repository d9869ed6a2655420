//! Multi-rank Job over real TCP ranks in one process (`loopback_comms`): checkpoints commit
//! with one part per rank, restore gives every rank its own part, a rank that cannot write
//! aborts the round everywhere and its leftovers are collected, and a checkpoint of another
//! world size whose state is per-rank is refused, naming the field.

use lazarus::coord::Timeouts;
use lazarus::net::{loopback_comms, NetConfig};
use lazarus::{Checkpoint, Comm, Job, JobError};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Checkpoint, Clone, Debug, PartialEq)]
struct S {
    rank: u32,
    xs: Vec<f64>,
}

fn comms(n: u32) -> Vec<Comm> {
    loopback_comms(n, NetConfig::default()).expect("loopback ranks")
}

fn timeouts() -> Timeouts {
    Timeouts {
        round: Duration::from_secs(10),
        retry: Duration::from_millis(50),
        decision: Duration::from_secs(20),
    }
}

/// Runs `f(rank, comm)` on one thread per rank and returns the results in rank order.
fn each<T: Send + 'static>(
    comms: Vec<Comm>,
    f: impl Fn(u32, Comm) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let hs: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, c)| {
            let f = f.clone();
            std::thread::spawn(move || f(r as u32, c))
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

fn dirs(repo: &Path) -> Vec<(String, bool)> {
    let mut v: Vec<_> = std::fs::read_dir(repo.join("checkpoints"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("COMMIT").is_file(),
            )
        })
        .collect();
    v.sort();
    v
}

fn run(repo: PathBuf, n: u32, steps: u64) -> Vec<Result<(u64, S), String>> {
    each(comms(n), move |r, comm| {
        let mut job = Job::builder()
            .repo(&repo)
            .comm(comm)
            .every_steps(5)
            .keep(2)
            .timeouts(timeouts())
            .open()
            .map_err(|e| e.to_string())?;
        let mut s = job
            .restore_or_init(|| S {
                rank: r,
                xs: vec![r as f64; 100 + r as usize],
            })
            .map_err(|e| e.to_string())?;
        while job.step() < steps {
            job.checkpoint(&s).map_err(|e| e.to_string())?;
            for x in &mut s.xs {
                *x += 1.0;
            }
        }
        Ok((job.restore_report().map_or(0, |r| r.step), s))
    })
}

#[test]
fn every_rank_restores_its_own_part() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let first = run(repo.clone(), 3, 12);
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    // Steps 5 and 10 committed, each with 3 parts.
    assert_eq!(
        dirs(&repo),
        vec![
            ("0000000000000001".into(), true),
            ("0000000000000002".into(), true)
        ]
    );
    let again = run(repo.clone(), 3, 14);
    for (r, got) in again.into_iter().enumerate() {
        let (restored_at, s) = got.unwrap();
        assert_eq!(restored_at, 10);
        assert_eq!(s.rank, r as u32);
        assert_eq!(s.xs, vec![r as f64 + 14.0; 100 + r]);
    }
}

#[test]
fn another_world_size_with_per_rank_state_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    assert!(run(repo.clone(), 2, 6).iter().all(Result::is_ok));
    // `rank` is not declared replicated: it is per-rank state, not redistributable.
    let got = run(repo, 3, 6);
    for g in got {
        let e = g.unwrap_err();
        assert!(
            e.contains("written by 2 ranks and cannot be restored on 3")
                && e.contains("field `rank` is per-rank state")
                && e.contains("restart with 2 ranks"),
            "{e}"
        );
    }
}

#[test]
fn a_rank_that_cannot_write_aborts_the_round_and_leftovers_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let elsewhere = dir.path().join("not-the-repo");
    let results = each(comms(3), move |r, comm| {
        // Rank 2 points at a directory that is not the repository: its write fails.
        let path = if r == 2 {
            elsewhere.clone()
        } else {
            repo.clone()
        };
        // Synchronous: the round's error is this call's (tests/job_async.rs has the
        // asynchronous variant, reported by the next call).
        let mut job = Job::builder()
            .repo(&path)
            .comm(comm)
            .sync_writes()
            .every_steps(1)
            .timeouts(timeouts())
            .open()
            .unwrap();
        let s = job
            .restore_or_init(|| S {
                rank: r,
                xs: vec![1.0; 10],
            })
            .unwrap();
        job.checkpoint(&s).unwrap(); // step 0: nothing due
                                     // Ranks drop their jobs as soon as they have their outcome: a slow rank must still
                                     // read the Abort of a rank 0 that has already finished (see the regression test
                                     // `finished_notice_overtaking_the_abort_decision`).
        let e = job.checkpoint(&s).unwrap_err();
        (
            matches!(e, JobError::Round { .. }),
            e.is_retryable(),
            e.to_string(),
        )
    });
    for (r, (is_round, retryable, msg)) in results.iter().enumerate() {
        assert!(*is_round && *retryable, "rank {r}: {msg}");
        assert!(msg.contains("aborted"), "rank {r}: {msg}");
    }
    assert!(
        results[0].2.contains("rank 2"),
        "rank 0 names the failed rank: {}",
        results[0].2
    );
    assert!(
        dirs(&dir.path().join("repo")).is_empty(),
        "the aborted round was collected"
    );
}

/// A state whose `save` (on the rank given) first waits until rank 0 has finished: it
/// sends to rank 0 until the send says so, i.e. until this rank has processed rank 0's
/// goodbye. Rank 0 finishes only after deciding the round and once every rank holds
/// that decision, so the decision is already in this rank's mailbox.
struct SlowVoter {
    xs: Vec<f64>,
    wait_for_rank0: Option<Comm>,
}

impl lazarus::Checkpoint for SlowVoter {
    fn save<'a>(
        &'a self,
        out: &mut lazarus::state::StateWriter<'a>,
    ) -> Result<(), lazarus::StateError> {
        if let Some(comm) = &self.wait_for_rank0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let probe = lazarus::net::Tag::user(77);
            while comm
                .send_bytes(lazarus::format::Rank(0), probe, Vec::new())
                .is_ok()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "rank 0 never finished"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        out.field("xs", &self.xs)
    }

    fn restore(
        &mut self,
        inp: &mut lazarus::state::StateReader,
    ) -> Result<(), lazarus::StateError> {
        inp.field("xs", &mut self.xs)
    }
}

/// Regression (issue #12, "a rank's finished notice can overtake rank 0's abort
/// decision"): rank 2 cannot write, so rank 0 aborts the round at once, tells every rank
/// and finishes; rank 1, still writing, then failed to *send* its vote to the finished
/// rank 0 and reported that ("peer has finished") instead of reading the Abort already
/// waiting in its mailbox. Every rank must report the abort.
#[test]
fn finished_notice_overtaking_the_abort_decision() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let elsewhere = dir.path().join("not-the-repo");
    let results = each(comms(3), move |r, comm| {
        let path = if r == 2 {
            elsewhere.clone()
        } else {
            repo.clone()
        };
        let gate = (r == 1).then(|| comm.clone());
        let mut job = Job::builder()
            .repo(&path)
            .comm(comm)
            .sync_writes()
            .timeouts(timeouts())
            .never_checkpoint()
            .open()
            .unwrap();
        let s = job
            .restore_or_init(|| SlowVoter {
                xs: vec![1.0; 10],
                wait_for_rank0: gate,
            })
            .unwrap();
        let e = job.checkpoint_now(&s).unwrap_err();
        (matches!(e, JobError::Round { .. }), e.to_string())
    });
    for (r, (is_round, msg)) in results.iter().enumerate() {
        assert!(*is_round && msg.contains("aborted"), "rank {r}: {msg}");
    }
}

/// Review finding 8: a rank whose part of the chosen checkpoint turns out damaged while
/// loading (the cheap pre-check passes: same file size) makes every rank fall back to the
/// next older checkpoint together; no rank restores the newer one.
#[test]
fn one_damaged_part_makes_every_rank_fall_back_together() {
    use lazarus::format::Rank;
    use lazarus::store::RepoReader;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    assert!(run(repo.clone(), 3, 12).iter().all(Result::is_ok)); // steps 5 and 10
    let reader = RepoReader::open(&repo).unwrap();
    let ids: Vec<_> = reader.committed().unwrap().iter().map(|c| c.id).collect();
    let (older, newest) = (ids[0], ids[1]);
    let chunks = |id| -> Vec<String> {
        reader
            .manifest(id, Rank(2))
            .unwrap()
            .objects
            .iter()
            .flat_map(|o| o.chunks.iter().map(|c| c.digest.to_string()))
            .collect()
    };
    let old_chunks = chunks(older);
    let victim = chunks(newest)
        .into_iter()
        .find(|d| !old_chunks.contains(d))
        .expect("rank 2's newest part has a chunk of its own");
    let path = repo.join("chunks").join(&victim[..2]).join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();

    let again = run(repo.clone(), 3, 14);
    for (r, got) in again.into_iter().enumerate() {
        let (restored_at, s) = got.unwrap();
        assert_eq!(restored_at, 5, "rank {r} restored the older checkpoint");
        assert_eq!(s.xs, vec![r as f64 + 14.0; 100 + r]);
    }
}

/// A 1-rank job (through the Job API) that checkpoints `state` at step 2 into `repo`.
fn one_rank_checkpoint<T: Checkpoint + Send + 'static>(repo: &Path, state: T) {
    let repo = repo.to_path_buf();
    let state = std::sync::Mutex::new(Some(state));
    let state = std::sync::Arc::new(state);
    let done = each(comms(1), move |_, comm| -> Result<(), String> {
        let mut job = open_job(&repo, comm)?;
        let init = state.lock().unwrap().take().ok_or("state taken twice")?;
        let s = job.restore_or_init(|| init).map_err(|e| e.to_string())?;
        while job.step() < 3 {
            job.checkpoint(&s).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    assert!(done.iter().all(Result::is_ok), "{done:?}");
}

/// One rank's restored state and its restore report's `(step, written_by)`, or the error.
type Restored<T> = Result<(T, Option<(u64, u32)>), String>;

/// Every rank of an `n`-rank job restores from `repo` (`init(rank)` otherwise).
fn restore_on<T: Checkpoint + Send + 'static>(
    repo: &Path,
    n: u32,
    init: fn(u32) -> T,
) -> Vec<Restored<T>> {
    let repo = repo.to_path_buf();
    each(comms(n), move |r, comm| {
        let mut job = open_job(&repo, comm)?;
        let s = job.restore_or_init(|| init(r)).map_err(|e| e.to_string())?;
        Ok((s, job.restore_report().map(|r| (r.step, r.written_by))))
    })
}

fn open_job(repo: &Path, comm: Comm) -> Result<Job, String> {
    Job::builder()
        .repo(repo)
        .comm(comm)
        .every_steps(2)
        .timeouts(timeouts())
        .open()
        .map_err(|e| e.to_string())
}

/// Issue #11 item 3, "1 -> N restore copies per-rank state": with one old rank every field
/// used to count as "identical on every rank", so a 1-rank job's per-rank `Vec` was copied
/// to all 4 new ranks (a wrong global sum, exit 0). Whether a field is replicated must not
/// depend on the old world size: an unmarked field is per-rank and refused by name.
#[test]
fn one_to_n_restore_copies_per_rank_state() {
    #[derive(Checkpoint, Clone, Debug, PartialEq)]
    struct Part {
        mine: Vec<u64>,
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    one_rank_checkpoint(
        &repo,
        Part {
            mine: (1..=10).collect(),
        },
    );
    let got = restore_on(&repo, 4, |r| Part {
        mine: vec![u64::from(r)],
    });
    for (r, g) in got.into_iter().enumerate() {
        let e = g.expect_err("a per-rank field of a 1-rank checkpoint must not be copied");
        assert!(
            e.contains("written by 1 rank and cannot be restored on 4") && e.contains("`mine`"),
            "rank {r}: {e}"
        );
    }
}

/// The other half of item 3: the same field declared `#[checkpoint(replicated)]` restores
/// from 1 rank on 4, every rank getting the copy.
#[test]
fn one_to_n_restore_of_a_declared_replicated_field() {
    #[derive(Checkpoint, Clone, Debug, PartialEq)]
    struct Shared {
        #[checkpoint(replicated)]
        table: Vec<u64>,
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    one_rank_checkpoint(
        &repo,
        Shared {
            table: (1..=10).collect(),
        },
    );
    let got = restore_on(&repo, 4, |_| Shared { table: vec![] });
    for (r, g) in got.into_iter().enumerate() {
        let (s, report) = g.unwrap_or_else(|e| panic!("rank {r}: {e}"));
        assert_eq!(
            (s.table, report),
            ((1..=10).collect(), Some((2, 1))),
            "rank {r}"
        );
    }
}

/// Writes one checkpoint at step 2 of `parts` (one saved value per old rank) the way a
/// writer before format 1.2 did: no object records its sharing.
fn write_legacy<T: Checkpoint>(repo: &Path, parts: &[T]) {
    use lazarus::format::Rank;
    use lazarus::store::{CommitMeta, RepoOptions, Repository};
    let mut store = Repository::open(repo, RepoOptions::default()).unwrap();
    let pending = store.begin(parts.len() as u32).unwrap();
    let receipts = parts
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let mut objects = lazarus::state::save(p).unwrap();
            for o in &mut objects {
                o.info.sharing = None;
            }
            pending
                .part_writer()
                .write(Rank(r as u32), &objects)
                .unwrap()
        })
        .collect();
    let meta = CommitMeta {
        step: 2,
        ..CommitMeta::default()
    };
    store.commit(pending, receipts, meta).unwrap();
}

/// Checkpoints from before format 1.2 keep restoring: on several old ranks an identical
/// field is still taken as replicated (the old rule), while from one old rank nothing that
/// is not distributed is copied (one copy proves nothing).
#[test]
fn checkpoints_without_recorded_sharing_keep_the_old_rule_except_from_one_rank() {
    #[derive(Checkpoint, Clone, Debug, PartialEq)]
    struct Old {
        table: Vec<u64>,
    }
    let table: Vec<u64> = (1..=10).collect();
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two");
    write_legacy(
        &two,
        &[
            Old {
                table: table.clone(),
            },
            Old {
                table: table.clone(),
            },
        ],
    );
    for g in restore_on(&two, 3, |_| Old { table: vec![] }) {
        assert_eq!(g.unwrap().0.table, table);
    }
    let one = dir.path().join("one");
    write_legacy(
        &one,
        &[Old {
            table: table.clone(),
        }],
    );
    for g in restore_on(&one, 4, |_| Old { table: vec![] }) {
        let e = g.unwrap_err();
        assert!(
            e.contains("field `table` of this 1-rank checkpoint may be per-rank state"),
            "{e}"
        );
    }
}

/// A state whose save fails on demand (a rank's state that cannot be saved, as a full
/// disk or a failed capture would fail one rank alone).
struct Flaky {
    s: S,
    fail: bool,
}

impl Checkpoint for Flaky {
    fn save<'a>(
        &'a self,
        out: &mut lazarus::state::StateWriter<'a>,
    ) -> Result<(), lazarus::StateError> {
        if self.fail {
            return Err(lazarus::StateError::custom("xs", "injected save failure"));
        }
        self.s.save(out)
    }

    fn restore(
        &mut self,
        inp: &mut lazarus::state::StateReader,
    ) -> Result<(), lazarus::StateError> {
        self.s.restore(inp)
    }
}

/// Regression: a save counted as taken only on the ranks where it succeeded. After a
/// `checkpoint_now` that failed on rank 1 alone, the `checkpoint()` of the same step
/// skipped on rank 0 and saved on rank 1, whose part then joined rank 0's round of the
/// next step: a COMMIT of step 2 held rank 1's state after one iteration.
#[test]
fn a_checkpoint_now_that_failed_on_one_rank_does_not_mix_steps() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let short = Timeouts {
        round: Duration::from_secs(5),
        retry: Duration::from_millis(50),
        decision: Duration::from_secs(5),
    };
    let r = repo.clone();
    each(comms(2), move |rank, comm| {
        let mut job = Job::builder()
            .repo(&r)
            .comm(comm)
            .every_steps(1)
            .timeouts(short)
            .open()
            .unwrap();
        let s = job
            .restore_or_init(|| S {
                rank,
                xs: vec![0.0],
            })
            .unwrap();
        let mut f = Flaky { s, fail: false };
        // Iteration i leaves xs[0] == i + 1: the state after `step()` iterations holds
        // xs[0] == step().
        while job.step() < 3 {
            if job.step() == 1 {
                // Before the iteration's checkpoint: a save that fails on rank 1 only.
                f.fail = rank == 1;
                let now = job.checkpoint_now(&f);
                assert_eq!(now.is_err(), rank == 1, "rank {rank}: {now:?}");
                f.fail = false;
            }
            let _ = job.checkpoint(&f);
            f.s.xs[0] += 1.0;
        }
        let _ = job.flush();
    });
    let restored = each(comms(2), move |rank, comm| {
        let mut job = Job::builder()
            .repo(&repo)
            .comm(comm)
            .timeouts(short)
            .open()
            .unwrap();
        let s = job
            .restore_or_init(|| S {
                rank,
                xs: vec![-1.0],
            })
            .unwrap();
        (job.step(), s.xs[0])
    });
    let (step, _) = restored[0];
    assert!(
        step >= 2,
        "a checkpoint after the failed one was restored: {restored:?}"
    );
    for (rank, (at, x)) in restored.iter().enumerate() {
        assert_eq!(
            (*at, *x),
            (step, step as f64),
            "rank {rank} restored a state of another step than the checkpoint's {step}"
        );
    }
}
