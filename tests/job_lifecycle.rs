//! The Job's life cycle (issue #12): initialisers that run only when needed and may fail,
//! `finish` recording completion so a rerun does no work again, and the cost each
//! checkpoint reports (Job API and COMMIT).

use lazarus::coord::meta::{RecordedCost, FINISHED_KEY};
use lazarus::store::RepoReader;
use lazarus::{Checkpoint, Job, JobError};
use std::cell::Cell;
use std::path::Path;

#[derive(Checkpoint, Debug, Clone, Default, PartialEq)]
struct Sim {
    x: Vec<f64>,
    #[checkpoint(skip)]
    scratch: Vec<f64>,
}

impl Sim {
    fn initial() -> Sim {
        Sim {
            x: (0..2048).map(f64::from).collect(),
            scratch: vec![7.0; 3],
        }
    }
    fn work(&mut self) {
        self.x.iter_mut().for_each(|v| *v = *v * 0.5 + 1.0);
    }
}

fn open(repo: &Path) -> Job {
    Job::builder()
        .repo(repo)
        .every_steps(4)
        .keep(3)
        .open()
        .unwrap()
}

/// Runs the documented loop to `n` and finishes when `finish`; returns the iterations this
/// run executed and the job.
fn run_to(repo: &Path, n: u64, finish: bool) -> (u64, Sim, Job) {
    let mut job = open(repo);
    let mut sim = job.restore_or_init(Sim::initial).unwrap();
    let mut ran = 0;
    while job.step() < n {
        job.checkpoint(&sim).unwrap();
        sim.work();
        ran += 1;
    }
    if finish {
        job.finish(&sim).unwrap();
    }
    (ran, sim, job)
}

fn reference(n: u64) -> Sim {
    let mut s = Sim::initial();
    (0..n).for_each(|_| s.work());
    s
}

#[test]
fn init_runs_once_per_start_and_restore_or_init_with_never_builds_the_initial_state_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (inits, shells) = (Cell::new(0), Cell::new(0));
    let count_init = || {
        inits.set(inits.get() + 1);
        Ok::<_, std::io::Error>(Sim::initial())
    };
    let count_shell = || {
        shells.set(shells.get() + 1);
        Sim::default()
    };

    // Fresh start: only `init`.
    let mut job = open(&repo);
    let mut sim = job.restore_or_init_with(count_shell, count_init).unwrap();
    assert_eq!((inits.get(), shells.get()), (1, 0));
    while job.step() < 6 {
        job.checkpoint(&sim).unwrap();
        sim.work();
    }
    drop(job);

    // Restore: only `shell`; the expensive/fallible initial state is never built.
    let mut job = open(&repo);
    let restored = job.restore_or_init_with(count_shell, count_init).unwrap();
    assert_eq!((inits.get(), shells.get()), (1, 1));
    assert_eq!(job.step(), 4);
    assert_eq!(restored.x, reference(4).x);
    assert!(
        restored.scratch.is_empty(),
        "skipped fields come from the shell"
    );
    drop(job);

    // restore_or_init and restore_or_try_init: their one initialiser runs exactly once
    // on a restore too (it is the value restored into), and once on a fresh start.
    for fresh in [false, true] {
        let repo = if fresh {
            dir.path().join("empty")
        } else {
            repo.clone()
        };
        let calls = Cell::new(0);
        let mut job = open(&repo);
        job.restore_or_init(|| {
            calls.set(calls.get() + 1);
            Sim::initial()
        })
        .unwrap();
        drop(job);
        let mut job = open(&repo);
        let s = job
            .restore_or_try_init(|| {
                calls.set(calls.get() + 1);
                Ok::<_, String>(Sim::initial())
            })
            .unwrap();
        assert_eq!(calls.get(), 2, "fresh={fresh}");
        assert_eq!(s.scratch, vec![7.0; 3], "skip field keeps the init value");
    }
}

