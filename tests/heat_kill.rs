//! Real processes: the `heat` example is SIGKILLed at seeded random moments and at the
//! store's named failpoints around a checkpoint, restarted with the same arguments until it
//! completes, and must print the checksum of a run that was never killed.
//!
//! Seed: `LAZARUS_TEST_SEED` (printed on every run) or a fixed default.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ARGS: [&str; 6] = ["--steps", "600", "--size", "128", "--every", "40"];
const DEADLINE: Duration = Duration::from_secs(120);

fn command(repo: &Path) -> Command {
    let mut c = Command::new(common::example_bin("heat"));
    c.arg("--repo")
        .arg(repo)
        .args(ARGS)
        .env_remove("LAZARUS_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn finish(mut c: Command) -> Output {
    let child = c.spawn().expect("spawning heat");
    let start = Instant::now();
    let out = child.wait_with_output().expect("waiting for heat");
    assert!(
        start.elapsed() < DEADLINE,
        "heat took {:?}",
        start.elapsed()
    );
    out
}

fn checksum_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "heat failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("checksum=") && last.len() == "checksum=".len() + 16,
        "last line {last:?}"
    );
    last.to_string()
}

/// The uninterrupted result and how long that run took.
fn reference_run() -> (String, Duration) {
    static REF: std::sync::OnceLock<(String, Duration)> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let sum = checksum_of(&finish(command(&dir.path().join("ref"))));
        (sum, t0.elapsed())
    })
    .clone()
}

fn reference() -> String {
    reference_run().0
}

/// Spawns heat and SIGKILLs it after `after` (if it is still running). True if killed;
/// and the run's stderr (heat writes a line or two there: the restore report).
fn run_and_kill(repo: &Path, after: Duration) -> (bool, String) {
    let mut child = command(repo)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning heat");
    let start = Instant::now();
    let killed = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(
                status.success(),
                "heat exited with {status:?} before being killed"
            );
            break false;
        }
        if start.elapsed() >= after {
            // SIGKILL; `wait` reaps it so its pid is dead before the next run takes the lock.
            child.kill().expect("kill -9");
            let status = child.wait().expect("wait");
            break status.signal() == Some(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (killed, err)
}

/// True if heat's stderr shows it resumed a run midway: examples/heat.rs prints the
/// RestoreReport ("restored checkpoint N at step S"), which says "(the job had finished
/// there)" for a restore of a completed run.
fn resumed_midway(stderr: &str) -> bool {
    stderr.contains("heat: restored checkpoint") && !stderr.contains("the job had finished there")
}

#[test]
fn uninterrupted_runs_agree() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        checksum_of(&finish(command(&dir.path().join("a")))),
        reference()
    );
    // Running again on a finished repository resumes from the last checkpoint: same result.
    assert_eq!(
        checksum_of(&finish(command(&dir.path().join("a")))),
        reference()
    );
}

#[test]
fn sigkill_at_seeded_random_moments() {
    let seed: u64 = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    println!("seed={seed} (set LAZARUS_TEST_SEED to reproduce)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (want, full) = reference_run();
    // Kill points are drawn over the length of a whole run, so most land mid-run.
    let span = (full.as_millis() as u64 * 3 / 4).max(50);
    let mut total_kills = 0;
    let mut resumed_mid_run = 0;
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        let mut kills = Vec::new();
        for _ in 0..6 {
            let after = rng.gen_range(5..span);
            let (killed, stderr) = run_and_kill(&repo, Duration::from_millis(after));
            if !kills.is_empty() && resumed_midway(&stderr) {
                resumed_mid_run += 1;
            }
            if !killed {
                break; // it completed before the kill
            }
            kills.push(after);
        }
        let out = finish(command(&repo));
        println!(
            "round {round}: killed at {kills:?} ms; then: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert_eq!(
            checksum_of(&out),
            want,
            "seed {seed} round {round}, kills at {kills:?} ms"
        );
        total_kills += kills.len();
        if !kills.is_empty() && resumed_midway(&String::from_utf8_lossy(&out.stderr)) {
            resumed_mid_run += 1;
        }
    }
    assert!(total_kills > 0, "seed {seed}: no run was ever killed");
    assert!(
        resumed_mid_run > 0,
        "seed {seed}: no run after a kill resumed from a checkpoint of the killed runs"
    );
}

#[test]
fn sigkill_at_each_failpoint_around_a_checkpoint() {
    let want = reference();
    for fp in [
        "after_chunk_write",
        "before_manifest_rename",
        "after_manifest_rename",
        "before_commit",
        "before_commit_rename",
        "after_commit_rename",
        "after_commit",
        "gc_after_uncommit",
        "gc_during_sweep",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        let mut c = command(&repo);
        c.env("LAZARUS_FAILPOINT", fp);
        let out = finish(c);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "failpoint {fp} did not fire: {out:?}"
        );
        // The restart runs without the failpoint and must reach the reference result.
        assert_eq!(
            checksum_of(&finish(command(&repo))),
            want,
            "after failpoint {fp}"
        );
    }
}

#[test]
fn damaged_newest_checkpoint_is_skipped_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    assert_eq!(checksum_of(&finish(command(&repo))), reference());
    let newest = std::fs::read_dir(repo.join("checkpoints"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("COMMIT").exists())
        .max()
        .unwrap();
    let commit = newest.join("COMMIT");
    let mut bytes = std::fs::read(&commit).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0xff;
    std::fs::write(&commit, bytes).unwrap();
    let out = finish(command(&repo));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = newest
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches('0')
        .to_string();
    assert!(
        stderr.contains(&format!("skipped damaged checkpoint {name}")),
        "stderr: {stderr}"
    );
    assert_eq!(checksum_of(&out), reference());
}

#[test]
fn restart_with_other_arguments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    checksum_of(&finish(command(&repo)));
    let out = finish({
        let mut c = Command::new(common::example_bin("heat"));
        c.arg("--repo")
            .arg(&repo)
            .args(["--steps", "600", "--size", "64", "--every", "40"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    });
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("size: 128"),
        "{out:?}"
    );
}
