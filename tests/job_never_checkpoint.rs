//! `JobBuilder::never_checkpoint()`: a job that never checkpoints on its own (benchmarks),
//! while explicit checkpoints and restores still work.

use lazarus::store::RepoReader;
use lazarus::{Checkpoint, Job};

#[derive(Checkpoint, Clone, Debug, PartialEq)]
struct S {
    x: Vec<f64>,
}

#[test]
fn never_checkpoint_takes_no_checkpoint_until_asked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // `every_steps(1)` first: never_checkpoint() replaces it (src/job.rs), so a broken
    // never_checkpoint would commit at step 1 (the default 60 s policy would not within
    // 500 fast steps, and could not tell).
    let mut job = Job::builder()
        .repo(&repo)
        .every_steps(1)
        .never_checkpoint()
        .open()
        .unwrap();
    let mut s = job.restore_or_init(|| S { x: vec![1.0; 1000] }).unwrap();
    while job.step() < 500 {
        job.checkpoint(&s).unwrap();
        s.x[0] += 1.0;
    }
    let reader = RepoReader::open(&repo).unwrap();
    assert!(
        reader.committed().unwrap().is_empty(),
        "a never-checkpoint job wrote a checkpoint on its own"
    );
    // Asking explicitly still saves, and a new job restores it.
    job.checkpoint_now(&s).unwrap();
    drop(job);
    let mut again = Job::builder()
        .repo(&repo)
        .never_checkpoint()
        .open()
        .unwrap();
    let back = again.restore_or_init(|| S { x: vec![] }).unwrap();
    assert_eq!((again.step(), &back), (500, &s));
}