#[test]
fn no_initialiser_runs_when_the_restore_fails_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    run_to(&repo, 8, false);
    // Damage every committed checkpoint: the restore refuses (OnAllDamaged::Refuse).
    for e in std::fs::read_dir(repo.join("checkpoints")).unwrap() {
        let commit = e.unwrap().path().join("COMMIT");
        if let Ok(mut b) = std::fs::read(&commit) {
            let last = b.len() - 2;
            b[last] ^= 0x20;
            std::fs::write(&commit, b).unwrap();
        }
    }
    let mut job = open(&repo);
    let e = job
        .restore_or_init_with(
            || -> Sim { panic!("shell built although nothing is restored") },
            || -> Result<Sim, String> { panic!("initial state built although the job refuses") },
        )
        .unwrap_err();
    assert!(matches!(e, JobError::AllDamaged { .. }), "{e}");
}

#[test]
fn a_failing_initialiser_fails_every_rank_and_names_the_rank() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for round in ["fresh start", "restore"] {
        let results = lazarus::local(3, |comm| {
            let rank = comm.rank().0;
            let mut job = Job::builder()
                .repo(&repo)
                .comm(comm)
                .every_steps(2)
                .open()
                .unwrap();
            let got = job.restore_or_try_init(|| {
                if rank == 1 && round == "restore" || rank == 2 && round == "fresh start" {
                    Err(format!("input file for rank {rank} is missing"))
                } else {
                    Ok(Sim::initial())
                }
            });
            got.map(|_| job.step()).map_err(|e| e.to_string())
        })
        .unwrap();
        let bad = if round == "restore" { 1 } else { 2 };
        for (r, got) in results.iter().enumerate() {
            let e = got.as_ref().unwrap_err();
            if r == bad {
                assert!(
                    e.contains(&format!("on rank {bad}")) && e.contains("is missing"),
                    "{round}, rank {r}: {e}"
                );
            } else {
                assert!(
                    e.contains(&format!("rank {bad} could not")) && e.contains("is missing"),
                    "{round}, rank {r}: {e}"
                );
            }
        }
        if round == "fresh start" {
            // Write one checkpoint so that the next round restores.
            lazarus::local(3, |comm| {
                let mut job = Job::builder().repo(&repo).comm(comm).open().unwrap();
                let s = job.restore_or_init(Sim::initial).unwrap();
                job.checkpoint_now(&s).unwrap();
            })
            .unwrap();
        }
    }
}

/// Regression (issue #12): a finished job started again restored its last checkpoint and
/// redid the steps after it. With `finish`, a rerun does no iteration at all.
#[test]
fn a_finished_job_started_again_redoes_no_work() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (ran, sim, job) = run_to(&repo, 10, true);
    assert_eq!(ran, 10);
    assert!(job.is_finished());
    let final_id = job.restore_report().map(|r| r.checkpoint);
    assert_eq!(final_id, None, "first run started fresh");
    let finished = job.last_checkpoint().unwrap().checkpoint;
    drop(job);
    let reader = RepoReader::open(&repo).unwrap();
    let commit = reader.commit_record(finished).unwrap();
    assert_eq!(
        (commit.step, commit.app.get(FINISHED_KEY)),
        (10, Some(&"true".into()))
    );
    let ids_before = reader.committed().unwrap().len();

    for _ in 0..2 {
        let (ran, again, job) = run_to(&repo, 10, true);
        assert_eq!(ran, 0, "a finished job does no work again");
        assert_eq!(
            again,
            Sim {
                scratch: again.scratch.clone(),
                ..sim.clone()
            }
        );
        assert_eq!(again.x, reference(10).x);
        assert!(job.is_finished() && job.finished_at() == Some(10));
        assert!(job.restore_report().unwrap().finished);
        assert!(
            job.last_checkpoint().is_none(),
            "finish saved nothing again"
        );
    }
    let ids_after = RepoReader::open(&repo).unwrap().committed().unwrap().len();
    assert_eq!(ids_before, ids_after, "reruns wrote no checkpoint");

    // Without finish, the rerun redoes the steps after the last checkpoint (step 8).
    let dir2 = tempfile::tempdir().unwrap();
    run_to(dir2.path(), 10, false);
    let (ran, again, job) = run_to(dir2.path(), 10, false);
    assert_eq!((ran, job.is_finished()), (2, false));
    assert_eq!(again.x, reference(10).x);
}

