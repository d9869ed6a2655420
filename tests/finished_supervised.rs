//! A finished job under `lazarus run --repo` (issue #12): a rank that dies after
//! `job.finish` makes the supervisor restart, the restart restores the final state and
//! does no step again, the report says no work was lost, and every output line is
//! released exactly once. Running the finished job again does nothing either.

mod common;

use common::{lazarus_run_worker, text};
use lazarus::{Checkpoint, Job};
use std::error::Error;

/// `steps` for the worker.
const WORKER_ENV: &str = "LAZARUS_TEST_FINISHED";

#[derive(Checkpoint)]
struct S {
    acc: u64,
}

fn worker(steps: u64) -> Result<(), Box<dyn Error>> {
    let comm = lazarus::init()?;
    let mut job = Job::builder().every_steps(3).comm(comm).open()?;
    let me = job.comm().rank().0;
    let mut s = job.restore_or_init(|| S { acc: 0 })?;
    while job.step() < steps {
        let i = job.checkpoint(&s)?;
        s.acc = s.acc * 31 + i + u64::from(me);
        println!("rank {me} step {i}");
    }
    job.finish(&s)?;
    let sums = job.comm().allgather(&s.acc)?;
    if me == 0 {
        println!("result={sums:?}");
    }
    // The first incarnation dies after finishing (before its ranks could exit cleanly).
    if std::env::var("LAZARUS_INCARNATION").as_deref() == Ok("0") && me == 1 {
        std::process::exit(3);
    }
    Ok(())
}

/// The rank program; does nothing unless `lazarus run` started it with `WORKER_ENV`.
#[test]
#[ignore = "a rank of the other tests, started by `lazarus run`"]
fn finished_worker() {
    if let Ok(steps) = std::env::var(WORKER_ENV) {
        let r = steps.parse().map_err(Into::into).and_then(worker);
        if let Err(e) = r {
            eprintln!("finished_worker: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(repo: &std::path::Path) -> std::process::Output {
    let env = [(WORKER_ENV, "8")];
    lazarus_run_worker("finished_worker", 2, repo, &["--max-restarts", "2"], &env)
}

#[test]
fn a_rank_dying_after_finish_loses_no_work_and_a_rerun_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = run(&repo);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the job had finished") && stderr.contains("no work is lost"),
        "the failure after finish is reported as losing nothing:\n{stderr}"
    );
    for r in 0..2 {
        for i in 0..8 {
            let line = format!("rank {r} step {i}");
            assert_eq!(
                stdout.lines().filter(|l| l.ends_with(&line)).count(),
                1,
                "{line} released exactly once:\n{stdout}"
            );
        }
    }
    let result: Vec<&str> = stdout.lines().filter(|l| l.contains("result=")).collect();
    assert!(!result.is_empty(), "{stdout}");

    // Started again: the job is finished, no step runs, the same result is printed.
    let again = run(&repo);
    let (stdout2, stderr2) = text(&again);
    assert!(again.status.success(), "{stdout2}\n{stderr2}");
    assert!(
        !stdout2.contains(" step "),
        "no step runs again:\n{stdout2}"
    );
    assert!(stdout2.contains(result[0]), "{stdout2}");
}
