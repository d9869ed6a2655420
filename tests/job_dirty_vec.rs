//! `DirtyVec` through the Job API (2PC round of a world of one): a derived struct with a
//! tracked field checkpoints every step, mutations go through the tracked API, and a new
//! Job restores exactly the last committed value; the write after a restore and the
//! rounds around it are the ones where a wrong hint would show.

use lazarus::store::{RepoOptions, RepoReader};
use lazarus::{Checkpoint, DirtyVec, Job};

#[derive(Checkpoint, Clone, Debug, PartialEq)]
struct Sim {
    step: u64,
    field: DirtyVec<f64>,
}

fn open(dir: &std::path::Path) -> Job {
    Job::builder()
        .repo(dir)
        .repo_options(RepoOptions {
            chunk_size: 4096,
            ..RepoOptions::default()
        })
        .every_steps(1)
        .keep(3)
        .open()
        .unwrap()
}

fn run(job: &mut Job, sim: &mut Sim, steps: u64) {
    for _ in 0..steps {
        let s = sim.step;
        // A few scattered writes per step: most 4 KiB chunks stay clean.
        for k in 0..3u64 {
            let i = ((s * 7919 + k * 104_729) % sim.field.len() as u64) as usize;
            sim.field.set(i, s as f64 + k as f64 * 0.5);
        }
        if s % 5 == 4 {
            if let Some(r) = sim.field.slice_mut(100..900) {
                r.iter_mut().for_each(|x| *x *= -1.0);
            }
        }
        sim.step += 1;
        job.checkpoint(&*sim).unwrap();
    }
}

#[test]
fn tracked_field_checkpoints_and_restores_through_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let init = || Sim {
        step: 0,
        field: (0..64 * 512).map(|i| i as f64).collect(), // 64 chunks of 4 KiB
    };
    let mut job = open(dir.path());
    let mut sim = job.restore_or_init(init).unwrap();
    run(&mut job, &mut sim, 12);
    let saved = sim.clone();
    drop(job);

    let mut job = open(dir.path());
    let mut back = job.restore_or_init(init).unwrap();
    assert_eq!(
        back, saved,
        "restored value differs from the last checkpoint"
    );
    // Keep going after the restore (everything dirty once, then hinted again).
    run(&mut job, &mut back, 6);
    run(&mut job, &mut sim, 6);
    assert_eq!(back, sim);
    drop(job);
    let mut job = open(dir.path());
    assert_eq!(job.restore_or_init(init).unwrap(), sim);
    assert!(RepoReader::open(dir.path())
        .unwrap()
        .verify(&|_, _| {})
        .unwrap()
        .problems
        .is_empty());
}
