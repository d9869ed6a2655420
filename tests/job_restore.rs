//! Job API against a real on-disk repository: step counting across restarts, fallback past
//! damaged checkpoints, schema mismatch errors, skipped fields rebuilt by the hook.

use lazarus::format::CheckpointId;
use lazarus::store::RepoReader;
use lazarus::{Checkpoint, Job, JobError, OnAllDamaged, StateError};
use std::path::{Path, PathBuf};

#[derive(Checkpoint, Debug, Clone, PartialEq)]
#[checkpoint(after_restore = "Counter::rebuild")]
struct Counter {
    iters: u64,
    data: Vec<u32>,
    #[checkpoint(skip)]
    sum: u64,
    #[checkpoint(skip)]
    rebuilt: bool,
}

impl Counter {
    fn new() -> Self {
        Counter {
            iters: 0,
            data: vec![0; 4096],
            sum: 0,
            rebuilt: false,
        }
    }
    fn rebuild(&mut self) -> Result<(), StateError> {
        self.sum = self.data.iter().map(|&x| x as u64).sum();
        self.rebuilt = true;
        Ok(())
    }
    fn work(&mut self, i: u64) {
        // Touch every element so each checkpoint has unique chunks.
        for (k, x) in self.data.iter_mut().enumerate() {
            *x = x.wrapping_mul(31).wrapping_add(i as u32 ^ k as u32);
        }
        self.sum = self.data.iter().map(|&x| x as u64).sum();
        self.iters += 1;
    }
}

fn run(
    repo: &Path,
    every: u64,
    until: u64,
    stop_after: Option<u64>,
) -> Result<(Counter, Job), JobError> {
    let mut job = Job::builder()
        .repo(repo)
        .every_steps(every)
        .keep(10)
        .open()?;
    let mut c = job.restore_or_init(Counter::new)?;
    let mut done = 0;
    while job.step() < until {
        if Some(done) == stop_after {
            break;
        }
        let i = job.checkpoint(&c)?;
        assert_eq!(
            i, c.iters,
            "checkpoint() returns the index of the iteration about to run"
        );
        c.work(i);
        done += 1;
    }
    Ok((c, job))
}

fn reference(until: u64) -> Counter {
    let mut c = Counter::new();
    for i in 0..until {
        c.work(i);
    }
    c
}

fn newest_dir(repo: &Path) -> (CheckpointId, PathBuf) {
    let reader = RepoReader::open(repo).unwrap();
    let newest = reader.committed().unwrap().last().unwrap().id;
    (newest, repo.join("checkpoints").join(newest.to_string()))
}

#[test]
fn restarts_run_exactly_the_requested_iterations() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    // First life: 23 iterations, checkpoints at steps 5, 10, 15, 20.
    let (c1, job) = run(&repo, 5, 100, Some(23)).unwrap();
    assert_eq!((c1.iters, job.step()), (23, 23));
    drop(job);
    // Second life restores step 20 and redoes 20..100.
    let (c2, job) = run(&repo, 5, 100, None).unwrap();
    let report = job.restore_report().unwrap();
    assert_eq!(report.step, 20);
    assert!(report.skipped.is_empty());
    assert_eq!(job.step(), 100);
    assert_eq!(
        c2,
        Counter {
            rebuilt: true,
            ..reference(100)
        }
    );
    drop(job);
    // Third life restores step 95; nothing saved twice at the restored step.
    let before = RepoReader::open(&repo).unwrap().committed().unwrap().len();
    let (c3, job) = run(&repo, 5, 100, None).unwrap();
    assert_eq!(job.restore_report().unwrap().step, 95);
    assert_eq!(c3.data, reference(100).data);
    let after = RepoReader::open(&repo).unwrap().committed().unwrap().len();
    assert_eq!(
        before, after,
        "restoring step 95 must not commit step 95 again"
    );
}

