//! The Job API with managed files (issue #17), one process: files follow the restored
//! checkpoint, also when the newest checkpoint is damaged and the restore falls back to
//! an older one; a crash before the first checkpoint starts the files fresh; a file
//! changed outside the job stops the restore with an error naming it.

use lazarus::format::Rank;
use lazarus::store::RepoReader;
use lazarus::{Checkpoint, Job, JobError};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Checkpoint)]
struct S {
    x: Vec<u64>,
}

#[allow(dead_code)] // example_bin is not needed here
mod common;

type Tree = BTreeMap<String, Option<Vec<u8>>>;

fn tree(root: &Path) -> Tree {
    common::disk_tree(root)
}

fn open(dir: &Path) -> Job {
    Job::builder()
        .repo(dir.join("repo"))
        .files(dir.join("files"))
        .every_steps(2)
        .keep(3)
        .open()
        .unwrap()
}

/// Runs until `stop` steps, returning the working tree at each checkpoint (by step).
fn work(job: &mut Job, s: &mut S, stop: u64, dir: &Path) -> BTreeMap<u64, Tree> {
    let files = job.files().unwrap().clone();
    if job.step() == 0 {
        files.create_dir("d").unwrap();
    }
    let mut at = BTreeMap::new();
    while job.step() < stop {
        let before = job.step();
        let i = job.checkpoint(&*s).unwrap();
        if before > 0 && before % 2 == 0 {
            at.insert(before, tree(&dir.join("files/rank-0")));
        }
        s.x.push(i);
        writeln!(files.append("log").unwrap(), "step {i}").unwrap();
        let f = files
            .options()
            .write(true)
            .create(true)
            .open("d/field")
            .unwrap();
        f.write_all_at(&i.to_le_bytes().repeat(100), (i % 3) * 800)
            .unwrap();
        if i % 2 == 1 {
            files.rename("d/field", format!("d/field-{i}")).unwrap();
        }
    }
    at
}

/// Flips the last byte of the newest checkpoint's (only) chunk of object `name`.
fn damage_newest(dir: &Path, name: &str) {
    let reader = RepoReader::open(&dir.join("repo")).unwrap();
    let newest = reader.committed().unwrap().last().unwrap().id;
    let m = reader.manifest(newest, Rank(0)).unwrap();
    let o = m.objects.iter().find(|o| o.info.name == name).unwrap();
    let hex = o.chunks[0].digest.to_hex();
    let chunk = dir.join("repo/chunks").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&chunk, bytes).unwrap();
}

/// Runs to step 5 (checkpoints at 2 and 4), lets `hurt` damage the newest checkpoint,
/// restarts: the state and the files must both be those of step 2.
fn fallback(hurt: impl FnOnce(&Path, &Job)) {
    let dir = tempfile::tempdir().unwrap();
    let mut job = open(dir.path());
    let mut s = job.restore_or_init(|| S { x: vec![] }).unwrap();
    let at = work(&mut job, &mut s, 5, dir.path());
    assert_eq!(at.keys().copied().collect::<Vec<_>>(), vec![2, 4]);
    hurt(dir.path(), &job);
    drop(job);
    let mut job = open(dir.path());
    let s = job.restore_or_init(|| S { x: vec![] }).unwrap();
    let report = job.restore_report().unwrap();
    assert_eq!(report.step, 2, "{report}");
    assert_eq!(report.skipped.len(), 1, "{report}");
    assert_eq!(s.x, vec![0, 1]);
    assert_eq!(tree(&dir.path().join("files/rank-0")), at[&2]);
}

#[test]
fn files_follow_the_state_back_past_a_damaged_newest_checkpoint() {
    fallback(|dir, _| damage_newest(dir, "x"));
}

#[test]
fn a_damaged_file_chunk_the_restore_needs_falls_back_on_every_rank() {
    // The log must come from the repository (removed since), whose copy is damaged.
    fallback(|dir, job| {
        job.files().unwrap().remove_file("log").unwrap();
        damage_newest(dir, "@files/log");
    });
}

#[test]
fn a_crash_before_the_first_checkpoint_starts_the_files_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = open(dir.path());
    let mut s = job.restore_or_init(|| S { x: vec![] }).unwrap();
    work(&mut job, &mut s, 2, dir.path());
    drop(job);
    assert!(!tree(&dir.path().join("files/rank-0")).is_empty());
    let mut job = open(dir.path());
    job.restore_or_init(|| S { x: vec![] }).unwrap();
    assert!(job.restore_report().is_none());
    assert!(tree(&dir.path().join("files/rank-0")).is_empty());
}

#[test]
fn a_file_changed_outside_the_job_stops_the_restore_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = open(dir.path());
    let mut s = job.restore_or_init(|| S { x: vec![] }).unwrap();
    work(&mut job, &mut s, 3, dir.path());
    drop(job);
    let log = dir.path().join("files/rank-0/log");
    let mut text = std::fs::read(&log).unwrap();
    text[0] = b'X';
    std::fs::write(&log, &text).unwrap();
    let mut job = open(dir.path());
    match job.restore_or_init(|| S { x: vec![] }) {
        Err(JobError::Files(e)) => {
            assert!(e.to_string().contains("rank-0/log"), "{e}");
            assert!(!JobError::Files(e).is_retryable());
        }
        Err(e) => panic!("other error: {e}"),
        Ok(_) => panic!("restored over a file changed outside the job"),
    }
    drop(job);
    let mut job = Job::builder()
        .repo(dir.path().join("repo"))
        .files(dir.path().join("files"))
        .accept_file_changes(true)
        .every_steps(2)
        .open()
        .unwrap();
    let s = job.restore_or_init(|| S { x: vec![] }).unwrap();
    assert_eq!(s.x, vec![0, 1]);
    assert_eq!(std::fs::read(&log).unwrap(), b"step 0\nstep 1\n");
}
