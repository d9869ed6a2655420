//! Opening a Job with fast levels: what rank 0 must know from the durable repository.

use lazarus::{Checkpoint, Job, Levels};

#[derive(Checkpoint)]
struct S {
    x: Vec<u64>,
}

/// Found in review: rank 0 numbers new checkpoints above the newest job-wide number in
/// the durable repository. When listing it failed, open logged a warning and counted
/// from 0, so new numbers could repeat an L4 checkpoint's (and a later restore then
/// preferred that older checkpoint). A repository that cannot be listed now fails the
/// open, naming it.
#[test]
fn a_repository_that_cannot_be_listed_fails_the_open_of_a_job_with_levels() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let levels = || Levels::new().l1(1).l4(2).dir(dir.path().join("node"));
    {
        let mut job = Job::builder()
            .repo(&repo)
            .levels(levels())
            .every_steps(1)
            .open()
            .unwrap();
        let s = job.restore_or_init(|| S { x: vec![1; 1024] }).unwrap();
        while job.step() < 4 {
            job.checkpoint(&s).unwrap();
        }
        job.finish(&s).unwrap();
    }
    // A checkpoint entry that is a file, not a directory: listing stats `<id>/COMMIT`.
    std::fs::write(repo.join("checkpoints").join("0000000000000099"), b"x").unwrap();
    let r = Job::builder().repo(&repo).levels(levels()).open();
    let err = match r {
        Ok(_) => panic!("open succeeded although the repository cannot be listed"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&repo.display().to_string()), "{err}");
}