#[test]
fn skipped_field_is_rebuilt_by_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, job) = run(dir.path(), 3, 7, None).unwrap();
    drop(job);
    let mut job = Job::builder()
        .repo(dir.path())
        .every_steps(3)
        .open()
        .unwrap();
    let c = job
        .restore_or_init(|| Counter {
            sum: 12345,
            ..Counter::new()
        })
        .unwrap();
    assert!(c.rebuilt);
    assert_eq!(c.iters, 6);
    assert_eq!(
        c.sum,
        reference(6).sum,
        "sum recomputed from the restored data, not the init value"
    );
    assert_ne!(c1.sum, c.sum);
}

fn corrupt_file(p: &Path) {
    let mut bytes = std::fs::read(p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(p, bytes).unwrap();
}

/// Digests of the chunks of rank 0's part of checkpoint `id` (its manifest is inline in
/// COMMIT when small, format 1.1, so it is read through the reader).
fn manifest_chunks(repo: &Path, id: CheckpointId) -> Vec<String> {
    RepoReader::open(repo)
        .unwrap()
        .manifest(id, lazarus::format::Rank(0))
        .unwrap()
        .objects
        .iter()
        .flat_map(|o| o.chunks.iter().map(|c| c.digest.to_string()))
        .collect()
}

fn chunk_path(repo: &Path, digest: &str) -> PathBuf {
    repo.join("chunks").join(&digest[..2]).join(digest)
}

#[test]
fn damaged_newest_chunk_falls_back_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let (_, job) = run(repo, 4, 13, None).unwrap(); // checkpoints at 4, 8, 12
    drop(job);
    let (newest, _) = newest_dir(repo);
    let older_chunks = {
        let reader = RepoReader::open(repo).unwrap();
        let all = reader.committed().unwrap();
        manifest_chunks(repo, all[all.len() - 2].id)
    };
    let victim = manifest_chunks(repo, newest)
        .into_iter()
        .find(|d| !older_chunks.contains(d))
        .expect("newest checkpoint has a chunk of its own");
    // Same size, bad content: passes rank 0's stat-only check, caught while loading.
    corrupt_file(&chunk_path(repo, &victim));

    let mut job = Job::builder().repo(repo).every_steps(4).open().unwrap();
    let c = job.restore_or_init(Counter::new).unwrap();
    let report = job.restore_report().unwrap().clone();
    assert_eq!(report.step, 8);
    assert_eq!(c.data, reference(8).data);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].checkpoint, newest);
    let text = report.to_string();
    assert!(
        text.contains("skipped damaged checkpoint") && text.contains(&victim[..16]),
        "{text}"
    );
}

/// A damaged COMMIT and, in the next older checkpoint, a missing chunk file (caught by
/// rank 0's stat-only check, before any data is read): restore falls back past both.
#[test]
fn damaged_commit_and_missing_chunk_fall_back_further() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let (_, job) = run(repo, 2, 7, None).unwrap(); // checkpoints at 2, 4, 6
    drop(job);
    let reader = RepoReader::open(repo).unwrap();
    let ids: Vec<_> = reader.committed().unwrap().iter().map(|s| s.id).collect();
    let cdir = |id: CheckpointId| repo.join("checkpoints").join(id.to_string());
    corrupt_file(&cdir(ids[2]).join("COMMIT"));
    let older = manifest_chunks(repo, ids[0]);
    let victim = manifest_chunks(repo, ids[1])
        .into_iter()
        .find(|d| !older.contains(d))
        .expect("checkpoint 2 has a chunk of its own");
    std::fs::remove_file(chunk_path(repo, &victim)).unwrap();
    let mut job = Job::builder().repo(repo).every_steps(2).open().unwrap();
    let c = job.restore_or_init(Counter::new).unwrap();
    let report = job.restore_report().unwrap();
    assert_eq!(report.step, 2);
    assert_eq!(c.data, reference(2).data);
    let skipped: Vec<_> = report.skipped.iter().map(|d| d.checkpoint).collect();
    assert_eq!(skipped, vec![ids[2], ids[1]]);
    // And the job goes on from there, writing new checkpoints after the damaged ones.
    let mut c = c;
    while job.step() < 9 {
        let i = job.checkpoint(&c).unwrap();
        c.work(i);
    }
    assert_eq!(c.data, reference(9).data);
}