#[test]
fn a_finished_job_can_be_extended_and_finished_again() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    run_to(&repo, 6, true);
    let mut job = open(&repo);
    let mut sim = job.restore_or_init(Sim::initial).unwrap();
    assert!(job.is_finished());
    let mut ran = 0;
    while job.step() < 9 {
        job.checkpoint(&sim).unwrap();
        assert!(!job.is_finished(), "counting a step reopens the job");
        sim.work();
        ran += 1;
    }
    assert_eq!((ran, job.finished_at()), (3, Some(6)));
    job.finish(&sim).unwrap();
    assert_eq!(job.finished_at(), Some(9));
    drop(job);
    let (ran, again, _) = run_to(&repo, 9, true);
    assert_eq!(ran, 0);
    assert_eq!(again.x, reference(9).x);
}

#[test]
fn every_checkpoint_reports_its_stall_write_and_bytes_in_the_job_and_in_commit() {
    let dir = tempfile::tempdir().unwrap();
    // Synchronous: the report is there when the call returns (tests/job_async.rs covers
    // the asynchronous report, which appears once the flush committed).
    let mut job = Job::builder()
        .repo(dir.path())
        .sync_writes()
        .never_checkpoint()
        .open()
        .unwrap();
    assert!(job.last_checkpoint().is_none());
    let mut sim = job.restore_or_init(Sim::initial).unwrap();
    let first = job.checkpoint_now(&sim).unwrap();
    let r = *job.last_checkpoint().unwrap();
    assert_eq!((r.checkpoint, r.step), (first, 0));
    assert!(
        r.stall >= r.write && r.write > std::time::Duration::ZERO,
        "{r}"
    );
    assert_eq!(r.logical_bytes, 2048 * 8, "{r}");
    assert!(r.written_bytes > 0, "{r}");
    // Nothing changed: the next checkpoint writes no chunk (deduplicated).
    let second = job.checkpoint_now(&sim).unwrap();
    assert_eq!(job.last_checkpoint().unwrap().written_bytes, 0);
    sim.work();
    job.checkpoint(&sim).unwrap();
    assert_eq!(
        job.last_checkpoint().unwrap().checkpoint,
        second,
        "no policy checkpoint"
    );
    drop(job);
    let reader = RepoReader::open(dir.path()).unwrap();
    for id in [first, second] {
        let cost = RecordedCost::from_app(&reader.commit_record(id).unwrap().app);
        let (stall, write) = (cost.stall.unwrap(), cost.write.unwrap());
        assert!(
            stall >= write && write > std::time::Duration::ZERO,
            "{cost:?}"
        );
    }
}

#[test]
fn app_keys_with_the_reserved_prefix_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = Job::builder()
        .repo(dir.path())
        .app("lazarus.finished", "true")
        .open()
        .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}

/// Regression: `checkpoint_now` at the finished step after `finish` committed a newer
/// checkpoint not marked finished, but the Job still said finished and a second `finish`
/// saved nothing: a rerun restored the unfinished one.
#[test]
fn finish_after_checkpoint_now_at_the_finished_step_records_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (_, sim, mut job) = run_to(&repo, 5, true);
    assert!(job.is_finished());
    job.checkpoint_now(&sim).unwrap();
    assert!(
        !job.is_finished(),
        "the newest checkpoint is not the finished one"
    );
    assert_eq!(job.finished_at(), Some(5), "it was recorded finished at 5");
    job.finish(&sim).unwrap();
    assert!(job.is_finished());
    drop(job);
    let mut job = open(&repo);
    job.restore_or_init(Sim::initial).unwrap();
    assert!(
        job.is_finished(),
        "the rerun restores a finished checkpoint"
    );
}
