//! Real-process crash tests: a child process (this test binary re-executed) is SIGKILLed at
//! every named step of the commit and GC sequences (`LAZARUS_FAILPOINT`), or at a seeded
//! random instant; the parent then checks that the last committed checkpoint is intact and
//! exact, that nothing uncommitted is restored, and that the repository is usable again
//! (stale lock taken over, leftovers collected).

mod common;

use common::*;
use lazarus_store::{RepoOptions, RepoReader, Repository};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

const CHILD_ENV: &str = "LAZARUS_TEST_CRASH_CHILD";
const N: usize = 3000; // 24 KB per rank: 6 chunks of 4 KiB

/// Child entry point: does nothing unless re-executed by a parent test.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, repo) = spec.split_once(':').expect("mode:path");
    let mut r = open_retrying(Path::new(repo));
    match mode {
        "write" => {
            checkpoint(&mut r, 2, 2, N);
        }
        "gc" => {
            r.retain(1).expect("child retain");
        }
        "loop" => {
            for step in 2.. {
                checkpoint(&mut r, 2, step, N);
                r.retain(2).expect("child retain");
            }
        }
        _ => panic!("unknown mode {mode}"),
    }
}

/// Opens the repository in the child, retrying briefly while it is locked. The parent's other
/// test threads fork children too, and a fork briefly duplicates every open descriptor, the
/// parent's just-released LOCK included, until the forked child execs; so the parent having
/// dropped its `Repository` does not yet mean the flock is free (seen once as a flaky
/// `child open` panic under heavy load).
fn open_retrying(repo: &Path) -> Repository {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Repository::open(repo, small_opts()) {
            Ok(r) => return r,
            Err(e)
                if e.kind() == lazarus_store::StoreErrorKind::Locked
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("child open: {e}"),
        }
    }
}

fn run_child(mode: &str, repo: &Path, failpoint: Option<&str>) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", repo.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match failpoint {
        Some(fp) => c.env(lazarus_store::FAILPOINT_ENV, fp),
        None => c.env_remove(lazarus_store::FAILPOINT_ENV),
    };
    c.spawn().unwrap()
}

fn assert_recovers(repo: &Path) {
    let mut r = Repository::open(repo, small_opts()).expect("reopen after crash (stale lock)");
    r.retain(10).expect("gc after crash");
    let v = RepoReader::open(repo).unwrap().verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(files(repo, ".tmp-").is_empty());
    let id = checkpoint(&mut r, 1, 50, 100);
    assert_holds(repo, id, 1, 50, 100);
}

#[test]
fn sigkill_at_every_commit_step() {
    let steps = [
        ("after_chunk_write", false),
        ("before_manifest_rename", false),
        ("after_manifest_rename", false),
        ("before_commit", false),
        ("before_commit_rename", false),
        ("after_commit_rename", true),
        ("after_commit", true),
    ];
    for (fp, committed) in steps {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Repository::open(dir.path(), small_opts()).unwrap();
        let first = checkpoint(&mut r, 2, 1, N);
        drop(r);
        let status = run_child("write", dir.path(), Some(fp)).wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{fp}: child was not killed: {status:?}"
        );
        let reader = RepoReader::open(dir.path()).unwrap();
        let (s, damage) = reader.newest_intact().unwrap().unwrap();
        assert!(damage.is_empty(), "{fp}: {damage:?}");
        if committed {
            assert!(s.id > first, "{fp}");
            assert_holds(dir.path(), s.id, 2, 2, N);
        } else {
            assert_eq!(s.id, first, "{fp}: an uncommitted checkpoint is visible");
            assert_eq!(reader.committed().unwrap().len(), 1, "{fp}");
        }
        assert_holds(dir.path(), first, 2, 1, N);
        assert_recovers(dir.path());
    }
}

#[test]
fn sigkill_during_gc() {
    for fp in ["gc_after_uncommit", "gc_during_sweep"] {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Repository::open(dir.path(), small_opts()).unwrap();
        let ids: Vec<_> = (1..=3).map(|s| checkpoint(&mut r, 2, s, N)).collect();
        drop(r);
        let status = run_child("gc", dir.path(), Some(fp)).wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{fp}");
        let reader = RepoReader::open(dir.path()).unwrap();
        let v = reader.verify(&|_, _| {}).unwrap();
        assert!(v.problems.is_empty(), "{fp}: {:?}", v.problems);
        assert!(v.intact.contains(&ids[2]), "{fp}");
        assert_holds(dir.path(), ids[2], 2, 3, N);
        assert_recovers(dir.path());
    }
}

#[test]
fn sigkill_at_random_instants() {
    let seed: u64 = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1a2a_2025);
    println!("seed = {seed}");
    let mut x = seed;
    let mut furthest = 0;
    for round in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay_ms = 20 + x % 400;
        let dir = tempfile::tempdir().unwrap();
        let mut r = Repository::open(dir.path(), small_opts()).unwrap();
        checkpoint(&mut r, 2, 1, N);
        drop(r);
        let mut child = run_child("loop", dir.path(), None);
        // The random instant is counted from the child's first checkpoint of its own (not
        // from its start, which a loaded machine can stretch past any fixed delay): every
        // round kills a child that is checkpointing.
        let started = std::time::Instant::now();
        loop {
            let step = RepoReader::open(dir.path())
                .ok()
                .and_then(|r| r.newest_intact().ok().flatten())
                .map_or(0, |(s, _)| s.step);
            if step >= 2 {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("seed {seed} round {round}: the child ended before checkpointing: {st:?}");
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "seed {seed} round {round}: the child wrote no checkpoint past step 1 in 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // The child loops forever: anything but our SIGKILL (a panic, an early exit) means
        // the round tested nothing.
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "seed {seed} round {round}: the child was not killed by us: {status:?}"
        );
        let reader = RepoReader::open(dir.path()).unwrap();
        let (s, damage) = reader.newest_intact().unwrap().unwrap();
        assert!(damage.is_empty(), "seed {seed} round {round}: {damage:?}");
        assert_holds(dir.path(), s.id, 2, s.step, N);
        assert_recovers(dir.path());
        furthest = furthest.max(s.step);
    }
    // Every round waited for the child's own checkpoints: a restore that lost them would
    // show here.
    assert!(
        furthest > 1,
        "seed {seed}: no round got past the parent's step-1 checkpoint"
    );
}

#[test]
fn live_lock_holder_in_another_process_blocks_writers() {
    let dir = tempfile::tempdir().unwrap();
    drop(Repository::open(dir.path(), RepoOptions::default()).unwrap());
    let mut child = run_child("loop", dir.path(), None);
    // Wait until the child holds the lock (its LOCK body is non-empty).
    for _ in 0..200 {
        if std::fs::metadata(dir.path().join("LOCK"))
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let e = Repository::open(dir.path(), RepoOptions::default()).unwrap_err();
    assert_eq!(e.kind(), lazarus_store::StoreErrorKind::Locked, "{e}");
    assert!(
        e.to_string().contains(&format!("pid {}", child.id())),
        "{e}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    Repository::open(dir.path(), RepoOptions::default()).expect("stale lock taken over");
}