/// Issue #11 item 4, "silent fresh start": when every checkpoint is damaged,
/// `restore_or_init` used to start from scratch (all progress lost, exit 0, nobody told).
/// By default it now refuses, naming the damage and how to start fresh anyway.
#[test]
fn all_damaged_silent_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, job) = run(dir.path(), 3, 4, None).unwrap();
    drop(job);
    let (id, ndir) = newest_dir(dir.path());
    corrupt_file(&ndir.join("COMMIT"));
    let mut job = Job::builder()
        .repo(dir.path())
        .every_steps(3)
        .open()
        .unwrap();
    let e = job
        .restore_or_init(Counter::new)
        .expect_err("all checkpoints damaged: no silent fresh start");
    let msg = e.to_string();
    assert!(!e.is_retryable(), "{msg}");
    assert!(
        msg.contains("every committed checkpoint")
            && msg.contains(&format!("checkpoint {}", id.0))
            && msg.contains("COMMIT")
            && msg.contains("OnAllDamaged::StartFresh"),
        "{msg}"
    );
    drop(job);
    // Allowed explicitly: a fresh start, reported with the damage it gave up.
    let mut job = Job::builder()
        .repo(dir.path())
        .every_steps(3)
        .on_all_damaged(OnAllDamaged::StartFresh)
        .open()
        .unwrap();
    let c = job.restore_or_init(Counter::new).unwrap();
    assert_eq!((job.step(), c.iters), (0, 0));
    assert!(job.restore_report().is_none());
    let fresh = job.fresh_start().expect("a fresh start is reported");
    assert!(fresh.after_damage());
    assert_eq!(
        fresh
            .damaged
            .iter()
            .map(|d| d.checkpoint)
            .collect::<Vec<_>>(),
        vec![id]
    );
}

/// An empty repository is an ordinary fresh start under either policy, and a bad
/// `LAZARUS_ON_ALL_DAMAGED` is a configuration error naming the variable.
#[test]
fn empty_repository_is_a_plain_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::builder()
        .repo(dir.path())
        .every_steps(3)
        .open()
        .unwrap();
    job.restore_or_init(Counter::new).unwrap();
    assert!(!job.fresh_start().expect("fresh").after_damage());
    assert_eq!(
        "start-fresh".parse::<OnAllDamaged>(),
        Ok(OnAllDamaged::StartFresh)
    );
    let e = "fresh".parse::<OnAllDamaged>().unwrap_err();
    assert!(e.contains("LAZARUS_ON_ALL_DAMAGED"), "{e}");
}

#[test]
fn schema_mismatch_names_the_field() {
    #[derive(Checkpoint, Debug)]
    struct Other {
        iters: u64,
        data: Vec<u64>,
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, job) = run(dir.path(), 2, 3, None).unwrap();
    drop(job);
    let mut job = Job::builder().repo(dir.path()).open().unwrap();
    let err = job
        .restore_or_init(|| Other {
            iters: 0,
            data: vec![],
        })
        .unwrap_err();
    match &err {
        JobError::Restore {
            source, step: 2, ..
        } => assert_eq!(source.field(), "data"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("`data`"), "{err}");
    assert!(!err.is_retryable());
}

/// Regression (through a real repository, so the layout also survives the manifest's JSON):
/// a serde field whose type changed inside under the same name (two `f64` fields swapped)
/// restored the old checkpoint with the values exchanged. Now it is a restore error naming
/// the field and both layouts, not retried with older checkpoints.
#[test]
fn a_serde_field_changed_under_the_same_name_restored_swapped_values() {
    mod v1 {
        #[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
        pub struct Knobs {
            pub dt: f64,
            pub dx: f64,
        }
    }
    mod v2 {
        #[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
        pub struct Knobs {
            pub dx: f64,
            pub dt: f64,
        }
    }
    #[derive(Checkpoint, Default, Debug)]
    struct Old {
        iters: u64,
        #[checkpoint(serde)]
        knobs: v1::Knobs,
    }
    #[derive(Checkpoint, Default, Debug)]
    struct New {
        iters: u64,
        #[checkpoint(serde)]
        knobs: v2::Knobs,
    }
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::builder()
        .repo(dir.path())
        .every_steps(1)
        .open()
        .unwrap();
    let mut old = job.restore_or_init(Old::default).unwrap();
    old.knobs = v1::Knobs { dt: 0.1, dx: 2.0 };
    while job.step() < 3 {
        old.iters = job.checkpoint(&old).unwrap();
    }
    drop(job);

    let mut job = Job::builder().repo(dir.path()).open().unwrap();
    let err = job.restore_or_init(New::default).unwrap_err();
    match &err {
        JobError::Restore { source, .. } => {
            assert_eq!(source.field(), "knobs");
            assert!(
                matches!(source, StateError::LayoutMismatch { saved, restored, .. }
                    if saved == "Knobs{dt:f64,dx:f64}" && restored == "Knobs{dx:f64,dt:f64}"),
                "{source}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    // The old type still restores its values.
    drop(job);
    let mut job = Job::builder().repo(dir.path()).open().unwrap();
    let back = job.restore_or_init(Old::default).unwrap();
    assert_eq!((back.knobs.dt, back.knobs.dx), (0.1, 2.0));
}

#[test]
fn configuration_errors_are_typed() {
    std::env::remove_var(lazarus::REPO_ENV);
    assert!(matches!(Job::builder().open(), Err(JobError::NoRepo)));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Job::builder().repo(dir.path()).keep(0).open(),
        Err(JobError::Config(_))
    ));
    assert!(matches!(
        Job::builder().repo(dir.path()).every_steps(0).open(),
        Err(JobError::Config(_))
    ));
    // A second job on the same repository is refused while the first holds the lock.
    let _first = Job::builder().repo(dir.path()).open().unwrap();
    let err = Job::builder().repo(dir.path()).open().unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn retention_keeps_the_newest_k() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::builder()
        .repo(dir.path())
        .every_steps(1)
        .keep(2)
        .open()
        .unwrap();
    let mut c = job.restore_or_init(Counter::new).unwrap();
    while job.step() < 6 {
        let i = job.checkpoint(&c).unwrap();
        c.work(i);
    }
    let id = job.checkpoint_now(&c).unwrap();
    job.flush().unwrap(); // asynchronous by default: wait for the commit and retention
    let steps: Vec<u64> = RepoReader::open(dir.path())
        .unwrap()
        .committed()
        .unwrap()
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, vec![5, 6]);
    assert_eq!(
        RepoReader::open(dir.path())
            .unwrap()
            .committed()
            .unwrap()
            .last()
            .unwrap()
            .id,
        id
    );
}

/// Regression: a Job that checkpointed before `restore_or_init` wrote step-0 checkpoints
/// newer than the repository's, so the next run restored step 0, and retention deleted
/// the older run's checkpoints once `keep` new ones were committed.
#[test]
fn checkpointing_before_the_restore_decision_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (c, job) = run(&repo, 5, 10, None).unwrap();
    drop(job);
    let mut job = Job::builder()
        .repo(&repo)
        .every_steps(1)
        .keep(1)
        .open()
        .unwrap();
    let fresh = Counter::new();
    for (call, r) in [
        ("checkpoint", job.checkpoint(&fresh).map(|_| ())),
        ("checkpoint_now", job.checkpoint_now(&fresh).map(|_| ())),
        ("finish", job.finish(&fresh).map(|_| ())),
    ] {
        match r {
            Err(JobError::Config(m)) => {
                assert!(m.contains(call) && m.contains("restore_or_init"), "{m}")
            }
            other => panic!("{call} before restore_or_init: {other:?}"),
        }
    }
    assert_eq!(job.step(), 0, "a refused checkpoint counts no step");
    drop(job);
    let (again, job) = run(&repo, 5, 10, None).unwrap();
    assert_eq!(job.restore_report().map(|r| r.step), Some(5));
    assert_eq!(again.data, c.data);
}
